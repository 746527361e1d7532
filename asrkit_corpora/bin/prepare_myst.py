"""MyST (LDC2021S05) -> raw manifest for stage 0, keeping the corpus's own train/development/test.

    python -m asrkit_corpora.bin.prepare_myst --myst_root /data/LDC2021S05 --out data/local \\
        [--test_list conf/test_filtered.list]

writes out/manifest.jsonl (utt_id, audio, text with its markup, speaker = student, session, split,
duration, test_filtered), out/test_filtered.ids, out/dropped.tsv and out/myst_report.json.
Files without a .trn transcript are skipped and counted; <no_signal>/<discard> utterances are
dropped; train and development keep utterances of >= --min_words words and <= --max_duration s;
test is kept whole, its filtered subset is flagged (the same filters, or the ids of --test_list).
"""
from __future__ import annotations

from pathlib import Path

from asrkit.cli import make_parser, run_main, setup_logging
from asrkit_corpora.myst import read_id_list, scan_myst
from asrkit.errors import DataError
from asrkit.fileio import atomic_open, write_json, write_jsonl


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--myst_root", required=True, help="the MyST folder (holding data/{train,development,test})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min_words", type=int, default=3, help="train/dev: fewest words (after normalization)")
    p.add_argument("--max_duration", type=float, default=30.0, help="train/dev: longest utterance (seconds)")
    p.add_argument("--test_list", default="", help="utterance ids of the filtered test set (default: the filters)")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    out = Path(args.out)
    test_ids = read_id_list(args.test_list) if args.test_list else None
    records, dropped, counts = scan_myst(args.myst_root, args.min_words, args.max_duration, test_ids)
    if not records:
        raise DataError("no usable utterance found", args.myst_root,
                        f"check the layout data/<partition>/<student>/<session>/*.flac with .trn files; {dict(counts)}")
    with atomic_open(out / "dropped.tsv") as f:
        f.write("utt_id\twhere\treason\n")
        f.writelines(f"{u}\t{where}\t{reason}\n" for u, where, reason in dropped)
    with atomic_open(out / "test_filtered.ids") as f:
        f.writelines(r["utt_id"] + "\n" for r in records if r.get("test_filtered"))
    write_json(out / "myst_report.json", dict(counts))
    write_jsonl(out / "manifest.jsonl", records)  # last: its presence means the step is complete
    for name, n in counts.items():
        print(f"{n:>8}  {name}")
    return 0


if __name__ == "__main__":
    run_main(main)
