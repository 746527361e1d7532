"""Models on stored features, built from the YAML config (ESPnet-like keys).

    frontend_conf: {weighted_sum, layer_norm, proj_dim, subsample, subsample_dim, dropout_rate}
    specaug: specaug | null          specaug_conf: {...}          (see nets/specaug.py)
    encoder: bilstm | conformer | identity    encoder_conf: {...}
    decoder: transformer | whisper | null     decoder_conf: {...}   (whisper: the checkpoint's own decoder)
    model_conf: {ctc_weight, lsm_weight, length_normalized_loss, ctc_dropout_rate, ctc_lr_scale, ctc_detach,
                 ctc_vocab (all; train: a head over the training text's tokens only)}
    ssl_top: {checkpoint, from_layer, adapter, lora_rank, lora_alpha, lr_scale, lr_decay, dropout} | null
        the stage-1 checkpoint's layers above the stored one, trained with the model (nets/ssl_top.py;
        stage 3 fills in checkpoint and from_layer from the features)
"""
from __future__ import annotations

import inspect
from typing import Any

from asrkit.errors import DataError
from asrkit.nets.bilstm import BiLSTMEncoder
from asrkit.nets.conformer import ConformerEncoder
from asrkit.nets.decoder import TransformerDecoder, WhisperDecoder
from asrkit.nets.frontend import Frontend
from asrkit.nets.model import IGNORE_ID, ASRModel, IdentityEncoder, LabelSmoothingLoss
from asrkit.nets.specaug import SpecAugment
from asrkit.nets.ssl_top import SSLTop

ENCODERS = {"bilstm": BiLSTMEncoder, "conformer": ConformerEncoder, "identity": IdentityEncoder}
DECODERS = {"transformer": TransformerDecoder, "whisper": WhisperDecoder}
MODEL_KEYS = ("frontend", "frontend_conf", "specaug", "specaug_conf", "encoder", "encoder_conf",
              "decoder", "decoder_conf", "model_conf", "ssl_top")

__all__ = ["build_model", "ASRModel", "LabelSmoothingLoss", "IGNORE_ID", "MODEL_KEYS"]


def _make(cls, section: str, conf: dict | None, **fixed):
    """cls(**fixed, **conf), with an unknown or bad key reported by the config section's name."""
    conf = dict(conf or {})
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self" and p not in fixed]
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise DataError(f"unknown option(s) {unknown}", section, f"allowed: {', '.join(allowed)}")
    try:
        return cls(**fixed, **conf)
    except ValueError as e:
        raise DataError(str(e), section) from None


def _choice(conf: dict, key: str, table: dict, default: str | None):
    name = conf.get(key, default)
    if name is None or name == "none":
        return None
    if name not in table:
        raise DataError(f"unknown {key} {name!r}", key, f"choose one of {sorted(table)}")
    return table[name]


# keys of model dirs written before the checkpoint came from the features' extractor (ssl_model)
_LEGACY = {"decoder_conf": ("pretrained",), "ssl_top": ("checkpoint", "from_layer")}


def build_model(conf: dict[str, Any], input_dim: int, input_layers: int, vocab_size: int,
                ssl_model: str | None = None, stored_layer: int | None = None, pretrained: bool = True) -> ASRModel:
    """The model a config describes, for features of `input_layers` x `input_dim` and a token list.
    `ssl_model` and `stored_layer`: the checkpoint (and its layer) that the features came from, whose
    decoder (decoder: whisper) and top layers (ssl_top) a model takes: with their pretrained weights,
    or (`pretrained` False) their shapes alone, for a trained model's weights to replace."""
    top_conf = conf.get("ssl_top")
    legacy = {k: v for section, keys in _LEGACY.items() for k, v in (conf.get(section) or {}).items() if k in keys}
    conf = {**conf, **{s: {k: v for k, v in (conf.get(s) or {}).items() if k not in keys}
                       for s, keys in _LEGACY.items() if conf.get(s)}}
    ssl_model = legacy.get("pretrained") or legacy.get("checkpoint") or ssl_model
    stored_layer = legacy.get("from_layer", stored_layer)
    if conf.get("frontend", "default") != "default":
        raise DataError(f"unknown frontend {conf['frontend']!r}", "frontend", "use default")
    enc_cls = _choice(conf, "encoder", ENCODERS, None)
    if enc_cls is None:
        raise DataError("no encoder given", "encoder", f"set encoder: one of {sorted(ENCODERS)}")
    enc_conf = dict(conf.get("encoder_conf") or {})
    front_conf = dict(conf.get("frontend_conf") or {})
    front_conf.setdefault("subsample_dim", enc_conf.get("output_size", 256))
    frontend = _make(Frontend, "frontend_conf", front_conf, input_dim=input_dim, input_layers=input_layers)
    spec_cls = _choice(conf, "specaug", {"specaug": SpecAugment}, None)
    specaug = _make(spec_cls, "specaug_conf", conf.get("specaug_conf")) if spec_cls else None
    encoder = _make(enc_cls, "encoder_conf", enc_conf, input_size=frontend.output_dim)
    model_conf = dict(conf.get("model_conf") or {})
    dec_cls = _choice(conf, "decoder", DECODERS, "transformer")
    if model_conf.get("ctc_weight", 0.3) == 1.0:
        dec_cls = None  # CTC only: a decoder would get no gradient
    whisper = {"ssl_model": ssl_model, "pretrained": pretrained} if dec_cls is WhisperDecoder else {}
    decoder = (_make(dec_cls, "decoder_conf", conf.get("decoder_conf"), vocab_size=vocab_size,
                     encoder_output_size=encoder.output_size, **whisper) if dec_cls else None)
    top = None
    if top_conf is not None:
        if input_layers != 1:
            raise DataError(f"ssl_top runs on one stored layer, the features have {input_layers}", "ssl_top",
                            "store the single layer below the top (--ssl_layer K)")
        if ssl_model is None or stored_layer is None:
            raise DataError("ssl_top needs the checkpoint and the layer the features came from", "ssl_top",
                            "build the model with the store's extractor (model_io.build_from_config)")
        top = _make(SSLTop, "ssl_top", conf["ssl_top"], ssl_model=ssl_model, from_layer=stored_layer,
                    input_dim=input_dim, pretrained=pretrained)
    return _make(ASRModel, "model_conf", model_conf, frontend=frontend, specaug=specaug, encoder=encoder,
                 decoder=decoder, vocab_size=vocab_size, ssl_top=top)
