#!/usr/bin/env bash
# Stage 0 of egs/myst: the raw manifest of a MyST tree (LDC2021S05), with its own split.
#   local/data.sh --myst_root DIR --out data/local [--test_list ids.txt] [--min_words 3] [--max_duration 30]
# writes OUT/manifest.jsonl, OUT/test_filtered.ids, OUT/dropped.tsv, OUT/myst_report.json.
set -euo pipefail
exec python -m asrkit.bin.prepare_myst "$@"
