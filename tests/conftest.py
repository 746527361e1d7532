"""Fixtures shared by the whole suite: generated audio, manifests, a tiny WavLM and a tiny Whisper saved to disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

# Small models run many times faster on one thread than on two busy ones; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
FSDD = Path(os.environ.get("ASRKIT_FSDD", REPO.parent / "shared" / "data" / "fsdd"))


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1,
               freq: float = 220.0, amplitude: float = 0.3, seed: int = 0) -> Path:
    """A harmonic tone with a little noise: speech-like enough for feature code, fast to make."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    wav = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 5)) * amplitude / 2
    wav = wav + 0.01 * rng.standard_normal(t.size)
    if channels > 1:
        wav = np.stack([wav * (1 - 0.1 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_manifest(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A manifest of 24 short utterances by 6 speakers, audio relative to the manifest."""
    words = ["one two", "three four five", "six", "seven eight", "nine zero one", "two three"]
    records = []
    for s in range(6):
        for u in range(4):
            rel = f"wav/spk{s}/u{u}.wav"
            write_tone(tmp_path / "corpus" / rel, seconds=0.5 + 0.25 * u, freq=150 + 40 * s, seed=s * 10 + u)
            records.append({"utt_id": f"spk{s}_u{u}", "audio": rel, "text": words[(s + u) % 6].upper() + ".",
                            "speaker": f"spk{s}", "age": 6 + s})
    return write_manifest(tmp_path / "corpus" / "manifest.jsonl", records)


@pytest.fixture(scope="session")
def tiny_wavlm(tmp_path_factory) -> Path:
    """A random-weight WavLM (tiny preset) saved to a temp dir, loadable by from_pretrained."""
    from asrkit.random_models import save_random_ssl

    return save_random_ssl(tmp_path_factory.mktemp("wavlm") / "tiny-wavlm", preset="tiny")


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A random-weight Whisper (tiny preset: model, feature extractor, tokenizer), loadable by from_pretrained."""
    from asrkit.random_models import save_random_whisper

    return save_random_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper", preset="tiny")


@pytest.fixture
def fsdd() -> Path:
    """The shared Free Spoken Digit Dataset; tests that use it are skipped where it is absent."""
    if not (FSDD / "manifest.jsonl").is_file():
        pytest.skip(f"FSDD not found at {FSDD} (set ASRKIT_FSDD to its folder)")
    return FSDD


def load_trained_only(exp_dir, monkeypatch):
    """load_model(exp_dir)'s model, with every transformers `from_pretrained` of a model refused: a
    trained model is built from the checkpoint's config alone and given its own weights."""
    from transformers import PreTrainedModel

    from asrkit.model_io import load_model

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"load_model read the weights of a {cls.__name__} checkpoint")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
        return load_model(exp_dir)[0]


def same_tensors(a, b) -> bool:
    """Whether two models hold equal parameters and buffers (those a state dict leaves out included)."""
    import torch

    ta, tb = ({**dict(m.named_parameters()), **dict(m.named_buffers())} for m in (a, b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
