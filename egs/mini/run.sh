#!/usr/bin/env bash
# The offline demo: a small spoken corpus generated with eSpeak NG (120 synthetic voices x 10
# utterances, 48 of the voices child-like, 29 noisy; connected digits and short commands), a random-weight WavLM built
# from a config, and a small model trained on CPU. Runs all stages in minutes on 2 cores; no download.
#
# A random-weight WavLM is no pretrained one: its features carry much less than real WavLM's. So
# that the demo shows what the model learns rather than hiding it, the same model is then trained
# on filterbank features of the same corpus (stages 1-5 again), and both WERs are printed side by side.
#   bash egs/mini/run.sh                        # or ./run.sh at the top
#   bash egs/mini/run.sh --feats_type fbank     # one run only, on filterbank features
#   bash egs/mini/run.sh --compare_fbank false  # one run only, on the random WavLM
#   bash egs/mini/run.sh --num_speakers 12 --utts_per_speaker 2   # a smaller corpus (a quick check)
. "$(dirname "$0")/../recipe.sh"
recipe_init "$@"
recipe_take datadir data  # the random WavLM is made by stage 0 in it
recipe_take compare_fbank true
recipe_take num_speakers 120
recipe_take utts_per_speaker 10
common=(
    --local_data "local/data.sh --num_speakers $num_speakers --utts_per_speaker $utts_per_speaker"
    --split_ratios 0.75,0.085,0.165
    --normalizer basic
    --token_type char
    --train_config conf/train.yaml --decode_config conf/decode.yaml
    --datadir "$datadir"
)
# all hidden layers stacked; the model learns their weighted sum (SUPERB-style)
wavlm_tag=wavlm-random-small_Lall_char fbank_tag=fbank_char  # the experiment names, set here and read below
wavlm=(--feats_type wavlm --ssl_model "$datadir/local/wavlm-random-small" --ssl_layer all --tag "$wavlm_tag")
# fbank has 100 frames/s, WavLM 50: subsample x4 instead of x2, so the encoder sees 25 frames/s in both
fbank=(--feats_type fbank --train_args "--frontend_conf.subsample conv1d" --tag "$fbank_tag")

if [[ " ${args[*]-} " == *" --feats_type "* ]] || [ "$compare_fbank" != true ]; then
    exec ../../run.sh "${common[@]}" "${wavlm[@]}" ${args[@]+"${args[@]}"}
fi
# Stages 0-2 of the WavLM run on all cores; then its training beside the whole filterbank run, each
# on half the cores: these small models train faster on one thread each than one after the other on
# two (measured: an epoch of the fbank run took 13.5 s on one Zen 3 thread, 10.5 s on two).
../../run.sh "${common[@]}" "${wavlm[@]}" --stop_stage 2 ${args[@]+"${args[@]}"}
cores=$(nproc 2>/dev/null || echo 2)
half=$(( cores > 1 ? cores / 2 : 1 ))
mkdir -p exp/logs
echo
echo "=== training on the random WavLM's features, and beside it the same model on filterbank"
echo "    features (stages 1-5; its output: exp/logs/demo_fbank.out) ==="
OMP_NUM_THREADS=$half ../../run.sh "${common[@]}" "${fbank[@]}" --stage 1 --skip_stages 2 --nj "$half" \
    ${args[@]+"${args[@]}"} > exp/logs/demo_fbank.out 2>&1 &
fbank_pid=$!
status=0
OMP_NUM_THREADS=$half ../../run.sh "${common[@]}" "${wavlm[@]}" --stage 3 --nj "$half" \
    ${args[@]+"${args[@]}"} || status=$?
wait "$fbank_pid" || { status=$?; echo "the filterbank run failed:" >&2; tail -n 30 exp/logs/demo_fbank.out >&2; }
echo
echo "=== the filterbank run ==="
cat exp/logs/demo_fbank.out
[ "$status" = 0 ] || exit "$status"

echo
echo "Demo results on the test voices (never seen in training); details in exp/*/RESULTS.md:"
printf '%-34s %8s %8s\n' features "WER %" "CER %"
for exp in "exp/$wavlm_tag" "exp/$fbank_tag"; do
    [ -f "$exp/RESULTS.md" ] || continue
    # the first decode_test row is the WER table's, the second the CER table's
    mapfile -t rows < <(grep '^|decode_test_' "$exp/RESULTS.md" | cut -d'|' -f9)
    printf '%-34s %8s %8s\n' "${exp#exp/}" "${rows[0]:-?}" "${rows[1]:-?}"
done
