#!/usr/bin/env bash
# Your own children's corpus: a manifest (.jsonl/.csv/.tsv: audio, text, [utt_id, speaker, age, grade])
# or a Kaldi data dir. Frozen wavlm-base-plus features (layer 9), speed perturbation 0.9/1.0/1.1,
# SpecAugment, a Conformer (conf/train_conformer.yaml; conf/train_bilstm.yaml for the BiLSTM),
# joint CTC/attention decoding (beam 10, ctc_weight 0.3), the `child` normalizer, WER per age.
# With a Whisper checkpoint as --ssl_model, the whole of Whisper fine-tuned instead: every layer of its
# encoder on the stored output of its convolution stem, and its own decoder, with its own tokens
# (conf/train_whisper_top.yaml, attention beam 10; egs/child/README.md has the measurements).
#   bash egs/child/run.sh --raw_data /path/to/manifest.jsonl
#   bash egs/child/run.sh --raw_data /path/to/manifest.jsonl --train_config conf/train_bilstm.yaml
#   bash egs/child/run.sh --raw_data /path/to/manifest.jsonl --ssl_model openai/whisper-base
# --top_layers K trains only the encoder's top K layers, on stored layer N-K states (the states stored
# trimmed: the top layers start exactly as the encoder); --top_layers 0 the decoder alone, on the
# encoder's last layer stored in 30 s windows (conf/train_whisper_decoder.yaml).
#   bash egs/child/run.sh --raw_data /path/to/manifest.jsonl --ssl_model openai/whisper-base --top_layers 0
. "$(dirname "$0")/../recipe.sh"
recipe_init "$@"
recipe_take ssl_model microsoft/wavlm-base-plus
is_whisper() {  # a local checkpoint by its config, a model id by its name
    if [ -f "$1/config.json" ]; then grep -q '"model_type": *"whisper"' "$1/config.json"; else [[ "$1" == *whisper* ]]; fi
}
if is_whisper "$ssl_model"; then recipe_take top_layers all; else recipe_take top_layers 0; fi
if [ "$top_layers" = all ]; then
    top_spec=0  # every layer trains: the store holds the convolution stem's output (layer 0)
elif [[ "$top_layers" =~ ^[0-9]+$ ]]; then
    top_spec="last-$top_layers"
else
    echo "$0: --top_layers $top_layers: a number of layers, or all" >&2; exit 2
fi
if [ "$top_layers" != 0 ] && ! is_whisper "$ssl_model"; then
    echo "$0: --top_layers: this recipe trains the top layers of a Whisper encoder with Whisper's decoder;" \
         "for $ssl_model (WavLM, wav2vec2, HuBERT) add an ssl_top section to a training config of the light" \
         "model and store --ssl_layer last-K (docs/INTERNALS.md, nets.ssl_top)" >&2
    exit 2
fi
if is_whisper "$ssl_model" && [ "$top_layers" != 0 ]; then
    front=(--ssl_layer "$top_spec" --dump_args "--whisper_input trimmed" --speed_perturb ""
           --token_type whisper --train_config conf/train_whisper_top.yaml --decode_config conf/decode_whisper.yaml)
elif is_whisper "$ssl_model"; then
    front=(--ssl_layer last --speed_perturb "" --token_type whisper
           --train_config conf/train_whisper_decoder.yaml --decode_config conf/decode_whisper.yaml)
else
    front=(--ssl_layer 9 --speed_perturb "0.9 1.0 1.1" --token_type bpe --nbpe 500
           --train_config conf/train_conformer.yaml --decode_config conf/decode.yaml)
fi
exec ../../run.sh \
    --normalizer child \
    --feats_type wavlm --ssl_model "$ssl_model" "${front[@]}" \
    ${args[@]+"${args[@]}"}
