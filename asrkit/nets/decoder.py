"""Transformer decoder (pre-norm, as ESPnet's TransformerDecoder), for teacher forcing and search steps.

Both go through the same layers. A step computes only the newest position of each row: its
self-attention reads the keys and values of the earlier positions from a KVCache, its cross-attention
the encoder output's keys and values (MemoryKV), computed once per batch of utterances. Unlike
ESPnet's cache of layer outputs, no key or value of an earlier position is computed again.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.nets.attention import CrossAttention, KVCache, MemoryKV, PositionalEncoding, SelfAttention, length_mask


class DecoderState(NamedTuple):
    """What a search keeps between decoder steps: per layer, the cross-attention memory of each
    utterance and the self-attention cache of each row (rows_per_utt consecutive rows an utterance)."""
    memory: tuple[MemoryKV, ...]
    cache: tuple[KVCache, ...]
    length: int = 0  # positions decoded so far

    def select(self, index: torch.Tensor) -> DecoderState:
        """Row r continues row index[r] (beam reordering; rows of finished utterances left out)."""
        return self._replace(cache=tuple(c.select(index) for c in self.cache))

    def keep(self, utts: torch.Tensor) -> DecoderState:
        """Only these utterances (indices into the current ones) go on."""
        return self._replace(memory=tuple(m.select(utts) for m in self.memory))


class FeedForward(nn.Sequential):
    """Linear -> ReLU -> dropout -> Linear. An nn.Sequential for its parameter names (0.*, 3.*, those
    of saved models); forward skips the per-module calls, which cost as much as the math at a step."""

    def __init__(self, dim: int, hidden: int, dropout_rate: float):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout_rate), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, _, dropout, w2 = self
        h = F.linear(x, w1.weight, w1.bias).relu_()
        return F.linear(dropout(h) if self.training else h, w2.weight, w2.bias)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, linear_units: int, dropout_rate: float,
                 self_attention_dropout_rate: float, src_attention_dropout_rate: float):
        super().__init__()
        self.self_attn = SelfAttention(heads, dim, self_attention_dropout_rate)
        self.src_attn = CrossAttention(heads, dim, src_attention_dropout_rate)
        self.feed_forward = FeedForward(dim, linear_units, dropout_rate)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None, memory: MemoryKV,
                cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """Teacher forcing: x (B, L, D), x_mask (B, L, L). A step: x (N, D) and the rows' cache."""
        att, cache = self.self_attn(self.norm1(x), x_mask, cache)
        x = x + self.drop(att)
        x = x + self.drop(self.src_attn(self.norm2(x), memory))
        x = x + self.drop(self.feed_forward(self.norm3(x)))
        return x, cache

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x) if self.training else x  # (a module call per use costs at a step)


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

    def memories(self, memory, memory_lens, rows_per_utt: int | None = None) -> tuple[MemoryKV, ...]:
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)
        return tuple(layer.src_attn.memory(memory, memory_lens, rows_per_utt) for layer in self.decoders)

    def forward(self, ys_in, ys_lens, memory, memory_lens) -> torch.Tensor:
        """Teacher forcing: logits (B, L, V) of the token after each prefix."""
        length = ys_in.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=ys_in.device).tril()
        tgt_mask = causal[None] & length_mask(ys_lens, length)[:, None, :]
        x = self.pos_enc(self.embed(ys_in))
        for layer, mem in zip(self.decoders, self.memories(memory, memory_lens)):
            x, _ = layer(x, tgt_mask, mem)
        return self.output_layer(self.after_norm(x))

    def init_state(self, memory, memory_lens, rows_per_utt: int, merge_every: int = 16) -> DecoderState:
        """The state before the first step of a search with rows_per_utt rows per utterance."""
        if self.training:
            raise ValueError("decoding steps run in eval mode (no dropout): call model.eval() first")
        return DecoderState(self.memories(memory, memory_lens, rows_per_utt),
                            tuple(layer.self_attn.empty_cache(merge_every) for layer in self.decoders))

    def step(self, tokens: torch.Tensor, state: DecoderState,
             live: torch.Tensor | None = None) -> tuple[torch.Tensor, DecoderState]:
        """Logits (M, V) of the token after each row's prefix, given its newest token (M,), for the
        rows `live` (M,) of the utterances x rows_per_utt (all when None), and the next state.
        The state's caches hold these M rows (DecoderState.select)."""
        x = self.pos_enc(self.embed(tokens[:, None]), offset=state.length)[:, 0]  # (M, D)
        caches = []
        for layer, mem, cache in zip(self.decoders, state.memory, state.cache):
            x, cache = layer(x, None, mem._replace(live=live), cache)
            caches.append(cache)
        return self.output_layer(self.after_norm(x)), DecoderState(state.memory, tuple(caches), state.length + 1)
