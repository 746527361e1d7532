"""Multi-head attention (absolute and ESPnet's relative-position "rel_selfattn"), positional encodings,
and the decoder's attentions with the caches that incremental decoding keeps (KVCache, MemoryKV).

Masks are boolean with True where a position may be attended to (the convention of
torch.nn.functional.scaled_dot_product_attention), unlike ESPnet's masks of padding; MemoryKV's is
additive (0 or -inf).
"""
from __future__ import annotations

import math
from typing import NamedTuple

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

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """(B, h, T, d_k) per-head outputs -> (B, T, D) through linear_out."""
        return self.linear_out(out.transpose(1, 2).reshape(out.size(0), -1, self.h * self.d_k))

    def sdpa(self, q, k, v, attn_mask) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                              dropout_p=self.dropout_rate if self.training else 0.0)

    def attend(self, q, k, v, mask, bias=None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_k) + bias) v with masked keys removed; q, k, v are (B, h, T, d_k)."""
        attn_mask = mask.unsqueeze(1)  # (B, 1, Tq|1, Tk)
        if bias is not None:
            attn_mask = bias.masked_fill(~attn_mask, float("-inf"))
        return self.merge(self.sdpa(q, k, v, attn_mask))


class KVCache(NamedTuple):
    """A decoder self-attention's keys and values of the positions decoded so far, for each row of a
    search, and the q/k/v projections fused into one matrix for the search (one matmul a step).

    The keys and values are chunks along time, (N, h, T_i, d_k) each: a large one and a recent one of
    at most `merge_every` positions, which joins the large one when full. A step appends to the
    small chunk only, and a reorder of the rows (nearly every step of a beam search) copies each chunk
    once; one growing tensor would be copied twice a step, and on CPU the alternative of strided views
    into a preallocated buffer attends 2-3x slower."""
    qkv: tuple[torch.Tensor, torch.Tensor]
    keys: tuple[torch.Tensor, ...] = ()
    values: tuple[torch.Tensor, ...] = ()
    merge_every: int = 16

    def select(self, index: torch.Tensor) -> KVCache:
        """Row r continues row index[r]."""
        return self._replace(keys=tuple(k.index_select(0, index) for k in self.keys),
                             values=tuple(v.index_select(0, index) for v in self.values))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The cache with one more position (N, h, 1, d_k) at the end."""
        if not self.keys:
            return self._replace(keys=(k.contiguous(),), values=(v.contiguous(),))
        if self.keys[-1].size(2) >= self.merge_every:  # the recent chunk is full: it joins the large one
            return self._replace(keys=(_join(self.keys), k.contiguous()), values=(_join(self.values), v.contiguous()))
        return self._replace(keys=(*self.keys[:-1], torch.cat([self.keys[-1], k], 2)),
                             values=(*self.values[:-1], torch.cat([self.values[-1], v], 2)))


def _join(chunks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, 2)


class SelfAttention(MultiHeadAttention):
    """Causal self-attention of the decoder: over all positions at once (teacher forcing, a mask), or
    for the newest position of each row against a KVCache of the earlier ones (a search step)."""

    def fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        layers = (self.linear_q, self.linear_k, self.linear_v)
        return torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers])

    def empty_cache(self, merge_every: int = 16) -> KVCache:
        return KVCache(self.fused_qkv(), merge_every=merge_every)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """Teacher forcing: x (B, L, D), mask (B, L, L) -> (B, L, D), None.
        A step: x (N, D) the newest position of each row, cache the rows' KVCache -> (N, D), the cache
        with this position added."""
        weight, bias = self.fused_qkv() if cache is None else cache.qkv
        qkv = F.linear(x, weight, bias)
        if cache is None:
            q, k, v = qkv.view(*x.shape[:2], 3, self.h, self.d_k).permute(2, 0, 3, 1, 4)  # (B, h, L, d_k) each
            return self.attend(q, k, v, mask), None
        q, k, v = qkv.view(x.size(0), 3, self.h, 1, self.d_k).unbind(1)  # (N, h, 1, d_k) each
        cache = cache.append(k, v)
        # every earlier position is real: no mask; softmax over the chunks' scores side by side
        scores = torch.cat([q @ c.transpose(-1, -2) for c in cache.keys], -1)
        p = (scores * self.d_k ** -0.5).softmax(-1)  # (N, h, 1, L)
        out, start = 0, 0
        for c in cache.values:
            out = out + p[..., start: start + c.size(2)] @ c
            start += c.size(2)
        return self.linear_out(out.view(x.size(0), -1)), cache


class MemoryKV(NamedTuple):
    """The encoder output as a cross-attention's keys and values (A, h, T, d_k), computed once per
    batch, with its additive mask (A, 1, 1, T) (0 on frames, -inf past an utterance's end: SDPA on
    CPU is faster with it than with a bool mask). In a search, `rows_per_utt` rows (the beams) of
    an utterance attend to its memory together as that many query positions, so the memory is never
    copied per hypothesis; `live` are the rows computed at this step (None: all)."""
    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    rows_per_utt: int | None = None
    live: torch.Tensor | None = None

    def select(self, utts: torch.Tensor) -> MemoryKV:
        """Only these utterances go on; frames past the longest of them are dropped."""
        keys, values, mask = self.keys[utts], self.values[utts], self.mask[utts]
        t = int((mask[:, 0, 0] == 0).sum(1).max())
        if t < mask.size(-1):  # (the attention reads contiguous tensors faster)
            keys, values, mask = keys[:, :, :t].contiguous(), values[:, :, :t].contiguous(), mask[..., :t].contiguous()
        return self._replace(keys=keys, values=values, mask=mask)


class CrossAttention(MultiHeadAttention):
    """The decoder's attention over the encoder output (see MemoryKV)."""

    def memory(self, memory: torch.Tensor, memory_lens: torch.Tensor, rows_per_utt: int | None = None) -> MemoryKV:
        """memory (A, T, D), memory_lens (A,) -> its MemoryKV."""
        keys, values = self.split(memory, self.linear_k), self.split(memory, self.linear_v)
        valid = length_mask(memory_lens, memory.size(1))[:, None, None, :]
        mask = torch.zeros(valid.shape, dtype=keys.dtype, device=keys.device).masked_fill(~valid, float("-inf"))
        return MemoryKV(keys, values, mask, rows_per_utt)

    def forward(self, x: torch.Tensor, memory: MemoryKV) -> torch.Tensor:
        """Teacher forcing: x (A, L, D) -> (A, L, D). A step: x (M, D), the rows memory.live of the
        A utterances x rows_per_utt -> (M, D)."""
        if memory.rows_per_utt is None:
            return self.merge(self.sdpa(self.split(x, self.linear_q), memory.keys, memory.values, memory.mask))
        (a, k), live = (memory.keys.size(0), memory.rows_per_utt), memory.live
        q = self.linear_q(x)
        if live is not None:  # dead rows as zeros: the K rows of an utterance attend together
            q = q.new_zeros(a * k, q.size(1)).index_copy_(0, live, q)
        out = self.sdpa(q.view(a, k, self.h, self.d_k).transpose(1, 2), memory.keys, memory.values, memory.mask)
        out = out.transpose(1, 2).reshape(a * k, -1)  # (A heads K d_k) -> rows
        return self.linear_out(out if live is None else out[live])


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
    """x * sqrt(d) + absolute sinusoidal positions, then dropout (the decoder's embedding). The
    encodings are computed once for the first `max_len` positions (more when needed), not per call:
    a search step would otherwise spend a dozen small ops on them."""

    def __init__(self, dim: int, dropout_rate: float = 0.0, max_len: int = 512):
        super().__init__()
        self.dim, self.dropout = dim, nn.Dropout(dropout_rate)
        self.register_buffer("pe", sinusoids(torch.arange(max_len), dim), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x (B, L, D) at positions offset .. offset+L-1 (a search step: the newest position only)."""
        end = offset + x.size(1)
        if end > self.pe.size(0):
            self.pe = sinusoids(torch.arange(max(end, 2 * self.pe.size(0))), self.dim).to(self.pe.device)
        return self.dropout(x * math.sqrt(self.dim) + self.pe[offset:end].to(x.dtype))


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
