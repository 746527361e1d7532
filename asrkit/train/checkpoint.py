"""Checkpoints: atomic saves, RNG states, which epochs to keep, averaging of the best ones."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from asrkit.fileio import atomic_path

log = logging.getLogger(__name__)

# Direction of each validation metric: which value is better.
CRITERIA = {"loss": "min", "acc": "max", "cer": "min"}


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write leaves the old file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_state(path: str | Path) -> dict:
    """The model weights of a file that holds either a state dict or a full training checkpoint."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    return obj["model"] if isinstance(obj, dict) and "model" in obj and "optimizer" in obj else obj


def average_states(paths: Sequence[str | Path]) -> dict:
    """Element-wise mean of several models' weights (integer buffers: floor of the mean)."""
    avg = None
    for p in paths:
        state = model_state(p)
        if avg is None:
            avg = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                avg[k] += v.double() if v.is_floating_point() else v
    ref = model_state(paths[0])
    return {k: (v / len(paths)).to(ref[k].dtype) if ref[k].is_floating_point() else v // len(paths)
            for k, v in avg.items()}


def best_epochs(history: Sequence[dict], criterion: str, k: int) -> list[int]:
    """The k epochs with the best validation `criterion` (ties: the earlier epoch)."""
    sign = 1 if CRITERIA[criterion] == "min" else -1
    scored = [(sign * h["valid"][criterion], h["epoch"]) for h in history if criterion in h.get("valid", {})]
    return [e for _, e in sorted(scored)[:k]]


def prune_epochs(exp_dir: Path, history: Sequence[dict], criterion: str, nbest: int, nlast: int) -> None:
    """Delete epoch files that are neither among the best `nbest` nor the last `nlast`."""
    keep = set(best_epochs(history, criterion, nbest)) | {h["epoch"] for h in history[-nlast:] if nlast}
    for f in exp_dir.glob("epoch*.pth"):
        if f.stem[5:].isdigit() and int(f.stem[5:]) not in keep:
            f.unlink()


def average_best(exp_dir: str | Path, history: Sequence[dict], criterion: str, k: int,
                 out_name: str = "model.avg.pth") -> Path | None:
    """Average the best k epochs' weights into exp_dir/out_name; also link model.best.pth to the best.
    None if none of them is on disk."""
    exp_dir = Path(exp_dir)
    best = best_epochs(history, criterion, k)
    epochs = [e for e in best if (exp_dir / f"epoch{e}.pth").is_file()]
    if not epochs:
        return None
    if len(epochs) < len(best):
        log.warning("only %d of the best %d epochs are on disk: averaging those", len(epochs), len(best))
    save_atomic(average_states([exp_dir / f"epoch{e}.pth" for e in epochs]), exp_dir / out_name)
    best = exp_dir / "model.best.pth"
    with atomic_path(best) as tmp:
        tmp.unlink()
        tmp.symlink_to(f"epoch{epochs[0]}.pth")
    log.info("%s: average of epochs %s (best %s by valid %s)", exp_dir / out_name, epochs, epochs[0], criterion)
    return exp_dir / out_name


def average_from_log(exp_dir: str | Path, k: int, out_name: str) -> Path:
    """average_best after training: the epochs and the criterion from train_log.jsonl and config.yaml."""
    from asrkit.errors import DataError
    from asrkit.fileio import load_jsonl
    from asrkit.model_io import load_config

    exp_dir = Path(exp_dir)
    log_path = exp_dir / "train_log.jsonl"
    if not log_path.is_file():
        raise DataError("no train_log.jsonl to pick the best epochs from", str(exp_dir), "train the model first")
    history = [r for r in load_jsonl(log_path) if r.get("kind") == "epoch"]
    criterion = load_config(exp_dir).get("best_model_criterion", "acc")
    path = average_best(exp_dir, history, criterion, k, out_name)
    if path is None:
        raise DataError(f"none of the best {k} epochs by valid {criterion} is on disk", str(exp_dir),
                        "keep more epochs (keep_nbest_models) or decode model.avg.pth")
    return path
