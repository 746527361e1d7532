"""Decoder steps for the beam search: rows are (utterance, beam slot), K consecutive rows per utterance.

`GenericStepper` calls the model's `decoder_step` with the encoder output repeated for every row, as
ESPnet does. `TransformerStepper` is the fast path for asrkit's TransformerDecoder: the cross-attention
keys and values of each utterance are computed once (not once per step and hypothesis), the K
hypotheses of an utterance attend to them together as K query positions (memory is never copied), and
the self-attention keys/values of earlier positions are cached.
Both give the same log-probabilities (tests/test_decode.py checks it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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
        # additive float mask (B, 1, 1, T): SDPA on CPU is faster with it than with a bool mask
        self.mask = torch.zeros(mem.shape[0], 1, 1, mem.size(1), device=mem.device, dtype=mem.dtype).masked_fill(
            ~length_mask(enc_lens, mem.size(1))[:, None, None, :], float("-inf"))

    def keep(self, utts: torch.Tensor) -> None:
        self.kv = [(k[utts], v[utts]) for k, v in self.kv]
        self.mask = self.mask[utts]

    def step(self, ys: torch.Tensor, cache):
        """Log-probs (N, V) of the token after each prefix ys (N, L). The cache holds, per layer, the
        self-attention keys and values (N, heads, L-1, d_k) of the earlier positions, so a step costs
        the same at every length (ESPnet's cache of layer outputs recomputes them for the whole prefix)."""
        dec, (N, L) = self.dec, ys.shape
        if (cache is None) != (L == 1):
            raise ValueError("TransformerStepper steps one position at a time from <sos>")
        A = N // self.K
        x = dec.pos_enc(dec.embed(ys[:, -1:]) if L == 1 else dec.embed(ys))[:, -1:]  # (N, 1, D)
        new_cache = []
        for i, layer in enumerate(dec.decoders):
            sa, src = layer.self_attn, layer.src_attn
            xn = layer.norm1(x)
            k, v = sa.split(xn, sa.linear_k), sa.split(xn, sa.linear_v)
            if cache is not None:
                k, v = torch.cat([cache[2 * i], k], 2), torch.cat([cache[2 * i + 1], v], 2)
            new_cache += [k, v]
            # one query over every earlier position: plain matmuls beat SDPA's kernels here on CPU
            att = (sa.split(xn, sa.linear_q) @ k.transpose(-1, -2) * sa.d_k ** -0.5).softmax(-1) @ v
            h = x + sa.linear_out(att.transpose(1, 2).reshape(N, 1, -1))
            q = src.split(layer.norm2(h), src.linear_q).view(A, self.K, src.h, src.d_k).transpose(1, 2)
            att = F.scaled_dot_product_attention(q, *self.kv[i], attn_mask=self.mask)  # (A, heads, K, d_k)
            h = h + src.linear_out(att.transpose(1, 2).reshape(N, 1, -1))
            x = h + layer.feed_forward(layer.norm3(h))
        return dec.output_layer(dec.after_norm(x[:, 0])).float().log_softmax(-1), new_cache


def make_stepper(model, enc, enc_lens, beam):
    from asrkit.nets.decoder import TransformerDecoder

    dec = getattr(model, "decoder", None)
    if isinstance(dec, TransformerDecoder) and not dec.training:
        return TransformerStepper(model, enc, enc_lens, beam)
    return GenericStepper(model, enc, enc_lens, beam)
