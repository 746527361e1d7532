"""SpecAugment (Park et al. 2019) on a padded batch, each utterance within its own length.

Options follow ESPnet's specaug_conf. The model applies it in forward() in training mode only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpecAugment(nn.Module):
    def __init__(self, apply_time_warp: bool = False, time_warp_window: int = 5,
                 time_warp_mode: str = "bicubic", apply_freq_mask: bool = True,
                 freq_mask_width_range=(0, 27), num_freq_mask: int = 2, apply_time_mask: bool = True,
                 time_mask_width_range=None, time_mask_width_ratio_range=None, num_time_mask: int = 2):
        super().__init__()
        if apply_time_mask and (time_mask_width_range is None) == (time_mask_width_ratio_range is None):
            raise ValueError("specaug_conf: set exactly one of time_mask_width_range and "
                             "time_mask_width_ratio_range")
        self.time_warp = time_warp_window if apply_time_warp else 0
        self.time_warp_mode = time_warp_mode
        self.freq_mask = tuple(freq_mask_width_range) if apply_freq_mask else None
        self.num_freq_mask = num_freq_mask
        self.time_mask = tuple(time_mask_width_range) if apply_time_mask and time_mask_width_range else None
        self.time_ratio = (tuple(time_mask_width_ratio_range)
                           if apply_time_mask and time_mask_width_ratio_range else None)
        self.num_time_mask = num_time_mask

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), lens (B,): an augmented copy; padding stays zero."""
        x = x.clone()
        if self.time_warp:
            for b in range(x.size(0)):
                n = int(lens[b])
                x[b, :n] = self.warp(x[b, :n])
        if self.freq_mask:
            full = torch.full_like(lens, x.size(2))
            x = x.masked_fill(self.band_mask(full, x.size(2), self.freq_mask, self.num_freq_mask)[:, None, :], 0.0)
        if self.time_mask or self.time_ratio:
            if self.time_ratio:
                lo, hi = self.time_ratio
                width = [(lens * lo).long(), (lens * hi).long()]
            else:
                width = [torch.full_like(lens, w) for w in self.time_mask]
            x = x.masked_fill(self.band_mask(lens, x.size(1), width, self.num_time_mask)[:, :, None], 0.0)
        return x

    @staticmethod
    def band_mask(lens: torch.Tensor, size: int, width, num: int) -> torch.Tensor:
        """(B, size) bool: `num` bands per row of width in [lo, hi], each inside [0, lens)."""
        lo, hi = (torch.as_tensor(w, device=lens.device).expand_as(lens) for w in width)
        b = lens.size(0)
        w = lo[:, None] + (torch.rand(b, num, device=lens.device) * (hi - lo + 1)[:, None]).long()
        w = torch.minimum(w, lens[:, None])
        start = (torch.rand(b, num, device=lens.device) * (lens[:, None] - w + 1)).long()
        pos = torch.arange(size, device=lens.device)[None, None, :]
        return ((pos >= start[..., None]) & (pos < (start + w)[..., None])).any(1)

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        """Stretch the frames left of a random point and squeeze those right of it (or vice versa)."""
        t, w = x.size(0), self.time_warp
        if t <= 2 * w + 1:
            return x
        center = int(torch.randint(w, t - w, ()))
        warped = int(torch.randint(center - w, center + w, ())) + 1
        img = x[None, None]  # (1, 1, T, D)
        left = F.interpolate(img[:, :, :center], (warped, x.size(1)), mode=self.time_warp_mode, align_corners=False)
        right = F.interpolate(img[:, :, center:], (t - warped, x.size(1)), mode=self.time_warp_mode,
                              align_corners=False)
        return torch.cat([left, right], dim=2)[0, 0]
