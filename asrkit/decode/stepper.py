"""Decoder steps for the beam search: rows are (utterance, beam slot), K consecutive rows per utterance.

`GenericStepper` calls the model's `decoder_step` with the encoder output repeated for every row, as
ESPnet does. `TransformerStepper` is the fast path for asrkit's TransformerDecoder: the cross-attention
keys and values of each utterance are computed once (not once per step and hypothesis), and the K
hypotheses of an utterance attend to them together as K query positions, so memory is never copied.
Both give the same log-probabilities (tests/test_decode.py checks it).
"""
from __future__ import annotations

import torch

from asrkit.nets.attention import length_mask


class GenericStepper:
    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int):
        self.model, self.K = model, beam
        self.memory, self.memory_lens = enc.repeat_interleave(beam, 0), enc_lens.repeat_interleave(beam, 0)

    def step(self, ys: torch.Tensor, cache):
        return self.model.decoder_step(ys, self.memory, self.memory_lens, cache)

    def keep(self, utts: torch.Tensor) -> None:
        """Only the utterances `utts` (indices into the current ones) go on."""
        rows = (utts[:, None] * self.K + torch.arange(self.K, device=utts.device)).view(-1)
        self.memory, self.memory_lens = self.memory[rows], self.memory_lens[rows]


class TransformerStepper:
    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int):
        dec = self.dec = model.decoder
        self.K = beam
        mem = enc if dec.memory_proj is None else dec.memory_proj(enc)
        self.kv = [(layer.src_attn.split(mem, layer.src_attn.linear_k), layer.src_attn.split(mem, layer.src_attn.linear_v))
                   for layer in dec.decoders]  # per layer (B, heads, T, d_k)
        self.mask = length_mask(enc_lens, mem.size(1))[:, None, :]  # (B, 1, T)

    def keep(self, utts: torch.Tensor) -> None:
        self.kv = [(k[utts], v[utts]) for k, v in self.kv]
        self.mask = self.mask[utts]

    def step(self, ys: torch.Tensor, cache):
        """Same contract as decoder_step: cache = per layer its outputs at the earlier positions."""
        dec, (N, L) = self.dec, ys.shape
        if (cache is None) != (L == 1):
            raise ValueError("TransformerStepper steps one position at a time from <sos>")
        A = N // self.K
        x = dec.pos_enc(dec.embed(ys))  # (N, L, D): layer 0's input at every position
        self_mask = torch.ones(N, 1, L, dtype=torch.bool, device=ys.device)
        new_cache = []
        for i, layer in enumerate(dec.decoders):
            xn = layer.norm1(x)
            h = x[:, -1:] + layer.self_attn(xn[:, -1:], xn, xn, self_mask)
            src = layer.src_attn
            q = src.split(layer.norm2(h), src.linear_q).view(A, self.K, src.h, src.d_k).transpose(1, 2)
            h = h + src.attend(q, *self.kv[i], self.mask).reshape(N, 1, -1)  # (A, K, D) -> (N, 1, D)
            h = h + layer.feed_forward(layer.norm3(h))
            x = h if cache is None else torch.cat([cache[i], h], dim=1)
            new_cache.append(x)
        return dec.output_layer(dec.after_norm(x[:, -1])).float().log_softmax(-1), new_cache


def make_stepper(model, enc, enc_lens, beam):
    from asrkit.nets.decoder import TransformerDecoder

    dec = getattr(model, "decoder", None)
    if isinstance(dec, TransformerDecoder) and not dec.training:
        return TransformerStepper(model, enc, enc_lens, beam)
    return GenericStepper(model, enc, enc_lens, beam)
