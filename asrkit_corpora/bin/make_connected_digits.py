"""Connected-digit utterances from the Free Spoken Digit Dataset: 2-6 takes of one speaker joined
with short gaps, resampled to 16 kHz, with a split field that keeps held-out takes and unseen
speakers out of training.

    python -m asrkit_corpora.bin.make_connected_digits --fsdd ../shared/data/fsdd --out corpus \\
        --min_digits 2 --max_digits 6 --gap 0.05 0.25 --heldout_take 45 --unseen_speakers theo

split: train, valid (takes valid_take..heldout_take-1), test (takes >= heldout_take of the other
speakers), test_unseen (every take of --unseen_speakers). Use it in stage 0 with --split_field split.
"""
from __future__ import annotations

from asrkit.cli import make_parser, run_main, setup_logging
from asrkit_corpora.fsdd import make_connected_digits
from asrkit.errors import DataError


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--fsdd", required=True, help="FSDD folder (recordings/ and/or manifest.jsonl)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min_digits", type=int, default=2, help="fewest digits in an utterance")
    p.add_argument("--max_digits", type=int, default=6, help="most digits in an utterance")
    p.add_argument("--gap", type=float, nargs="+", default=[0.05, 0.25], metavar="SECONDS",
                   help="silence between digits: one duration, or MIN MAX drawn uniformly")
    p.add_argument("--heldout_take", type=int, default=45, help="takes from this index on are test")
    p.add_argument("--valid_take", type=int, default=40,
                   help="takes from this index up to --heldout_take are valid (-1: no valid split)")
    p.add_argument("--unseen_speakers", nargs="*", default=[], help="speakers kept entirely for test_unseen")
    p.add_argument("--speakers", nargs="*", default=[], help="use only these speakers (default: all)")
    p.add_argument("--repeats", type=int, default=1, help="how many utterances each take appears in")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    if len(args.gap) not in (1, 2):
        raise DataError(f"--gap takes 1 or 2 values, got {len(args.gap)}", "--gap")
    gap = (args.gap[0], args.gap[-1])
    manifest = make_connected_digits(args.fsdd, args.out, args.min_digits, args.max_digits, gap,
                                     args.heldout_take, None if args.valid_take < 0 else args.valid_take,
                                     args.unseen_speakers, args.repeats, args.seed, args.speakers)
    print(manifest)
    return 0


if __name__ == "__main__":
    run_main(main)
