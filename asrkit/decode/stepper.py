"""Decoder steps for the beam search: rows are (utterance, beam slot), K consecutive rows per utterance.

A stepper has `step(ys (N, L), live=None) -> logp (M, V)`: the token after each prefix (every prefix
one longer than at the last step), for the rows `live` (M,) only when given: rows of hypotheses that
are dead (score -inf: a finished hypothesis's slot, the K-1 empty slots at the start) are not computed,
and their caches are not kept. `reorder(index)`: row r of the next step continues row index[r] of
this one (beam reordering, and dropping the rows of finished utterances); a dead row must only be
continued by rows that are dead too. `keep(utts)`: only these utterances (indices into the current
ones) go on. Reorders are applied lazily, composed, at the next step.

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
from torch import nn

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


class RowMap:
    """Which cache row holds each row's state: reorders compose until the next step gathers once."""

    def __init__(self):
        self.index: torch.Tensor | None = None  # pending: row r continues row index[r] of the last step
        self.slot: torch.Tensor | None = None  # last step's row -> its row in the cache (None: identity)

    def reorder(self, index: torch.Tensor) -> None:
        self.index = index if self.index is None else self.index[index]

    def gather(self, live: torch.Tensor | None, n_rows: int, device) -> torch.Tensor | None:
        """Cache rows to take for this step's rows `live` (all if None); None: the cache as it is."""
        index, self.index = self.index, None
        if live is not None:
            index = live if index is None else index[live]
        if self.slot is not None:
            index = self.slot if index is None else self.slot[index]
        if live is None:
            self.slot = None
        else:  # dead rows point at row 0: only dead rows continue them
            self.slot = torch.zeros(n_rows, dtype=torch.long, device=device)
            self.slot[live] = torch.arange(len(live), device=device)
        return index


class GenericStepper:
    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int):
        self.model, self.K = model, beam
        self.memory, self.memory_lens = enc.repeat_interleave(beam, 0), enc_lens.repeat_interleave(beam, 0)
        self.cache, self.rows = None, RowMap()

    def step(self, ys: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        index = self.rows.gather(live, ys.size(0), ys.device)
        if index is not None and self.cache is not None:
            self.cache = select_rows(self.cache, index)
        memory, memory_lens = self.memory, self.memory_lens
        if live is not None:
            ys, memory, memory_lens = ys[live], memory[live], memory_lens[live]
        logp, self.cache = self.model.decoder_step(ys, memory, memory_lens, self.cache)
        return logp

    def reorder(self, index: torch.Tensor) -> None:
        self.rows.reorder(index)

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
        self.plain_ff = all([type(m) for m in layer.feed_forward] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
                            for layer in dec.decoders)
        n = 2 * len(dec.decoders)  # keys and values of each layer
        self.old: list[torch.Tensor] | None = None
        self.recent: list[torch.Tensor] = [mem.new_empty(0)] * n
        self.rows = RowMap()
        self.length = 0  # positions stepped so far

    def keep(self, utts: torch.Tensor) -> None:
        self.kv = [(k[utts], v[utts]) for k, v in self.kv]
        self.mask = self.mask[utts]
        # frames past the longest remaining utterance are masked for all: drop them
        t = int((self.mask[:, 0, 0] == 0).sum(1).max())
        if t < self.mask.size(-1):
            self.kv = [(k[:, :, :t].contiguous(), v[:, :, :t].contiguous()) for k, v in self.kv]
            self.mask = self.mask[..., :t].contiguous()

    def reorder(self, index: torch.Tensor) -> None:
        self.rows.reorder(index)

    def step(self, ys: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs (M, V) of the token after the prefixes ys[live] (ys (N, L)). Attending over cached
        keys and values, a step costs the same at every length but for the attention itself (ESPnet's
        cache of layer outputs recomputes the keys and values of the whole prefix)."""
        dec, (N, L) = self.dec, ys.shape
        if L != self.length + 1:
            raise ValueError(f"TransformerStepper steps one position at a time from <sos>: got prefixes of "
                             f"length {L} after {self.length} steps")
        self.length, A = L, N // self.K
        index = self.rows.gather(live, N, ys.device)
        M = N if live is None else len(live)
        old, recent = self.old, self.recent
        pe = sinusoids(torch.tensor([L - 1], device=ys.device), dec.pos_enc.dim).to(self.mask.dtype)
        last = ys[:, -1] if live is None else ys[live, -1]
        x = dec.embed(last) * math.sqrt(dec.pos_enc.dim) + pe  # (M, D): the newest position only
        for i, layer in enumerate(dec.decoders):
            sa, src = layer.self_attn, layer.src_attn
            q, k, v = F.linear(layer.norm1(x), *self.qkv[i]).view(M, 3, sa.h, 1, sa.d_k).unbind(1)  # (M, h, 1, d_k)
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
            p = (s * sa.d_k ** -0.5).softmax(-1)  # (M, h, 1, L)
            if old is None:
                att = p @ recent[2 * i + 1]
            else:
                lo = old[0].size(2)
                att = p[..., :lo] @ old[2 * i + 1] + p[..., lo:] @ recent[2 * i + 1]
            hh = x + sa.linear_out(att.view(M, -1))
            qc = src.linear_q(layer.norm2(hh))
            if live is not None:  # the K rows of an utterance attend together: dead rows as zeros
                qc = qc.new_zeros(N, qc.size(1)).index_copy_(0, live, qc)
            qc = qc.view(A, self.K, src.h, src.d_k).transpose(1, 2)
            att = F.scaled_dot_product_attention(qc, *self.kv[i], attn_mask=self.mask)  # (A, heads, K, d_k)
            att = att.transpose(1, 2).reshape(N, -1)
            hh = hh + src.linear_out(att if live is None else att[live])
            if self.plain_ff:  # Linear, ReLU, Dropout (none in eval), Linear: ReLU in place
                ff = layer.feed_forward
                x = hh + F.linear(F.linear(layer.norm3(hh), ff[0].weight, ff[0].bias).relu_(), ff[3].weight, ff[3].bias)
            else:
                x = hh + layer.feed_forward(layer.norm3(hh))
        if recent[0].size(2) >= self.merge_every:  # (recent[0]: this step's keys of layer 0, M rows)
            self.old = recent if old is None else [torch.cat(pair, 2) for pair in zip(old, recent)]
            self.recent = [t[:, :, :0] for t in recent]
        return dec.output_layer(dec.after_norm(x)).float().log_softmax(-1)


def make_stepper(model, enc, enc_lens, beam):
    from asrkit.nets.decoder import TransformerDecoder

    dec = getattr(model, "decoder", None)
    if isinstance(dec, TransformerDecoder) and not dec.training:
        return TransformerStepper(model, enc, enc_lens, beam)
    return GenericStepper(model, enc, enc_lens, beam)
