"""Stage 0: raw corpus (manifest or Kaldi dir) -> normalized, filtered, speaker-disjoint split lists.

    python -m asrkit.bin.prepare_data --raw_data corpus/manifest.jsonl --out_dir data

writes data/{train,valid,test}.jsonl, data/dropped.tsv (every utterance left out, with where and
why) and data/prep_report.json (utterances, hours, speakers per split; dropped counts by reason).
"""
from __future__ import annotations

import logging
from pathlib import Path

from asrkit.cli import make_parser, run_main, setup_logging, str2bool
from asrkit.errors import DataError
from asrkit.fileio import atomic_open, write_json, write_jsonl
from asrkit.normalize import NORMALIZERS, get_normalizer, parse_rule_overrides
from asrkit.prep import (SPLITS, Dropped, format_report, iter_speaker_overlaps, output_record, prepare,
                         read_corpus, split_by_field, split_by_lists, split_by_ratio, summarize)

log = logging.getLogger("asrkit.prepare_data")


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
    out_dir = Path(args.out_dir)

    dropped = Dropped()
    records = read_corpus(args.raw_data, dropped)
    log.info("read %d utterances from %s", len(records), args.raw_data)
    records = prepare(records, normalize, dropped, min_duration=args.min_duration,
                      max_duration=args.max_duration, min_words=args.min_words,
                      check_silence=args.check_silence, nj=args.nj)
    if not records:
        raise DataError("no usable utterance left", args.raw_data,
                        f"every one was dropped: see the reasons in {out_dir / 'dropped.tsv'}") \
            from _write_dropped(out_dir, dropped)

    if args.split_field:
        splits = split_by_field(records, args.split_field, dropped)
    elif args.split_lists:
        splits = split_by_lists(records, parse_lists(args.split_lists))
    else:
        splits = split_by_ratio(records, parse_ratios(args.split_ratios), args.seed)
    for a, b, shared in iter_speaker_overlaps(splits):
        log.warning("splits %s and %s share %d speaker(s), e.g. %s", a, b, len(shared), sorted(shared)[:3])
    for name, rs in splits.items():
        if not rs:
            log.warning("split %s is empty (too few speakers for the ratios?)", name)
        write_jsonl(out_dir / f"{name}.jsonl", (output_record(r) for r in rs))

    _write_dropped(out_dir, dropped)
    report = summarize(splits, dropped)
    write_json(out_dir / "prep_report.json", report)
    print(format_report(report))
    if dropped.rows:
        print(f"(each dropped utterance and its reason: {out_dir / 'dropped.tsv'})")
    return 0


def _write_dropped(out_dir: Path, dropped: Dropped) -> None:
    with atomic_open(out_dir / "dropped.tsv") as f:
        f.write("utt_id\twhere\treason\n")
        for row in dropped.rows:
            f.write("\t".join(row) + "\n")


if __name__ == "__main__":
    run_main(main)
