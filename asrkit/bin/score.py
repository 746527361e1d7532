"""Stage 5: score a decoding (WER/CER, alignments, breakdowns), or gather an experiment's RESULTS.md.

    python -m asrkit.bin.score --data data/test.jsonl --hyp exp/<tag>/decode_test_<dtag>/hyp.jsonl \\
        --out exp/<tag>/decode_test_<dtag> --normalizers child,whisper
    python -m asrkit.bin.score --gather exp/<tag>        # -> exp/<tag>/RESULTS.md
"""
from __future__ import annotations

from pathlib import Path

from asrkit.cli import make_parser, run_main, setup_logging
from asrkit.decode_info import DecodeInfo
from asrkit.errors import DataError
from asrkit.fileio import atomic_open, write_json
from asrkit.normalize import NORMALIZERS, get_normalizer, parse_rule_overrides
from asrkit.scoring import gather, load_hyps, load_refs, report, score_set


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--data", help="split list with the references (text, speaker, duration, age, grade)")
    parser.add_argument("--hyp", help="hyp.jsonl written by asrkit.bin.decode")
    parser.add_argument("--out", help="output dir (default: the dir of --hyp)")
    parser.add_argument("--name", default=None, help="set name in the tables (default: the name of --out)")
    parser.add_argument("--normalizer", default="basic", choices=sorted(NORMALIZERS),
                        help="applied to references and hypotheses alike (use the one of stage 0)")
    parser.add_argument("--normalizers", default="",
                        help="several conventions side by side on the same hypotheses, e.g. child,whisper: "
                             "the first is written to result.txt / scores.json, each other one to "
                             "result_<name>.txt / scores_<name>.json; every table is printed (default: --normalizer)")
    parser.add_argument("--normalizer_opts", default="",
                        help="rule overrides of the (first) normalizer, e.g. digits_to_words=false")
    parser.add_argument("--scored_from", metavar="DECODE_DIR", default=None,
                        help="the decoding --hyp came from, when --data is a subset of its list: its search "
                             "settings are copied into --out/decode_info.json for RESULTS.md (not its timings)")
    parser.add_argument("--gather", metavar="EXP_DIR", default=None,
                        help="write EXP_DIR/RESULTS.md from every scored decode_* dir in it, and stop")
    args = parser.parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    if args.gather:
        text = gather(args.gather)
        with atomic_open(Path(args.gather) / "RESULTS.md") as f:
            f.write(text)
        print(text)
        return 0
    if not args.data or not args.hyp:
        raise DataError("--data and --hyp are needed (or --gather EXP_DIR)", "command line")
    out = Path(args.out or Path(args.hyp).parent)
    name = args.name or out.name
    names = [n.strip() for n in args.normalizers.split(",") if n.strip()] or [args.normalizer]
    bad = [n for n in names if n not in NORMALIZERS]
    if bad or len(set(names)) < len(names):
        raise DataError(f"bad --normalizers {args.normalizers!r}", "command line",
                        f"name each once, from: {', '.join(NORMALIZERS)}")
    refs, hyps = load_refs(args.data), load_hyps(args.hyp)
    for i, n in enumerate(names):
        normalize = get_normalizer(n, **(parse_rule_overrides(args.normalizer_opts) if i == 0 else {}))
        scores, missing = score_set(refs, hyps, normalize, args.hyp)
        text, js = report(scores, name, n, missing)
        suffix = "" if i == 0 else f"_{n}"
        with atomic_open(out / f"result{suffix}.txt") as f:
            f.write(text)
        write_json(out / f"scores{suffix}.json", js)
        print(("\n" if i else "") + text[: text.index("## alignments")].rstrip())
    if args.scored_from and (info := DecodeInfo.read(args.scored_from)):
        info.subset(args.data, args.scored_from).write(out)
    return 0


if __name__ == "__main__":
    run_main(main)
