"""Decoder steps for the beam search: rows are (utterance, beam slot), K consecutive rows per utterance.

A stepper has `step(ys (N, L)) -> logp (N, V)` (the token after each prefix; every prefix one longer
than at the last step), `reorder(index)` (row r of the next step continues row index[r] of this one:
beam reordering, and dropping the rows of finished utterances) and `keep(utts)` (only these utterances,
indices into the current ones, go on). Reorders are applied lazily, composed, at the next step.

`GenericStepper` calls the model's `decoder_step` with the encoder output repeated for every row, as
ESPnet does. `TransformerStepper` is the fast path for asrkit's TransformerDecoder: the cross-attention
keys and values of each utterance are computed once (not once per step and hypothesis), the K
hypotheses of an utterance attend to them together as K query positions (memory is never copied), and
the self-attention keys/values of earlier positions are cached (see its docstring for how).
Both give the same log-probabilities (tests/test_decode.py checks it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from asrkit.nets.attention import length_mask, sinusoids


def select_rows(cache, index: torch.Tensor):
    """Reorder a decoder cache (tensors, possibly nested in lists/tuples/dicts) along its first dim."""
    if cache is None:
        return None
    if isinstance(cache, torch.Tensor):
        return cache.index_select(0, index)
    if isinstance(cache, dict):
        return {k: select_rows(v, index) for k, v in cache.items()}
    return type(cache)(select_rows(c, index) for c in cache)


class GenericStepper:
    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int):
        self.model, self.K = model, beam
        self.memory, self.memory_lens = enc.repeat_interleave(beam, 0), enc_lens.repeat_interleave(beam, 0)
        self.cache, self.index = None, None

    def step(self, ys: torch.Tensor) -> torch.Tensor:
        if self.index is not None:
            self.cache, self.index = select_rows(self.cache, self.index), None
        logp, self.cache = self.model.decoder_step(ys, self.memory, self.memory_lens, self.cache)
        return logp

    def reorder(self, index: torch.Tensor) -> None:
        self.index = index if self.index is None else self.index[index]

    def keep(self, utts: torch.Tensor) -> None:
        rows = (utts[:, None] * self.K + torch.arange(self.K, device=utts.device)).view(-1)
        self.memory, self.memory_lens = self.memory[rows], self.memory_lens[rows]


class TransformerStepper:
    """The self-attention keys and values of earlier positions, per layer (N, heads, L-1, d_k) each, are
    kept in two chunks: `old` and `recent` (at most `merge_every` positions). A step reorders both
    (index_select: the beams change order at nearly every step), appends the new position to the small
    `recent` and attends over both chunks; every `merge_every` steps `recent` joins `old`. So the bulk
    of the cache is copied once per step (by the reorder), not twice as with reorder-then-concatenate,
    and the attention reads contiguous tensors (on CPU, strided views of a preallocated buffer attend
    2-3x slower, and index_select into one is slower still)."""

    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int, merge_every: int = 16):
        dec = self.dec = model.decoder
        self.K, self.merge_every = beam, merge_every
        mem = enc if dec.memory_proj is None else dec.memory_proj(enc)
        self.kv = [(layer.src_attn.split(mem, layer.src_attn.linear_k), layer.src_attn.split(mem, layer.src_attn.linear_v))
                   for layer in dec.decoders]  # per layer (B, heads, T, d_k)
        # additive float mask (B, 1, 1, T): SDPA on CPU is faster with it than with a bool mask
        self.mask = torch.zeros(mem.shape[0], 1, 1, mem.size(1), device=mem.device, dtype=mem.dtype).masked_fill(
            ~length_mask(enc_lens, mem.size(1))[:, None, None, :], float("-inf"))
        # self-attention query/key/value projections as one matmul per layer
        self.qkv = [(torch.cat([a.linear_q.weight, a.linear_k.weight, a.linear_v.weight]),
                     torch.cat([a.linear_q.bias, a.linear_k.bias, a.linear_v.bias]))
                    for a in (layer.self_attn for layer in dec.decoders)]
        n = 2 * len(dec.decoders)  # keys and values of each layer
        self.old: list[torch.Tensor] | None = None
        self.recent: list[torch.Tensor] = [mem.new_empty(0)] * n
        self.index: torch.Tensor | None = None
        self.length = 0  # positions stepped so far

    def keep(self, utts: torch.Tensor) -> None:
        self.kv = [(k[utts], v[utts]) for k, v in self.kv]
        self.mask = self.mask[utts]

    def reorder(self, index: torch.Tensor) -> None:
        self.index = index if self.index is None else self.index[index]

    def step(self, ys: torch.Tensor) -> torch.Tensor:
        """Log-probs (N, V) of the token after each prefix ys (N, L). Attending over cached keys and
        values, a step costs the same at every length but for the attention itself (ESPnet's cache of
        layer outputs recomputes the keys and values of the whole prefix)."""
        dec, (N, L) = self.dec, ys.shape
        if L != self.length + 1:
            raise ValueError(f"TransformerStepper steps one position at a time from <sos>: got prefixes of "
                             f"length {L} after {self.length} steps")
        self.length, A, index, self.index = L, N // self.K, self.index, None
        old, recent = self.old, self.recent
        pe = sinusoids(torch.tensor([L - 1], device=ys.device), dec.pos_enc.dim).to(self.mask.dtype)
        x = dec.embed(ys[:, -1]) * math.sqrt(dec.pos_enc.dim) + pe  # (N, D): the newest position only
        for i, layer in enumerate(dec.decoders):
            sa, src = layer.self_attn, layer.src_attn
            q, k, v = F.linear(layer.norm1(x), *self.qkv[i]).view(N, 3, sa.h, 1, sa.d_k).unbind(1)  # (N, h, 1, d_k)
            for j, new in ((2 * i, k), (2 * i + 1, v)):
                if L == 1:
                    recent[j] = new.contiguous()
                    continue
                if index is not None:
                    recent[j] = recent[j].index_select(0, index)
                    if old is not None:
                        old[j] = old[j].index_select(0, index)
                recent[j] = torch.cat([recent[j], new], 2)
            s = q @ recent[2 * i].transpose(-1, -2)
            if old is not None:
                s = torch.cat([q @ old[2 * i].transpose(-1, -2), s], -1)
            p = (s * sa.d_k ** -0.5).softmax(-1)  # (N, h, 1, L)
            if old is None:
                att = p @ recent[2 * i + 1]
            else:
                lo = old[0].size(2)
                att = p[..., :lo] @ old[2 * i + 1] + p[..., lo:] @ recent[2 * i + 1]
            hh = x + sa.linear_out(att.view(N, -1))
            qc = src.split(layer.norm2(hh), src.linear_q).view(A, self.K, src.h, src.d_k).transpose(1, 2)
            att = F.scaled_dot_product_attention(qc, *self.kv[i], attn_mask=self.mask)  # (A, heads, K, d_k)
            hh = hh + src.linear_out(att.transpose(1, 2).reshape(N, -1))
            x = hh + layer.feed_forward(layer.norm3(hh))
        if recent[0].size(2) >= self.merge_every:
            self.old = recent if old is None else [torch.cat(pair, 2) for pair in zip(old, recent)]
            self.recent = [t[:, :, :0] for t in recent]
        return dec.output_layer(dec.after_norm(x)).float().log_softmax(-1)


def make_stepper(model, enc, enc_lens, beam):
    from asrkit.nets.decoder import TransformerDecoder

    dec = getattr(model, "decoder", None)
    if isinstance(dec, TransformerDecoder) and not dec.training:
        return TransformerStepper(model, enc, enc_lens, beam)
    return GenericStepper(model, enc, enc_lens, beam)
