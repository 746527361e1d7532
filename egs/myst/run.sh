#!/usr/bin/env bash
# My Science Tutor (MyST, LDC2021S05): children's conversational speech with a virtual science
# tutor, grades 3-5. The corpus's own train/development/test; train and development keep
# utterances of at least 3 words and at most 30 s, test is scored whole (test) and filtered
# (test_filtered: the same filters, the ids of --test_list, or those zero-shot Whisper keeps with
# --whisper_filter MODEL). Scored under the child and whisper normalizers. See README.md.
#   bash egs/myst/run.sh --myst_root /path/to/LDC2021S05 [--test_list ids.txt | --whisper_filter MODEL] [run.sh options]
. "$(dirname "$0")/../recipe.sh"
recipe_init "$@"
recipe_take myst_root "${MYST:-}"
recipe_take test_list ""
recipe_take whisper_filter ""       # e.g. openai/whisper-large-v2
recipe_take whisper_max_wer 50
recipe_take datadir data
recipe_take expdir exp
[ -n "$myst_root" ] || [[ " ${args[*]-} " == *" --help "* ]] || { echo "$0: give --myst_root /path/to/LDC2021S05 (or set MYST)" >&2; exit 2; }
../../run.sh --datadir "$datadir" --expdir "$expdir" \
    --local_data "local/data.sh --myst_root $myst_root${test_list:+ --test_list $test_list}${whisper_filter:+ --whisper_filter $whisper_filter}${whisper_filter:+ --whisper_max_wer $whisper_max_wer}" \
    --split_field split --min_words 1 --max_duration 3600 \
    --normalizer child --score_normalizers whisper \
    --feats_type wavlm --ssl_model microsoft/wavlm-base-plus --ssl_layer 9 \
    --speed_perturb "0.9 1.0 1.1" \
    --token_type bpe --nbpe 5000 \
    --train_config ../child/conf/train_conformer.yaml --decode_config ../child/conf/decode.yaml \
    --test_sets "test" \
    ${args[@]+"${args[@]}"}
. ../../path.sh
local/score_filtered.sh "$datadir" "$expdir" child,whisper
