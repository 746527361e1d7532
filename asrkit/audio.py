"""Reading audio: soundfile for I/O, torchaudio for resampling, mono float32 out."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import soundfile as sf

from asrkit.errors import DataError

SAMPLE_RATE = 16000  # what the SSL models (and our fbank) expect


def audio_info(path: str) -> tuple[int, int, int]:
    """(sample rate, frames, channels) of a file, without reading its samples."""
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/OSError variously
        raise DataError(f"cannot read audio: {_reason(e)}", path,
                        "check that the file exists and is a valid WAV/FLAC/OGG file") from None
    return info.samplerate, info.frames, info.channels


def load_audio(path: str, start: float | None = None, end: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples of `path` (or of its [start, end) segment, in seconds) at `sample_rate`."""
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            first = int(round((start or 0.0) * sr))
            last = f.frames if end is None else min(f.frames, int(round(end * sr)))
            if first > 0:
                f.seek(first)
            wav = f.read(max(0, last - first), dtype="float32", always_2d=True)
    except Exception as e:
        raise DataError(f"cannot read audio: {_reason(e)}", path,
                        "check that the file exists and is a valid WAV/FLAC/OGG file") from None
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    return resample(wav, sr, sample_rate)


def resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation)."""
    if orig_sr == new_sr or wav.size == 0:
        return np.ascontiguousarray(wav, dtype=np.float32)
    import torch  # here, not at the top: data preparation reads 16 kHz files without it (4 s to import)

    out = _resampler(orig_sr, new_sr)(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)))
    return out.numpy()


@lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int):
    import torchaudio  # imported lazily: it is slow to import and only resampling needs it

    return torchaudio.transforms.Resample(orig_sr, new_sr)


def _reason(e: Exception) -> str:
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
