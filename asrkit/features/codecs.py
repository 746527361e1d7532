"""How a feature store keeps its arrays (`dump_feats --store_codec`, recorded in the store's attrs):

    none    the features as they are, in the store's `dtype` (float16 by default)
    int8    8-bit integers with a float16 scale per layer and channel (the largest |value| of that
            channel in the utterance maps to 127): about half of float16's bytes
    int8f   8-bit integers with a float16 scale per layer and frame

A store reader decodes transparently (FeatureReader[utt_id] is always float, in `dtype`); which
codec pays is measured by bench/bench_store.py (bytes per hour, error, speed, WER).
"""
from __future__ import annotations

import numpy as np

CODECS = ("none", "int8", "int8f")
# which axis a scale is shared along: the time axis (per channel) or the channel axis (per frame)
_SHARED_AXIS = {"int8": -2, "int8f": -1}


def encode(feats: np.ndarray, codec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored array, scales or None) of features (T, D) or (L, T, D)."""
    if codec == "none":
        return feats, None
    axis = _SHARED_AXIS[codec]
    x = feats.astype(np.float32)
    scale = np.abs(x).max(axis=axis, keepdims=True) / 127.0
    scale = scale.astype(np.float16)  # rounded first, so that decoding uses exactly the stored scale
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)
    q = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
    return q, np.squeeze(scale, axis=axis)


def decode(stored: np.ndarray, scales: np.ndarray | None, codec: str, dtype: str) -> np.ndarray:
    """The features back, as `dtype`. In torch: numpy's casts and multiply take 8x longer here, and a
    training step must not wait for its features."""
    if codec == "none":
        return stored
    import torch

    scale = torch.from_numpy(np.expand_dims(scales, _SHARED_AXIS[codec])).float()
    return torch.from_numpy(stored).float().mul_(scale).to(getattr(torch, dtype)).numpy()
