"""Multi-head attention (absolute and ESPnet's relative-position "rel_selfattn"), positional encodings.

Masks are boolean with True where a position may be attended to (the convention of
torch.nn.functional.scaled_dot_product_attention), unlike ESPnet's masks of padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def length_mask(lens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real frames."""
    max_len = int(lens.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads; mask (B, 1 or Tq, Tk) bool."""

    def __init__(self, heads: int, dim: int, dropout_rate: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by {heads} heads")
        self.h, self.d_k, self.dropout_rate = heads, dim // heads, dropout_rate
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        return linear(x).view(x.size(0), -1, self.h, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def attend(self, q, k, v, mask, bias=None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_k) + bias) v with masked keys removed; q, k, v are (B, h, T, d_k)."""
        attn_mask = mask.unsqueeze(1)  # (B, 1, Tq|1, Tk)
        if bias is not None:
            attn_mask = bias.masked_fill(~attn_mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout_rate if self.training else 0.0)
        return self.linear_out(out.transpose(1, 2).reshape(q.size(0), -1, self.h * self.d_k))

    def forward(self, query, key, value, mask) -> torch.Tensor:
        q, k, v = self.split(query, self.linear_q), self.split(key, self.linear_k), self.split(value, self.linear_v)
        return self.attend(q, k, v, mask)


class RelPositionMultiHeadAttention(MultiHeadAttention):
    """Self-attention with relative positions (Transformer-XL, as ESPnet's latest rel_selfattn).

    score(i, j) = (q_i + u) . k_j + (q_i + v) . p_{i-j}, with learned biases u, v per head.
    """

    def __init__(self, heads: int, dim: int, dropout_rate: float = 0.0):
        super().__init__(heads, dim, dropout_rate)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        """(B, h, T, 2T-1) scores against positions T-1..-(T-1) -> (B, h, T, T) indexed by i-j."""
        b, h, t, n = x.shape
        x = F.pad(x, (1, 0)).view(b, h, n + 1, t)[:, :, 1:].reshape(b, h, t, n)
        return x[:, :, :, : n // 2 + 1]

    def forward(self, x, pos_emb, mask) -> torch.Tensor:
        q = self.linear_q(x).view(x.size(0), -1, self.h, self.d_k)  # (B, T, h, d_k)
        k, v = self.split(x, self.linear_k), self.split(x, self.linear_v)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        bias = self.rel_shift(q_v @ p.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self.attend(q_u, k, v, mask, bias=bias)


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim) interleaved sin/cos encodings (Vaswani et al.)."""
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    angles = positions.float()[:, None] * div[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


class PositionalEncoding(nn.Module):
    """x * sqrt(d) + absolute sinusoidal positions, then dropout (the decoder's embedding)."""

    def __init__(self, dim: int, dropout_rate: float = 0.0):
        super().__init__()
        self.dim, self.dropout = dim, nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pe = sinusoids(torch.arange(x.size(1), device=x.device), self.dim).to(x.dtype)
        return self.dropout(x * math.sqrt(self.dim) + pe)


class RelPositionalEncoding(nn.Module):
    """x * sqrt(d) and the encodings of relative positions T-1 .. -(T-1), each with dropout."""

    def __init__(self, dim: int, dropout_rate: float = 0.0):
        super().__init__()
        self.dim, self.dropout = dim, nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = x.size(1)
        pos = torch.arange(t - 1, -t, -1, device=x.device)
        pos_emb = sinusoids(pos, self.dim).to(x.dtype).unsqueeze(0)  # (1, 2T-1, d)
        return self.dropout(x * math.sqrt(self.dim)), self.dropout(pos_emb)
