"""Training records on rank 0: one jsonl line per step and per epoch, TensorBoard events, curves PNG."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from asrkit.fileio import atomic_path, load_jsonl, write_jsonl

log = logging.getLogger(__name__)


class Reporter:
    """Appends records to exp_dir/train_log.jsonl and mirrors scalars to TensorBoard (if installed).

    On resume, records of work after the checkpoint (to be redone) are dropped first.
    """

    def __init__(self, exp_dir: Path, tensorboard: bool = True, resume_step: int = 0, resume_epoch: int = 1):
        self.path = exp_dir / "train_log.jsonl"
        self.curves = exp_dir / "curves.png"
        old = load_jsonl(self.path) if self.path.is_file() else []
        kept = [r for r in old if r["step"] <= resume_step and r["kind"] != "ctc_head"  # (fitted again at the end)
                and not (r["kind"] == "epoch" and r["epoch"] >= resume_epoch)]
        if len(kept) != len(old):
            write_jsonl(self.path, kept)
        self.file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(exp_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")

    def record(self, kind: str, step: int, **values) -> None:
        self.file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, v in values.items():
                if isinstance(v, dict):
                    for k2, v2 in v.items():
                        self.tb.add_scalar(f"{key}/{k2}", v2, step)
                elif isinstance(v, (int, float)) and key not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{key}", v, step)

    def plot(self) -> None:
        """Loss, accuracy and CER against epochs (train and valid) in one PNG."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed: no %s", self.curves)
            return
        epochs = [r for r in load_jsonl(self.path) if r["kind"] == "epoch"]
        if not epochs:
            return
        x = [r["epoch"] for r in epochs]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, key in zip(axes, ("loss", "acc", "cer")):
            for split in ("train", "valid"):
                ys = [r.get(split, {}).get(key) for r in epochs]
                if any(y is not None for y in ys):
                    ax.plot(x, ys, marker="o", label=split)
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        with atomic_path(self.curves) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
