"""Transformer decoder (pre-norm, as ESPnet's TransformerDecoder) with incremental decoding.

The incremental cache is ESPnet's: per layer, that layer's outputs at the earlier positions.
A step then computes only the newest position in every layer (its self-attention reads the
cached outputs of the layer below), so the cost per step does not grow with FFN/cross-attention
over the whole prefix.
"""
from __future__ import annotations

import torch
from torch import nn

from asrkit.nets.attention import MultiHeadAttention, PositionalEncoding, length_mask


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, linear_units: int, dropout_rate: float,
                 self_attention_dropout_rate: float, src_attention_dropout_rate: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(heads, dim, self_attention_dropout_rate)
        self.src_attn = MultiHeadAttention(heads, dim, src_attention_dropout_rate)
        self.feed_forward = nn.Sequential(nn.Linear(dim, linear_units), nn.ReLU(), nn.Dropout(dropout_rate),
                                          nn.Linear(linear_units, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x, x_mask, memory, memory_mask, cache=None):
        """x (B, L, D) with x_mask (B, L, L); with `cache` (B, L-1, D), only position L is computed."""
        xn = self.norm1(x)
        if cache is None:
            q, residual, q_mask = xn, x, x_mask
        else:
            q, residual, q_mask = xn[:, -1:], x[:, -1:], x_mask[:, -1:]
        x = residual + self.dropout(self.self_attn(q, xn, xn, q_mask))
        x = x + self.dropout(self.src_attn(self.norm2(x), memory, memory, memory_mask))
        x = x + self.dropout(self.feed_forward(self.norm3(x)))
        return x if cache is None else torch.cat([cache, x], dim=1)


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, encoder_output_size: int, attention_heads: int = 4,
                 linear_units: int = 2048, num_blocks: int = 6, dropout_rate: float = 0.1,
                 positional_dropout_rate: float = 0.1, self_attention_dropout_rate: float = 0.0,
                 src_attention_dropout_rate: float = 0.0, attention_dim: int | None = None):
        super().__init__()
        dim = attention_dim or encoder_output_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_enc = PositionalEncoding(dim, positional_dropout_rate)
        self.memory_proj = nn.Linear(encoder_output_size, dim) if dim != encoder_output_size else None
        self.decoders = nn.ModuleList(
            DecoderLayer(dim, attention_heads, linear_units, dropout_rate, self_attention_dropout_rate,
                         src_attention_dropout_rate) for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(dim)
        self.output_layer = nn.Linear(dim, vocab_size)

    def _inputs(self, ys_in, ys_lens, memory, memory_lens):
        length = ys_in.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=ys_in.device).tril()
        tgt_mask = causal[None] & length_mask(ys_lens, length)[:, None, :]
        memory_mask = length_mask(memory_lens, memory.size(1))[:, None, :]
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)
        return self.pos_enc(self.embed(ys_in)), tgt_mask, memory, memory_mask

    def forward(self, ys_in, ys_lens, memory, memory_lens) -> torch.Tensor:
        """Teacher forcing: logits (B, L, V) of the token after each prefix."""
        x, tgt_mask, memory, memory_mask = self._inputs(ys_in, ys_lens, memory, memory_lens)
        for layer in self.decoders:
            x = layer(x, tgt_mask, memory, memory_mask)
        return self.output_layer(self.after_norm(x))

    def forward_one_step(self, ys_in, memory, memory_lens, cache=None):
        """Logits (N, V) after the full prefixes ys_in (N, L), and the new cache (list of (N, L, D))."""
        n, length = ys_in.shape
        if cache is not None and (len(cache) != len(self.decoders) or cache[0].shape[:2] != (n, length - 1)):
            raise ValueError(f"decoder cache holds {cache[0].shape[:2]} (rows, positions) but a step "
                             f"on {n} prefixes of length {length} needs ({n}, {length - 1})")
        ys_lens = torch.full((n,), length, dtype=torch.long, device=ys_in.device)
        x, tgt_mask, memory, memory_mask = self._inputs(ys_in, ys_lens, memory, memory_lens)
        new_cache = []
        for i, layer in enumerate(self.decoders):
            x = layer(x, tgt_mask, memory, memory_mask, None if cache is None else cache[i])
            new_cache.append(x)
        return self.output_layer(self.after_norm(x[:, -1])), new_cache
