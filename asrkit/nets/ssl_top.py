"""The top of the pretrained encoder, run (and trained) on its stored lower-layer states.

Stage 1 stores the hidden states of layer k of a pretrained encoder (WavLM, wav2vec2, HuBERT, or
Whisper's); `SSLTop` holds that checkpoint's layers above k, with their pretrained weights, and
runs them on the stored states, so that the expensive bottom of the encoder runs once per corpus
and only its top learns with the light model.

Stored layer k is transformers' `hidden_states[k]`: the input of the encoder's layer k (the output
of layer k-1). The top is layers k..N-1, and for Whisper (and WavLM Large's stable layer norm) the
final layer norm, so that on the stored states it gives `hidden_states[N]`, the encoder's output:
- Whisper: exactly, on states stored with `--whisper_input trimmed` (each utterance's own frames).
  States stored from padded 30 s windows saw the padding's frames in attention, which the top
  cannot see: through the top they are not the encoder's output.
- WavLM: the relative position bias that its layer 0 computes and hands upward is computed again
  from layer 0's bias table (kept, frozen), for the stored sequence's length.
- wav2vec2 and HuBERT: their convolutional positions are in the stored states already (layer 0's
  input); their layers take the padding mask as transformers builds it for them.
Another kind of checkpoint is refused when the model is built.
A batch's padding is masked as attention keys, as the extractor masks it.
"""
from __future__ import annotations

import torch
from torch import nn


LORA_TARGETS = {  # the Linear layers LoRA adapts (WavLM's attention reads its projections' weights
    "whisper": ["q_proj", "v_proj", "fc1", "fc2"],  # directly, which a LoRA wrapper does not change)
    "wavlm": ["intermediate_dense", "output_dense"],
    "wav2vec2": ["q_proj", "v_proj", "intermediate_dense", "output_dense"],
}
KINDS = {"whisper": "whisper", "wavlm": "wavlm", "wav2vec2": "wav2vec2", "hubert": "wav2vec2"}  # model_type -> kind


class SSLTop(nn.Module):
    """Layers from_layer..N-1 of the encoder `ssl_model` (and its final layer norm where it has one),
    on stored layer-`from_layer` states (B, T, D) -> (B, T, D). `adapter`: full (every weight of
    those layers trains) or lora (low-rank adapters through the peft package, the pretrained weights
    frozen; LoRA's B starts at zero, so the start is exact either way). `lr_scale`: their learning
    rate as a share of the model's (train/optim.py param_groups); `lr_decay`: each layer's is the one
    above it times this (layer-wise decay, as in fine-tuning BERT or wav2vec2: the lower a layer, the
    more general what it computes, the less it moves); 1: the same for all. `dropout`: the layers' dropout
    while training (every dropout in them: attention, feed-forward, residual; None: the checkpoint's own, 0
    for Whisper),
    against overfitting a small corpus. `pretrained` False: the layers' shapes alone, without reading the
    checkpoint's weights, for a trained model's to replace (model_io.load_model)."""

    def __init__(self, ssl_model: str, from_layer: int, input_dim: int, adapter: str = "full",
                 lora_rank: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0, lr_scale: float = 0.1,
                 lr_decay: float = 1.0, dropout: float | None = None, pretrained: bool = True):
        super().__init__()
        if adapter not in ("full", "lora"):
            raise ValueError(f"ssl_top.adapter must be full or lora, not {adapter!r}")
        if not 0 < lr_decay <= 1:
            raise ValueError(f"ssl_top.lr_decay must be in (0, 1], got {lr_decay}")
        self.lr_scale = lr_scale
        from asrkit.ssl import load_config

        config = load_config(str(ssl_model))
        if config.model_type not in KINDS:
            raise ValueError(f"the encoder's top layers can be trained for {', '.join(sorted(KINDS))} checkpoints; "
                             f"{ssl_model} is a {config.model_type}: store its last layer instead (no top layers)")
        self.kind = KINDS[config.model_type]
        encoder = self._load(str(ssl_model), pretrained)
        self.config = encoder.config  # (with the attention implementation the layers were loaded with)
        layers = encoder.layers
        if not 0 <= from_layer < len(layers):
            raise ValueError(f"ssl_top.from_layer {from_layer}: the checkpoint has layers 0-{len(layers) - 1} "
                             f"(the stored layer k runs layers k..{len(layers) - 1} on top)")
        dim = config.d_model if self.kind == "whisper" else config.hidden_size
        if dim != input_dim:
            raise ValueError(f"the stored states have {input_dim} dims, the checkpoint's layers {dim}: store "
                             "the features with the same checkpoint")
        self.from_layer, self.num_layers = from_layer, len(layers)
        self.layers = nn.ModuleList(layers[from_layer:])
        if dropout is not None:
            if not 0 <= dropout < 1:
                raise ValueError(f"ssl_top.dropout must be in [0, 1), got {dropout}")
            for m in self.layers.modules():  # nn.Dropout modules, and the rates passed to functional dropout
                if isinstance(m, nn.Dropout):
                    m.p = dropout
                for name in ("dropout", "activation_dropout"):
                    if isinstance(getattr(m, name, None), float):
                        setattr(m, name, dropout)
        if lr_decay != 1.0:
            for depth, layer in enumerate(reversed(self.layers)):  # the top layer at lr_scale
                layer.lr_scale = lr_scale * lr_decay ** depth
        stable = self.kind == "whisper" or getattr(config, "do_stable_layer_norm", False)
        self.final_norm = encoder.layer_norm if stable else None
        # WavLM: layer 0's attention computes the relative position bias of every layer
        self.position = layers[0].attention.requires_grad_(False) if self.kind == "wavlm" else None
        if self.position is not None and from_layer == 0:
            self.position = None  # layer 0 is in the top: it computes the bias itself
        if adapter == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            self.requires_grad_(False)
            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                               target_modules=LORA_TARGETS[self.kind]), self.layers)

    def _load(self, ssl_model: str, pretrained: bool):
        if self.kind == "whisper":
            from asrkit.ssl import load_whisper_encoder

            encoder = load_whisper_encoder(ssl_model, weights=pretrained)[0]
        else:
            from asrkit.ssl import load_ssl_model

            encoder = load_ssl_model(ssl_model, weights=pretrained)[0].encoder
        return encoder.train().requires_grad_(True)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(x.size(1), device=x.device)[None] < lens[:, None]  # (B, T)
        padded = bool((~valid).any())
        if self.kind == "whisper":
            mask = valid[:, None, None, :] if padded else None
            for layer in self.layers:
                x = layer(x, mask)
        elif self.kind == "wav2vec2":
            from transformers.masking_utils import create_bidirectional_mask

            mask = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=valid) if padded else None
            for layer in self.layers:
                x = layer(x, attention_mask=mask)
        else:
            bias = None
            if self.position is not None:
                bias = self.position.compute_bias(x.size(1), x.size(1))
                bias = bias.unsqueeze(0).repeat(x.size(0), 1, 1, 1).view(-1, x.size(1), x.size(1))
            mask = valid.long() if padded else None
            for i, layer in enumerate(self.layers, self.from_layer):
                x, bias = layer(x, attention_mask=mask, position_bias=bias, index=i)
        return self.final_norm(x) if self.final_norm is not None else x
