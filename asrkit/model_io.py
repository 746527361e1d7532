"""The experiment dir as a self-contained model: config, token list, feature attributes, weights.

    exp/<tag>/config.yaml        every resolved training option, with input_dim/input_layers/vocab_size
    exp/<tag>/tokens/            copy of the token dir the model was trained with
    exp/<tag>/feats_attrs.json   attributes of the feature extractor (checked against stores at use)
    exp/<tag>/*.pth              weights: epochN.pth, model.best.pth, model.avg.pth, checkpoint.pth
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from asrkit.errors import DataError
from asrkit.fileio import atomic_open, atomic_path, write_json

CONFIG, TOKENS_DIR, FEATS_ATTRS = "config.yaml", "tokens", "feats_attrs.json"


def save_config(exp_dir: str | Path, config: dict) -> None:
    with atomic_open(Path(exp_dir) / CONFIG) as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)


def load_config(exp_dir: str | Path) -> dict:
    path = Path(exp_dir) / CONFIG
    if not path.is_file():
        raise DataError("no config.yaml: not a trained experiment dir", str(exp_dir), "run stage 3 first")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def save_exp_files(exp_dir: str | Path, config: dict, token_dir: str | Path, feats_attrs: dict) -> None:
    """Write what decoding needs besides the weights; each file atomically."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(Path(token_dir).iterdir()):
        if src.is_file():
            with atomic_path(exp_dir / TOKENS_DIR / src.name) as tmp:
                shutil.copyfile(src, tmp)
    write_json(exp_dir / FEATS_ATTRS, feats_attrs)
    save_config(exp_dir, config)


def load_feats_attrs(exp_dir: str | Path) -> dict:
    path = Path(exp_dir) / FEATS_ATTRS
    if not path.is_file():
        raise DataError(f"no {FEATS_ATTRS}: not a trained experiment dir", str(exp_dir), "run stage 3 first")
    return json.loads(path.read_text(encoding="utf-8"))


def build_from_config(config: dict):
    from asrkit.nets import build_model

    return build_model(config, config["input_dim"], config["input_layers"], config["vocab_size"])


def load_model(exp_dir: str | Path, checkpoint: str = "model.avg.pth", device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, tokenizer, config, feats_attrs) from an experiment dir.

    `checkpoint` is a file name inside exp_dir (or a path): epochN.pth, model.best.pth, model.avg.pth,
    or checkpoint.pth (the latest training state).
    """
    from asrkit.tokenizer import Tokenizer
    from asrkit.train.checkpoint import model_state

    exp_dir = Path(exp_dir)
    config = load_config(exp_dir)
    tokenizer = Tokenizer.load(exp_dir / TOKENS_DIR)
    feats_attrs = load_feats_attrs(exp_dir)
    path = Path(checkpoint) if Path(checkpoint).is_file() else exp_dir / checkpoint
    if not path.is_file():
        have = sorted(p.name for p in exp_dir.glob("*.pth"))
        raise DataError(f"checkpoint {checkpoint!r} not found", str(exp_dir),
                        f"choose one of {have}" if have else "training has not saved any model yet")
    model = build_from_config(config)
    model.load_state_dict(model_state(path))
    return model.to(device).eval(), tokenizer, config, feats_attrs


def layer_weights(exp_dir: str | Path, checkpoint: str = "model.avg.pth") -> list[tuple[int, float]]:
    """(stored layer, weight) of a model's learned weighted sum over layers (softmax, summing to 1),
    in layer order; [] for a model without one (a single layer, or concatenated layers)."""
    from asrkit.train.checkpoint import model_state

    path = Path(exp_dir) / checkpoint
    if not path.is_file():
        return []
    weights = model_state(path).get("frontend.layer_weights")
    if weights is None:
        return []
    return list(zip(load_feats_attrs(exp_dir)["layers"], weights.float().softmax(0).tolist()))


def format_layer_weights(pairs: list[tuple[int, float]]) -> list[str]:
    """A markdown table of layer_weights, with a bar each and the heaviest marked."""
    top = max(w for _, w in pairs)
    return ["|layer|weight||", "|---|---|---|"] + [
        f"|{layer}|{w:.3f}|{'#' * round(40 * w)}{' (heaviest)' if w == top else ''}|" for layer, w in pairs]


def heaviest_layers(exp_dir: str | Path, k: int, checkpoint: str = "model.avg.pth") -> list[int]:
    """The k stored layers a model's weighted sum weighs most, in layer order."""
    pairs = layer_weights(exp_dir, checkpoint)
    if not pairs:
        raise DataError("the model has no learned weights over layers", str(exp_dir),
                        "it was trained on one layer (or concatenated layers): give --layers instead")
    return sorted(layer for layer, _ in sorted(pairs, key=lambda p: -p[1])[:k])
