#!/usr/bin/env bash
# After stage 5: score every decoding of the full test set again on its filtered subset (the
# utterances flagged test_filtered by local/data.sh), into decode_test_filtered_<dtag>/, and
# refresh the experiment's RESULTS.md. Only scoring: the test set is decoded once.
#   local/score_filtered.sh DATADIR EXPDIR [NORMALIZERS (default: child)]
set -euo pipefail
datadir=$1 expdir=$2 normalizers=${3:-child}
[ -f "$datadir/test.jsonl" ] || exit 0
python - "$datadir/test.jsonl" "$datadir/test_filtered.jsonl" <<'PY'
import sys
from asrkit.fileio import load_jsonl, write_jsonl
n = write_jsonl(sys.argv[2], (r for r in load_jsonl(sys.argv[1]) if r.get("test_filtered")))
print(f"test_filtered: {n} utterances ({sys.argv[2]})")
PY
if [ ! -s "$datadir/test_filtered.jsonl" ]; then
    echo "test_filtered is empty: nothing to score (see data/local/myst_report.json)" >&2
    exit 0
fi
for hyp in "$expdir"/*/decode_test_*/hyp.jsonl; do
    [ -f "$hyp" ] || continue
    dir=$(dirname "$hyp")
    out="$(dirname "$dir")/decode_test_filtered_$(basename "$dir" | sed 's/^decode_test_//')"
    # with the search settings of the decoding it was scored from, for RESULTS.md (not its timings:
    # they are the full set's)
    python -m asrkit.bin.score --data "$datadir/test_filtered.jsonl" --hyp "$hyp" --out "$out" \
        --name "$(basename "$out")" --normalizers "$normalizers" --scored_from "$dir" > /dev/null
    # run.sh has just printed the full test's rows: only the filtered ones here
    echo "Filtered test (now in $(dirname "$dir")/RESULTS.md):"
    python -m asrkit.bin.score --gather "$(dirname "$dir")" | grep -E '^###|^\|set\||^\|---|^\|decode_test_filtered_'
done
