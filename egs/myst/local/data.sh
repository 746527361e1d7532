#!/usr/bin/env bash
# Stage 0 of egs/myst: the raw manifest of a MyST tree (LDC2021S05), with its own split.
#   local/data.sh --myst_root DIR --out data/local [--test_list ids.txt | --whisper_filter MODEL [--whisper_max_wer 50]]
#                 [--min_words 3] [--max_duration 30]
# writes OUT/manifest.jsonl, OUT/test_filtered.ids, OUT/dropped.tsv, OUT/myst_report.json.
# With --whisper_filter, the filtered test is MyST's "filtered" one: local/whisper_filter.py decodes the
# test set zero-shot with MODEL into OUT/whisper_filter/ (resumable), and its id list flags the subset.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
args=() model="" max_wer=50 out="" test_list=""
while [ $# -gt 0 ]; do
    case $1 in
        --whisper_filter) model=$2; shift 2 ;;
        --whisper_max_wer) max_wer=$2; shift 2 ;;
        *) [ "$1" = --out ] && out=$2; [ "$1" = --test_list ] && test_list=$2; args+=("$1"); shift ;;
    esac
done
if [ -n "$model" ] && [ -n "$test_list" ]; then
    echo "$0: give --test_list or --whisper_filter, not both" >&2; exit 2
fi
python -m asrkit_corpora.bin.prepare_myst "${args[@]}"
[ -n "$model" ] || exit 0
python "$here/whisper_filter.py" --data "$out/manifest.jsonl" --split test --model "$model" \
    --max_wer "$max_wer" --out "$out/whisper_filter"
echo "Flagging the Whisper-filtered test set:"
python -m asrkit_corpora.bin.prepare_myst "${args[@]}" --test_list "$out/whisper_filter/test_filtered.ids"
