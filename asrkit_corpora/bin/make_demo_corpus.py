"""Generate the offline demo corpus with eSpeak NG: synthetic voices (child-like ones included,
some noisy) reading connected digits and short commands. No download.

    python -m asrkit_corpora.bin.make_demo_corpus --out corpus --num_speakers 20 --utts_per_speaker 60 --seed 0

writes corpus/wav/<speaker>/<utt_id>.wav (16 kHz) and corpus/manifest.jsonl (utt_id, audio, text,
speaker, age, group, gender, voice, pitch, range, rate, snr, noise). A rerun with the same options
does nothing; an interrupted run resumes.
"""
from __future__ import annotations

from asrkit.cli import make_parser, run_main, setup_logging
from asrkit_corpora.demo import GRAMMARS, make_demo_corpus


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num_speakers", type=int, default=20, help="synthetic speakers (voices)")
    p.add_argument("--utts_per_speaker", type=int, default=60, help="utterances per speaker")
    p.add_argument("--seed", type=int, default=0, help="everything follows from it")
    p.add_argument("--grammar", default="mixed", choices=GRAMMARS,
                   help="connected digits, '<verb> the <color> <object>' commands, or both")
    p.add_argument("--child_share", type=float, default=0.4, help="share of child-like (high-pitched) voices")
    p.add_argument("--noisy_share", type=float, default=0.3, help="share of speakers with added noise")
    p.add_argument("--snr_range", type=float, nargs=2, default=[10.0, 20.0], metavar=("MIN", "MAX"),
                   help="SNR (dB) of a noisy speaker, drawn uniformly")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    manifest = make_demo_corpus(args.out, args.num_speakers, args.utts_per_speaker, args.seed, args.grammar,
                                args.child_share, args.noisy_share, tuple(args.snr_range))
    print(manifest)
    return 0


if __name__ == "__main__":
    run_main(main)
