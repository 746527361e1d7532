"""The experiment dir as a self-contained model: config, token list, feature attributes, weights.

    exp/<tag>/config.yaml        every resolved training option, with input_dim/input_layers/vocab_size
    exp/<tag>/tokens/            copy of the token dir the model was trained with
    exp/<tag>/feats_attrs.json   attributes of the feature extractor (checked against stores at use)
    exp/<tag>/*.safetensors      weights: epochN, model.best (a link to the best epoch), model.avg
    exp/<tag>/checkpoint.pth     the resume state (weights, optimizer, RNG: tensors and plain containers)
    exp/<tag>/layer_weights.md   the learned weights over stored layers (for scoring's RESULTS.md)

and the weights files: atomic saves, which epochs to keep, averaging of the best ones.

Nothing in a model dir runs code when loaded (docs/INTERNALS.md, "What asrkit promises"): weights
are safetensors, the resume state and the `.pth` weights of older dirs are read by torch.load with
weights_only=True, configs are YAML (safe_load) and JSON. A file that is not what it should be is
a DataError naming it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import safetensors
import safetensors.torch
import torch
import yaml

from asrkit.errors import DataError
from asrkit.features.extractors import ExtractorSpec
from asrkit.fileio import atomic_open, atomic_path, load_jsonl, write_json
from asrkit.nets import build_model
from asrkit.tokenizer import Tokenizer

log = logging.getLogger(__name__)
CONFIG, TOKENS_DIR, FEATS_ATTRS, LAYER_WEIGHTS = "config.yaml", "tokens", "feats_attrs.json", "layer_weights.md"
# Direction of each validation metric: which value is better.
CRITERIA = {"loss": "min", "acc": "max", "cer": "min"}
WEIGHTS_SUFFIX = ".safetensors"
AVERAGE = "model.avg" + WEIGHTS_SUFFIX  # the default weights to decode with
RESUME = "checkpoint.pth"


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
    """The feature extractor's attributes a model dir keeps; a checkpoint named by a path inside the dir
    (a package's front_end/) as that path."""
    path = Path(exp_dir) / FEATS_ATTRS
    if not path.is_file():
        raise DataError(f"no {FEATS_ATTRS}: not a trained experiment dir", str(exp_dir), "run stage 3 first")
    attrs = json.loads(path.read_text(encoding="utf-8"))
    ssl_model = attrs.get("ssl_model")
    if ssl_model and not Path(ssl_model).is_absolute() and (Path(exp_dir) / ssl_model).is_dir():
        attrs["ssl_model"] = str((Path(exp_dir) / ssl_model).resolve())
        if "extractor" in attrs:
            attrs["extractor"] = {**attrs["extractor"], "ssl_model": attrs["ssl_model"]}
    return attrs


def build_from_config(config: dict, feats_attrs: dict, pretrained: bool = True):
    """The model of a config (config.yaml), for the features a store's attrs describe (feats_attrs.json):
    a Whisper decoder or an encoder's top layers are those of the features' own checkpoint, with its
    weights (pretrained False: its config alone, for trained weights to replace: load_model)."""
    spec = ExtractorSpec.from_attrs(feats_attrs)
    return build_model(config, config["input_dim"], config["input_layers"], config["vocab_size"],
                       ssl_model=spec.ssl_model or None, stored_layer=spec.stored_layer, pretrained=pretrained)


def weights_path(exp_dir: str | Path, checkpoint: str = AVERAGE) -> Path:
    """The weights file `checkpoint` names: a path, or a file in exp_dir (epochN, model.best, model.avg,
    with or without its suffix; the .pth of a dir written before safetensors is found too)."""
    exp_dir, name = Path(exp_dir), Path(checkpoint)
    if name.is_file():
        return name
    stem = name.name[:-len(name.suffix)] if name.suffix in (WEIGHTS_SUFFIX, ".pth") else name.name
    for candidate in (exp_dir / checkpoint, exp_dir / (stem + WEIGHTS_SUFFIX), exp_dir / (stem + ".pth")):
        if candidate.is_file():
            return candidate
    have = sorted(p.name for p in [*exp_dir.glob("*" + WEIGHTS_SUFFIX), *exp_dir.glob("*.pth")])
    raise DataError(f"checkpoint {checkpoint!r} not found", str(exp_dir),
                    f"choose one of {have}" if have else "training has not saved any model yet")


def load_model(exp_dir: str | Path, checkpoint: str = AVERAGE, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, tokenizer, config, feats_attrs) from an experiment dir.

    `checkpoint`: a weights file in exp_dir (weights_path: epochN, model.best, model.avg, or
    checkpoint.pth, the latest training state) or a path.
    """
    exp_dir = Path(exp_dir)
    config = load_config(exp_dir)
    tokenizer = Tokenizer.load(exp_dir / TOKENS_DIR)
    feats_attrs = load_feats_attrs(exp_dir)
    path = weights_path(exp_dir, checkpoint)
    model = build_from_config(config, feats_attrs, pretrained=False)  # every weight comes from `path`
    try:
        model.load_state_dict(model_state(path))
    except RuntimeError as e:
        raise DataError(f"the weights do not fit the model of config.yaml ({str(e).splitlines()[0]})", str(path),
                        "the weights file and config.yaml must come from the same training run") from None
    return model.to(device).eval(), tokenizer, config, feats_attrs


def layer_weights(exp_dir: str | Path, checkpoint: str = AVERAGE) -> list[tuple[int, float]]:
    """(stored layer, weight) of a model's learned weighted sum over layers (softmax, summing to 1),
    in layer order; [] for a model without one (a single layer, or concatenated layers) or without
    the weights file."""
    try:
        path = weights_path(exp_dir, checkpoint)
    except DataError:
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


def heaviest_layers(exp_dir: str | Path, k: int, checkpoint: str = AVERAGE) -> list[int]:
    """The k stored layers a model's weighted sum weighs most, in layer order."""
    pairs = layer_weights(exp_dir, checkpoint)
    if not pairs:
        raise DataError("the model has no learned weights over layers", str(exp_dir),
                        "it was trained on one layer (or concatenated layers): give --layers instead")
    return sorted(layer for layer, _ in sorted(pairs, key=lambda p: -p[1])[:k])


def write_layer_weights(exp_dir: str | Path, checkpoint: str = AVERAGE) -> list[str]:
    """exp_dir/layer_weights.md from the checkpoint's learned weights over layers (none: no file);
    the table's lines."""
    lines = format_layer_weights(pairs) if (pairs := layer_weights(exp_dir, checkpoint)) else []
    if lines:
        with atomic_open(Path(exp_dir) / LAYER_WEIGHTS) as f:
            f.write("\n".join(lines) + "\n")
    return lines


# ---------------------------------------------------------------------------------------------
# Weights files


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """A state dict as safetensors, atomically (a kill mid-write leaves the old file intact). A tensor
    equal to an earlier one (tied weights: a decoder's embedding and output layer; and any copy) is
    stored once, the name recorded in the file's metadata (model_state restores it)."""
    first, tensors, same = {}, {}, {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        key = (str(v.dtype), tuple(v.shape), hashlib.blake2b(v.view(-1).view(torch.uint8).numpy()).hexdigest())
        if v.numel() and key in first:
            same[k] = first[key]
            continue
        first[key] = k
        tensors[k] = v.clone() if v.numel() and v.untyped_storage().nbytes() != v.nbytes else v  # (a view)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt", "tied": json.dumps(same)})


def model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a file: safetensors, or a .pth (a state dict or the training checkpoint,
    read with weights_only=True: a pickle that would run code is refused, as is anything else)."""
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX:
        try:
            state = safetensors.torch.load_file(str(path))
            with safetensors.safe_open(str(path), "pt") as f:
                tied = json.loads((f.metadata() or {}).get("tied") or "{}")
            return {**state, **{k: state[orig] for k, orig in tied.items()}}
        except Exception as e:  # (SafetensorError, or the OS's error) a truncated or foreign file
            raise DataError(f"not a valid safetensors weights file ({type(e).__name__}: {e})", str(path),
                            "copy the file again from where it was made") from None
    obj = load_checkpoint(path)
    obj = obj["model"] if isinstance(obj, dict) and "model" in obj and "optimizer" in obj else obj
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        raise DataError("holds no model weights (a state dict of tensors)", str(path), "choose a weights file")
    return obj


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """The resume state (tensors and plain Python containers only), atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """What save_checkpoint (or an older asrkit's torch.save) wrote, read with weights_only=True: a
    file holding anything but tensors and plain containers (a pickle that would run code) is refused
    with a DataError naming it, and nothing of it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (code, or an unknown type), a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"not a weights file asrkit can read safely ({first[:300]})", str(path),
                        "asrkit loads tensors only and never runs code from a file: use the model's "
                        "safetensors weights, or retrain") from None


def average_states(paths: Sequence[str | Path]) -> dict:
    """Element-wise mean of several models' weights (integer buffers: floor of the mean); weights tied
    in the first (one tensor under two names) stay tied."""
    avg = None
    for p in paths:
        state = model_state(p)
        if avg is None:
            avg = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                avg[k] += v.double() if v.is_floating_point() else v
    ref = model_state(paths[0])
    return map_tied(ref, lambda k, v: (avg[k] / len(paths)).to(v.dtype) if v.is_floating_point()
                    else avg[k] // len(paths))


def map_tied(state: dict, fn) -> dict:
    """{k: fn(k, v)}, once per tensor: names that share one tensor (tied weights) share the result."""
    out, done = {}, {}
    for k, v in state.items():
        if id(v) not in done:
            done[id(v)] = fn(k, v)
        out[k] = done[id(v)]
    return out


def best_epochs(history: Sequence[dict], criterion: str, k: int) -> list[int]:
    """The k epochs with the best validation `criterion` (ties: the earlier epoch)."""
    sign = 1 if CRITERIA[criterion] == "min" else -1
    scored = [(sign * h["valid"][criterion], h["epoch"]) for h in history if criterion in h.get("valid", {})]
    return [e for _, e in sorted(scored)[:k]]


def prune_epochs(exp_dir: Path, history: Sequence[dict], criterion: str, nbest: int, nlast: int) -> None:
    """Delete epoch files that are neither among the best `nbest` nor the last `nlast`."""
    keep = set(best_epochs(history, criterion, nbest)) | {h["epoch"] for h in history[-nlast:] if nlast}
    for f in exp_dir.glob("epoch*" + WEIGHTS_SUFFIX):
        if f.name[5:-len(WEIGHTS_SUFFIX)].isdigit() and int(f.name[5:-len(WEIGHTS_SUFFIX)]) not in keep:
            f.unlink()


def epoch_weights(exp_dir: str | Path, epoch: int) -> Path:
    return Path(exp_dir) / f"epoch{epoch}{WEIGHTS_SUFFIX}"


def average_best(exp_dir: str | Path, history: Sequence[dict], criterion: str, k: int,
                 out_name: str = AVERAGE) -> Path | None:
    """Average the best k epochs' weights into exp_dir/out_name; also link model.best to the best.
    None if none of them is on disk."""
    exp_dir = Path(exp_dir)
    best = best_epochs(history, criterion, k)
    epochs = [e for e in best if epoch_weights(exp_dir, e).is_file()]
    if not epochs:
        return None
    if len(epochs) < len(best):
        log.warning("only %d of the best %d epochs are on disk: averaging those", len(epochs), len(best))
    save_weights(average_states([epoch_weights(exp_dir, e) for e in epochs]), exp_dir / out_name)
    best = exp_dir / ("model.best" + WEIGHTS_SUFFIX)
    with atomic_path(best) as tmp:
        tmp.unlink()
        tmp.symlink_to(epoch_weights(exp_dir, epochs[0]).name)
    log.info("%s: average of epochs %s (best %s by valid %s)", exp_dir / out_name, epochs, epochs[0], criterion)
    return exp_dir / out_name


def average_from_log(exp_dir: str | Path, k: int, out_name: str) -> Path:
    """average_best after training: the epochs and the criterion from train_log.jsonl and config.yaml."""
    exp_dir = Path(exp_dir)
    log_path = exp_dir / "train_log.jsonl"
    if not log_path.is_file():
        raise DataError("no train_log.jsonl to pick the best epochs from", str(exp_dir), "train the model first")
    history = [r for r in load_jsonl(log_path) if r.get("kind") == "epoch"]
    criterion = load_config(exp_dir).get("best_model_criterion", "acc")
    path = average_best(exp_dir, history, criterion, k, out_name)
    if path is None:
        raise DataError(f"none of the best {k} epochs by valid {criterion} is on disk", str(exp_dir),
                        f"keep more epochs (keep_nbest_models) or decode {AVERAGE}")
    return path
