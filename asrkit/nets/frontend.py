"""Input layer on stored features: layer combination, projection, time subsampling.

Stored WavLM features come as (B, T, D), or (B, L, T, D) when several layers were kept; they
are combined with learned softmax weights (as s3prl/ESPnet's featurizer does). SpecAugment is
applied by the model between `combine` and `subsample`, i.e. on the combined features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUBSAMPLING = {"none": 1, "conv1d2": 2, "conv1d": 4, "conv2d2": 2, "conv2d": 4}


class Conv2dSubsampling(nn.Module):
    """ESPnet's Conv2dSubsampling (x4: two 3x3 stride-2 convs) and Conv2dSubsampling2 (x2)."""

    def __init__(self, idim: int, odim: int, factor: int):
        super().__init__()
        second_stride = 2 if factor == 4 else 1
        self.strides = (2, second_stride)
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU(),
                                  nn.Conv2d(odim, odim, 3, second_stride), nn.ReLU())
        freq = (((idim - 3) // 2 + 1) - 3) // second_stride + 1
        self.out = nn.Linear(odim * freq, odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class Conv1dSubsampling(nn.Module):
    """Convolutions over time only (cheaper than conv2d on wide SSL features): x2 or x4."""

    def __init__(self, idim: int, odim: int, factor: int):
        super().__init__()
        second_stride = 2 if factor == 4 else 1
        self.strides = (2, second_stride)
        self.conv = nn.Sequential(nn.Conv1d(idim, odim, 3, 2), nn.ReLU(),
                                  nn.Conv1d(odim, odim, 3, second_stride), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class Frontend(nn.Module):
    """combine (weighted sum over layers, LayerNorm) -> [SpecAugment] -> projection, subsampling."""

    def __init__(self, input_dim: int, input_layers: int = 1, weighted_sum: bool = True,
                 layer_norm: bool = True, proj_dim: int | None = None, subsample: str = "none",
                 subsample_dim: int = 256, dropout_rate: float = 0.0):
        super().__init__()
        if subsample not in SUBSAMPLING:
            raise ValueError(f"frontend_conf.subsample must be one of {sorted(SUBSAMPLING)}, not {subsample!r}")
        self.input_dim, self.input_layers, self.layer_norm = input_dim, input_layers, layer_norm
        self.weighted_sum = weighted_sum and input_layers > 1
        if self.weighted_sum:
            self.layer_weights = nn.Parameter(torch.zeros(input_layers))
        dim = input_dim if self.weighted_sum or input_layers == 1 else input_dim * input_layers
        self.feat_dim = dim  # what SpecAugment sees
        self.proj = nn.Linear(dim, proj_dim) if proj_dim else None
        dim = proj_dim or dim
        self.subsampling = SUBSAMPLING[subsample]
        self.sub = None
        if subsample != "none":
            cls = Conv2dSubsampling if subsample.startswith("conv2d") else Conv1dSubsampling
            self.sub = cls(dim, subsample_dim, self.subsampling)
            dim = subsample_dim
        self.dropout = nn.Dropout(dropout_rate)
        self.output_dim = dim
        # the shortest input that leaves one frame after subsampling (shorter ones must be skipped)
        self.min_frames = next(t for t in range(1, 64) if self.output_lengths(torch.tensor([t])) > 0)

    def combine(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, D) or (B, L, T, D) -> (B, T, D') float32."""
        shape = tuple(feats.shape)
        if feats.dim() == 3:
            feats = feats.unsqueeze(1)
        if feats.dim() != 4 or feats.size(1) != self.input_layers or feats.size(-1) != self.input_dim:
            raise ValueError(f"the model takes {self.input_layers} layer(s) of {self.input_dim}-dim "
                             f"features, got a batch of shape {shape}")
        x = feats.float()
        if self.layer_norm:
            x = F.layer_norm(x, x.shape[-1:])
        if self.weighted_sum:
            return torch.einsum("l,bltd->btd", self.layer_weights.softmax(0), x)
        return x.permute(0, 2, 1, 3).flatten(2)  # one layer, or layers concatenated

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        if self.sub is not None:
            for stride in self.sub.strides:  # kernel 3, no padding
                lens = torch.div(lens - 3, stride, rounding_mode="floor") + 1
        return lens

    def subsample(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.proj is not None:
            x = self.proj(x)
        if self.sub is not None:
            x = self.sub(x)
        return self.dropout(x), self.output_lengths(lens)
