#!/usr/bin/env bash
# Stage 0 of egs/mini: the eSpeak NG demo corpus and a random-weight WavLM ("small": 256-dim,
# 4 layers), both written under OUT. Deterministic; a rerun with the same options does nothing.
#   local/data.sh --out data/local [--num_speakers 120] [--utts_per_speaker 10] [--seed 0] [--wavlm_preset small]
set -euo pipefail
out="" num_speakers=120 utts_per_speaker=10 seed=0 wavlm_preset=small
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--num_speakers|--utts_per_speaker|--seed|--wavlm_preset) printf -v "${1#--}" '%s' "$2"; shift 2 ;;
        *) echo "$0: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || { echo "$0: --out DIR is required" >&2; exit 2; }
python -m asrkit_corpora.bin.make_demo_corpus --out "$out" --num_speakers "$num_speakers" \
    --utts_per_speaker "$utts_per_speaker" --seed "$seed"
wavlm="$out/wavlm-random-$wavlm_preset"
if [ ! -f "$wavlm/config.json" ]; then
    python -c 'import sys; from asrkit.random_models import save_random_ssl; save_random_ssl(sys.argv[1] + ".tmp", sys.argv[2])' \
        "$wavlm" "$wavlm_preset"
    rm -rf "$wavlm" && mv "$wavlm.tmp" "$wavlm"
fi
