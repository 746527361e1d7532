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
from asrkit.tokenizer import WHISPER_OFFSET


class DecoderState(NamedTuple):
    """What a search keeps between decoder steps: per layer, the cross-attention memory of each
    utterance and the self-attention cache of each row (rows_per_utt consecutive rows an utterance)."""
    memory: tuple[MemoryKV, ...]
    cache: tuple[KVCache, ...]
    length: int = 0  # positions decoded so far

    def at_rows(self, live: torch.Tensor | None) -> DecoderState:
        """The next step computes the rows `live` (M,) of the utterances x rows_per_utt (all when
        None): those of the search's live hypotheses."""
        return self._replace(memory=tuple(m._replace(live=live) for m in self.memory))

    def select(self, index: torch.Tensor) -> DecoderState:
        """Row r continues row index[r] (beam reordering; rows of finished utterances left out)."""
        return self._replace(cache=tuple(c.select(index) for c in self.cache))

    def keep(self, utts: torch.Tensor) -> DecoderState:
        """Only these utterances (indices into the current ones) go on."""
        return self._replace(memory=tuple(m.select(utts) for m in self.memory))


class FeedForward(nn.Sequential):
    """Linear -> ReLU (or GELU) -> dropout -> Linear. An nn.Sequential for its parameter names (0.*, 3.*,
    those of saved models); forward skips the per-module calls, which cost as much as the math at a step."""

    def __init__(self, dim: int, hidden: int, dropout_rate: float, activation: str = "relu"):
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be relu or gelu, not {activation!r}")
        super().__init__(nn.Linear(dim, hidden), nn.ReLU() if activation == "relu" else nn.GELU(),
                         nn.Dropout(dropout_rate), nn.Linear(hidden, dim))
        self.gelu = activation == "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, _, dropout, w2 = self
        h = F.linear(x, w1.weight, w1.bias)
        h = F.gelu(h) if self.gelu else h.relu_()
        return F.linear(dropout(h) if self.training else h, w2.weight, w2.bias)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, linear_units: int, dropout_rate: float,
                 self_attention_dropout_rate: float, src_attention_dropout_rate: float, activation: str = "relu"):
        super().__init__()
        self.self_attn = SelfAttention(heads, dim, self_attention_dropout_rate)
        self.src_attn = CrossAttention(heads, dim, src_attention_dropout_rate)
        self.feed_forward = FeedForward(dim, linear_units, dropout_rate, activation)
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
                 src_attention_dropout_rate: float = 0.0, attention_dim: int | None = None,
                 activation: str = "relu"):
        super().__init__()
        dim = attention_dim or encoder_output_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_enc = PositionalEncoding(dim, positional_dropout_rate)
        self.memory_proj = nn.Linear(encoder_output_size, dim) if dim != encoder_output_size else None
        self.decoders = nn.ModuleList(
            DecoderLayer(dim, attention_heads, linear_units, dropout_rate, self_attention_dropout_rate,
                         src_attention_dropout_rate, activation) for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(dim)
        self.output_layer = nn.Linear(dim, vocab_size)
        # (layer, head) of the cross-attentions that follow the audio, for word timings (asrkit/timing.py):
        # without a list of them, every head of the upper half of the layers (openai-whisper's default)
        self.alignment_heads = tuple((i, h) for i in range(num_blocks // 2, num_blocks) for h in range(attention_heads))

    def memories(self, memory, memory_lens, rows_per_utt: int | None = None) -> tuple[MemoryKV, ...]:
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)
        return tuple(layer.src_attn.memory(memory, memory_lens, rows_per_utt) for layer in self.decoders)

    def embed_tokens(self, ys: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """ys (B, L) at positions offset .. offset+L-1 -> the first layer's input (B, L, D)."""
        return self.pos_enc(self.embed(ys), offset)

    def forward(self, ys_in, ys_lens, memory, memory_lens) -> torch.Tensor:
        """Teacher forcing: logits (B, L, V) of the token after each prefix."""
        return self.forward_embedded(self.embed_tokens(ys_in), ys_lens, memory, memory_lens)

    def forward_embedded(self, x, lens, memory, memory_lens) -> torch.Tensor:
        length = x.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        tgt_mask = causal[None] & length_mask(lens, length)[:, None, :]
        for layer, mem in zip(self.decoders, self.memories(memory, memory_lens)):
            x, _ = layer(x, tgt_mask, mem)
        return self.output_layer(self.after_norm(x))

    @torch.no_grad()
    def cross_attention(self, ys_in, ys_lens, memory, memory_lens) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing that keeps the attention probabilities of each layer's cross-attention:
        (logits (B, L, V), probabilities (B, layers, heads, L, T)), row i being where the decoder
        looked to write the token after ys_in[:, :i+1]."""
        kept = []

        def keep(att, args, _):
            x, mem = args
            scores = att.split(x, att.linear_q) @ mem.keys.transpose(-1, -2) * att.d_k ** -0.5
            kept.append((scores + mem.mask).softmax(-1))

        hooks = [layer.src_attn.register_forward_hook(keep) for layer in self.decoders]
        try:
            logits = self(ys_in, ys_lens, memory, memory_lens)
        finally:
            for hook in hooks:
                hook.remove()
        return logits, torch.stack(kept, 1)[..., -logits.size(1):, :]  # (a prompt's rows left out)

    def init_state(self, memory, memory_lens, rows_per_utt: int, merge_every: int = 16) -> DecoderState:
        """The state before the first step of a search with rows_per_utt rows per utterance."""
        if self.training:
            raise ValueError("decoding steps run in eval mode (no dropout): call model.eval() first")
        return DecoderState(self.memories(memory, memory_lens, rows_per_utt),
                            tuple(layer.self_attn.empty_cache(merge_every) for layer in self.decoders))

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Logits (M, V) of the token after each row's prefix, given its newest token (M,), for the
        M rows the state is at (DecoderState.at_rows), and the next state, whose caches hold these M
        rows (DecoderState.select)."""
        return self.step_embedded(self.embed_tokens(tokens[:, None], state.length)[:, 0], state)

    def step_embedded(self, x: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """step() on the first layer's input x (M, D) of the newest position."""
        caches = []
        for layer, mem, cache in zip(self.decoders, state.memory, state.cache):
            x, cache = layer(x, None, mem, cache)
            caches.append(cache)
        return self.output_layer(self.after_norm(x)), DecoderState(state.memory, tuple(caches), state.length + 1)


class WhisperDecoder(TransformerDecoder):
    """The decoder of a pretrained Whisper checkpoint, fine-tuned on its encoder's stored states.

    The same layers as TransformerDecoder (pre-norm, GELU), loaded with the checkpoint's weights: learned
    positions instead of sinusoids, the output layer tied to the token embedding, and Whisper's prompt
    (<|startoftranscript|><|en|><|transcribe|><|notimestamps|>; for an English-only model *.en
    <|startoftranscript|><|notimestamps|>) in front of every sequence, its last
    token in <sos>'s place. The tokens are the checkpoint's own (token_type whisper: our id = Whisper's
    + 2, <sos/eos> = <|endoftext|>, asrkit.tokenizer), so the decoder starts as Whisper's: on the
    encoder's states of the whole 30 s window it gives Whisper's own hypotheses (tested). The weights
    come from the checkpoint `ssl_model` (the one whose encoder made the features) when the model is
    built to train; a trained model is built with `pretrained` False, from the checkpoint's config alone,
    and its own weights are loaded (model_io.load_model: a model dir needs the checkpoint, as stage 1
    and transcribe do). `freeze_embed`: the token embedding (tied to the output layer: 26 M of Whisper-base's
    parameters) keeps Whisper's weights, and only the layers learn from a small corpus.
    """

    def __init__(self, vocab_size: int, encoder_output_size: int, ssl_model: str | None = None, language: str = "en",
                 dropout_rate: float = 0.1, self_attention_dropout_rate: float = 0.0,
                 src_attention_dropout_rate: float = 0.0, freeze_embed: bool = False, pretrained: bool = True):
        from asrkit.ssl import load_whisper

        if not ssl_model:
            raise ValueError("decoder whisper needs the Whisper checkpoint whose encoder made the features")
        hf = load_whisper(str(ssl_model), weights=pretrained)  # (pretrained False: shapes alone, see ssl.from_pretrained)
        c, dec, gen = hf.config, hf.model.decoder, hf.generation_config
        text_tokens = c.eos_token_id  # Whisper's ids below <|endoftext|>
        if vocab_size != text_tokens + WHISPER_OFFSET + 1:
            raise ValueError(f"the token list has {vocab_size} tokens, the Whisper checkpoint {text_tokens} text "
                             f"tokens: make the token list with --token_type whisper from the same checkpoint")
        prompt = [c.decoder_start_token_id, gen.no_timestamps_token_id]  # as generate() builds it
        if getattr(gen, "is_multilingual", True):  # *.en: no language or task tokens
            lang, task = (getattr(gen, "lang_to_id", None) or {}).get(f"<|{language}|>"), \
                (getattr(gen, "task_to_id", None) or {}).get("transcribe")
            if lang is None or task is None:
                raise ValueError(f"the checkpoint's generation_config.json has no language <|{language}|> "
                                 f"(lang_to_id) or no transcribe task (task_to_id)")
            prompt[1:1] = [lang, task]
        elif language != "en":
            raise ValueError(f"{ssl_model} is an English-only Whisper: it has no language {language!r}")
        if None in prompt:
            raise ValueError("the checkpoint's config names no decoder_start_token_id or its generation_config.json "
                             "no no_timestamps_token_id")
        super().__init__(vocab_size, encoder_output_size, c.decoder_attention_heads, c.decoder_ffn_dim,
                         c.decoder_layers, dropout_rate, 0.0, self_attention_dropout_rate,
                         src_attention_dropout_rate, attention_dim=c.d_model, activation="gelu")
        del self.pos_enc
        self.dropout = nn.Dropout(dropout_rate)
        table = dec.embed_tokens.weight.detach()
        with torch.no_grad():
            self.embed.weight.zero_()[WHISPER_OFFSET:] = table[: text_tokens + 1]  # <blank>, <unk>: zeros
            self.output_layer.weight = self.embed.weight  # tied, as Whisper's
            self.output_layer.bias.zero_()[:WHISPER_OFFSET] = -1e4  # <blank> and <unk> are never emitted
        self.output_layer.bias.requires_grad_(False)
        self.embed.weight.requires_grad_(not freeze_embed)
        self.positions = nn.Parameter(dec.embed_positions.weight.detach().clone())
        self.prompt = nn.Parameter(table[prompt].clone())
        self.max_tokens = self.positions.size(0) - len(prompt)  # hypothesis tokens that fit, with <eos>
        if heads := getattr(hf.generation_config, "alignment_heads", None):  # the checkpoint's own list
            self.alignment_heads = tuple((int(i), int(h)) for i, h in heads)
        pairs = [(self.after_norm, dec.layer_norm)]
        for ours, theirs in zip(self.decoders, dec.layers):
            pairs += [(ours.norm1, theirs.self_attn_layer_norm), (ours.norm2, theirs.encoder_attn_layer_norm),
                      (ours.norm3, theirs.final_layer_norm), (ours.feed_forward[0], theirs.fc1),
                      (ours.feed_forward[3], theirs.fc2)]
            for att, hf_att in ((ours.self_attn, theirs.self_attn), (ours.src_attn, theirs.encoder_attn)):
                pairs += [(att.linear_q, hf_att.q_proj), (att.linear_k, hf_att.k_proj),
                          (att.linear_v, hf_att.v_proj), (att.linear_out, hf_att.out_proj)]
        with torch.no_grad():
            for ours, theirs in pairs:
                ours.weight.copy_(theirs.weight)
                ours.bias.copy_(theirs.bias if theirs.bias is not None else torch.zeros_like(ours.bias))

    def embed_tokens(self, ys: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """ys at positions offset.. after the prompt's first tokens; <sos> (first) is the prompt's last."""
        start = offset + self.prompt.size(0) - 1
        if start + ys.size(1) > self.positions.size(0):
            raise ValueError(f"{offset + ys.size(1)} tokens do not fit in the Whisper decoder's "
                             f"{self.positions.size(0)} positions (with its prompt): cut the audio shorter")
        x = self.embed(ys)
        if offset == 0:
            x = torch.cat([self.prompt[-1].expand(x.size(0), 1, -1), x[:, 1:]], 1)
        return self.dropout(x + self.positions[start: start + ys.size(1)])

    def prefix(self, rows: int) -> torch.Tensor:
        """The prompt's tokens before <sos>'s place, with their positions: (rows, P-1, D)."""
        n = self.prompt.size(0) - 1
        return self.dropout(self.prompt[:n] + self.positions[:n]).expand(rows, -1, -1)

    def forward(self, ys_in, ys_lens, memory, memory_lens) -> torch.Tensor:
        n = self.prompt.size(0) - 1
        x = torch.cat([self.prefix(ys_in.size(0)), self.embed_tokens(ys_in)], 1)
        return self.forward_embedded(x, ys_lens + n, memory, memory_lens)[:, n:]

    def step(self, tokens, state):
        if state.length == 0:  # the prompt first, then <sos>'s place
            for x in self.prefix(tokens.size(0)).unbind(1):
                _, state = self.step_embedded(x, state)
            state = state._replace(length=0)
        return super().step(tokens, state)
