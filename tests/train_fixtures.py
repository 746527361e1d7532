"""Small training data for data/trainer tests: split lists, HDF5 stores (written with the store's own
writer) whose features encode the transcript, a char token list, and a tiny model config."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from asrkit.features.store import FeatureWriter, finalize_store
from asrkit.tokenizer import build_token_list

REPO = Path(__file__).resolve().parents[1]
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]
DIM = 8
ATTRS = dict(feats_type="fbank", weights_hash="", layers=[], layer_reduce="", dim=DIM, num_layers=1,
             sample_rate=16000, frame_rate=100.0, n_mels=DIM, frame_length_ms=25.0, frame_shift_ms=10.0,
             dtype="float16", asrkit_version="test")

# A model small enough for 2 CPU cores, with everything that matters for determinism switched on:
# dropout, SpecAugment, BatchNorm (a buffer that a pre-flight pass must not change).
TINY_MODEL = {
    "frontend": "default",
    "frontend_conf": {"proj_dim": 16, "subsample": "conv1d2", "subsample_dim": 16, "dropout_rate": 0.1},
    "specaug": "specaug",
    "specaug_conf": {"apply_time_warp": False, "freq_mask_width_range": [0, 2], "num_freq_mask": 1,
                     "time_mask_width_range": [0, 3], "num_time_mask": 1},
    "encoder": "conformer",
    "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 1,
                     "cnn_module_kernel": 3, "dropout_rate": 0.1},
    "decoder": "transformer",
    "decoder_conf": {"attention_heads": 2, "linear_units": 32, "num_blocks": 1},
    "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1},
}
TINY_TRAIN = {"batch_bins": 400, "max_epoch": 2, "optim": "adam", "optim_conf": {"lr": 0.003},
              "scheduler": "constant", "scheduler_conf": {"warmup_steps": 4}, "num_workers": 0,
              "save_interval_steps": 3, "keep_nbest_models": 2, "preflight_batches": 1,
              "log_interval": 1000, "tensorboard": False}


def utterance_feats(text: str, seed: int, frames_per_char: int = 3) -> np.ndarray:
    """Features that carry the transcript: a fixed random vector per character, plus noise."""
    table = np.random.default_rng(1234).standard_normal((128, DIM))
    rng = np.random.default_rng(seed)
    rows = [table[ord(c) % 128] for c in text for _ in range(frames_per_char)]
    return (np.stack(rows) + 0.3 * rng.standard_normal((len(rows), DIM))).astype(np.float16)


def write_split(root: Path, split: str, n: int, seed: int, store_extra: dict | None = None) -> tuple[Path, Path]:
    """data/<split>.jsonl and dump/<split>.h5 with n utterances of 1-3 digit words."""
    rng = np.random.default_rng(seed)
    records, items = [], []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
        utt = f"{split}_{i:03d}"
        records.append({"utt_id": utt, "audio": f"{utt}.wav", "duration": 1.0, "speaker": f"s{i % 4}",
                        "text": text})
        items.append((utt, utterance_feats(text, seed * 1000 + i)))
    data = root / "data" / f"{split}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    shard = root / "dump" / f"{split}.h5.partial" / "shard0.h5"
    w = FeatureWriter(shard, ATTRS)
    w.write(items + list((store_extra or {}).items()))
    w.close()
    store = root / "dump" / f"{split}.h5"
    finalize_store([shard], store, ATTRS, [])
    return data, store


def make_experiment(root: Path, n_train: int = 24, n_valid: int = 6, **train) -> dict:
    """Everything `asrkit.bin.train` needs; returns its paths and a config file path."""
    train_data, train_feats = write_split(root, "train", n_train, seed=1)
    valid_data, valid_feats = write_split(root, "valid", n_valid, seed=2)
    texts = [json.loads(line)["text"] for line in train_data.read_text().splitlines()]
    token_dir = root / "data" / "token_list" / "char"
    build_token_list(texts, "char", token_dir)
    config = root / "conf.yaml"
    config.write_text(yaml.safe_dump({**TINY_MODEL, **TINY_TRAIN, **train}), encoding="utf-8")
    return dict(config=config, train_data=train_data, train_feats=train_feats, valid_data=valid_data,
                valid_feats=valid_feats, token_dir=token_dir)


def train_argv(paths: dict, exp_dir: Path, *extra: str) -> list[str]:
    argv = [f"--{k}={v}" for k, v in paths.items()] + [f"--exp_dir={exp_dir}", "--ngpu=0"]
    return argv + list(extra)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in new sessions,
    so killing torchrun's process group alone would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def torchrun(nproc: int, args: list[str], timeout: float = 120, **popen) -> subprocess.Popen:
    """Launch `torchrun --nproc_per_node nproc` (CPU, gloo) in its own process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True, **popen)
