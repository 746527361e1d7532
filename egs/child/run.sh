#!/usr/bin/env bash
# Your own children's corpus: a manifest (.jsonl/.csv/.tsv: audio, text, [utt_id, speaker, age, grade])
# or a Kaldi data dir. Frozen wavlm-base-plus features (layer 9), speed perturbation 0.9/1.0/1.1,
# SpecAugment, a Conformer (conf/train_conformer.yaml; conf/train_bilstm.yaml for the BiLSTM),
# joint CTC/attention decoding (beam 10, ctc_weight 0.3), the `child` normalizer, WER per age.
#   bash egs/child/run.sh --raw_data /path/to/manifest.jsonl
#   bash egs/child/run.sh --raw_data /path/to/manifest.jsonl --train_config conf/train_bilstm.yaml
. "$(dirname "$0")/../recipe.sh"
recipe_init "$@"
exec ../../run.sh \
    --normalizer child \
    --feats_type wavlm --ssl_model microsoft/wavlm-base-plus --ssl_layer 9 \
    --speed_perturb "0.9 1.0 1.1" \
    --token_type bpe --nbpe 500 \
    --train_config conf/train_conformer.yaml --decode_config conf/decode.yaml \
    ${args[@]+"${args[@]}"}
