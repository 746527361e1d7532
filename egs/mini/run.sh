#!/usr/bin/env bash
# The offline demo: a small spoken corpus generated with eSpeak NG (40 synthetic voices, 18 of
# them child-like, 14 noisy; connected digits and short commands), a random-weight WavLM built
# from a config, and a small model trained on CPU. Runs all stages in minutes on 2 cores; no download.
#   bash egs/mini/run.sh                        # or ./run.sh at the top
#   bash egs/mini/run.sh --feats_type fbank     # the same on filterbank features, for comparison
. "$(dirname "$0")/../recipe.sh"
recipe_init "$@"
recipe_take datadir data  # the random WavLM is made by stage 0 in it
exec ../../run.sh \
    --local_data "local/data.sh --num_speakers 40 --utts_per_speaker 30" \
    --split_ratios 0.75,0.085,0.165 \
    --normalizer basic \
    --feats_type wavlm --ssl_model "$datadir/local/wavlm-random-small" --datadir "$datadir" --ssl_layer 4 \
    --token_type char \
    --train_config conf/train.yaml --decode_config conf/decode.yaml \
    ${args[@]+"${args[@]}"}
