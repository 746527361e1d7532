"""Stage 0: raw corpus (manifest or Kaldi dir) -> normalized, filtered, speaker-disjoint split lists.

    python -m asrkit.bin.prepare_data --raw_data corpus/manifest.jsonl --out_dir data

writes data/{train,valid,test}.jsonl, data/dropped.tsv (every utterance left out, with where and
why) and data/prep_report.json (utterances, hours, speakers per split; dropped counts by reason).
"""
from __future__ import annotations

from pathlib import Path

from asrkit.cli import make_parser, run_main, setup_logging, str2bool
from asrkit.errors import DataError
from asrkit.normalize import NORMALIZERS, get_normalizer, parse_rule_overrides
from asrkit.prep import SPLITS, prepare_corpus


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--raw_data", required=True,
                   help="a manifest (.jsonl, .csv, .tsv with columns audio, text, [utt_id, speaker, age, "
                        "grade, start, end, ...]) or a Kaldi data dir (wav.scp, text, utt2spk, [segments])")
    p.add_argument("--out_dir", default="data", help="where the split lists go")
    p.add_argument("--normalizer", default="basic", choices=sorted(NORMALIZERS), help="text normalizer")
    p.add_argument("--normalizer_opts", default="", help="rule overrides, e.g. 'digits_to_words=false'")
    p.add_argument("--min_duration", type=float, default=0.1, help="drop shorter utterances (seconds)")
    p.add_argument("--max_duration", type=float, default=30.0, help="drop longer utterances (seconds)")
    p.add_argument("--min_words", type=int, default=1, help="drop utterances with fewer words")
    p.add_argument("--check_silence", type=str2bool, default=True,
                   help="read every file and drop silent ones (else only the header is read)")
    p.add_argument("--split_ratios", default="0.8,0.1,0.1",
                   help="train,valid,test shares of the audio, split by speaker")
    p.add_argument("--split_field", default="",
                   help="take each utterance's split from this manifest field instead (dev -> valid)")
    p.add_argument("--split_lists", default="",
                   help="name=file,... files of utt or speaker ids per split; the rest is train")
    p.add_argument("--seed", type=int, default=0, help="seed of the speaker split")
    p.add_argument("--nj", type=int, default=4, help="threads reading audio")
    return p


def parse_ratios(spec: str) -> dict[str, float]:
    try:
        values = [float(v) for v in spec.replace(" ", ",").split(",") if v]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise DataError(f"bad --split_ratios {spec!r}", "--split_ratios", "give three numbers: train,valid,test")
    return dict(zip(SPLITS, values))


def parse_lists(spec: str) -> dict[str, Path]:
    lists = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, path = item.partition("=")
        if not sep:
            raise DataError(f"bad --split_lists item {item!r}", "--split_lists", "write name=path,name=path")
        lists[name.strip()] = Path(path.strip())
    return lists


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    normalize = get_normalizer(args.normalizer, **parse_rule_overrides(args.normalizer_opts))
    if args.split_field:
        splitter = ("field", args.split_field)
    elif args.split_lists:
        splitter = ("lists", parse_lists(args.split_lists))
    else:
        splitter = ("ratios", parse_ratios(args.split_ratios))
    prepare_corpus(args.raw_data, args.out_dir, normalize, splitter, seed=args.seed, min_duration=args.min_duration,
                   max_duration=args.max_duration, min_words=args.min_words, check_silence=args.check_silence,
                   nj=args.nj)
    return 0


if __name__ == "__main__":
    run_main(main)
