"""Word timings of a hypothesis, in seconds from the start of its utterance (or segment):

- `ctc_word_timings`: the CTC forced alignment of its tokens (torchaudio), for a model with a CTC head
  that learned (the light models);
- `attention_word_timings`: the decoder's own cross-attention, much as openai-whisper times words: the
  hypothesis is read again by teacher forcing, the attention probabilities of the alignment heads
  (the checkpoint's list for a Whisper decoder, generation_config.alignment_heads) are standardised
  over the tokens, median-filtered over 7 frames and averaged; dynamic time warping finds the
  monotonic path of tokens through frames that follows them most closely, and each token starts at
  the frame where its row stands out most within its stretch of that path (`onsets`). A word starts
  where its first token does and ends where the next word (or <eos>) starts.

Both give [{"word", "start", "end", "confidence"}]: for CTC the mean probability of the word's
aligned frames, for attention the mean probability the decoder gave its tokens. `clip_to_speech`
then moves word edges that lie on silence (the voice activity detector's) to the speech.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

MEDIAN_WIDTH = 7  # frames (openai-whisper's)


def ctc_word_timings(ctc_logp: torch.Tensor, token_ids: list[int], token_strs: list[str], token_type: str,
                     frame_s: float, blank: int = 0) -> list[dict] | None:
    """Words from the CTC forced alignment of the tokens to ctc_logp (T, V); None where the tokens cannot
    be aligned (an attention hypothesis longer than the CTC's frames allow: each token takes a frame, and
    a blank must part two equal neighbours)."""
    import torchaudio.functional as AF

    if not token_ids:
        return []
    if ctc_logp.size(0) < len(token_ids) + sum(a == b for a, b in zip(token_ids, token_ids[1:])):
        return None
    path, scores = AF.forced_align(ctc_logp[None].float().cpu(), torch.tensor([token_ids]), blank=blank)
    spans = AF.merge_tokens(path[0], scores[0].exp())
    return group_words(token_strs, [(s.start, s.end, s.score) for s in spans], token_type, frame_s)


@torch.no_grad()
def attention_word_timings(model, encs: list[torch.Tensor], token_ids: list[list[int]], token_strs: list[list[str]],
                           token_type: str, frame_s: float, reading: str = "onsets") -> list[list[dict]]:
    """The words of each utterance from the cross-attention of `model`'s decoder (decoder.alignment_heads)
    over its encoder output encs[i] (T, D), as it writes token_ids[i] again (the utterances together, in
    one teacher-forced pass). `reading` "path": each token starts where the path enters its row, as
    openai-whisper reads it (bench/bench_timings.py's baseline)."""
    if not encs:
        return []
    device = encs[0].device
    ys_in = torch.nn.utils.rnn.pad_sequence([torch.tensor([model.sos, *ids], device=device) for ids in token_ids],
                                            batch_first=True, padding_value=model.eos)
    ys_lens = torch.tensor([len(ids) + 1 for ids in token_ids], device=device)
    enc_lens = torch.tensor([e.size(0) for e in encs], device=device)
    memory = torch.nn.utils.rnn.pad_sequence(encs, batch_first=True)
    logits, att = model.decoder.cross_attention(ys_in, ys_lens, memory, enc_lens)
    heads = torch.stack([att[:, layer, head] for layer, head in model.decoder.alignment_heads], 1).float().cpu()
    out = []
    for i, (ids, strs) in enumerate(zip(token_ids, token_strs)):
        if not ids:
            out.append([])
            continue
        mine = heads[i, :, : len(ids) + 1, : int(enc_lens[i])]  # (H, N+1, T): the tokens, then <eos>
        std, mean = torch.std_mean(mine, dim=-2, keepdim=True, unbiased=False)
        weights = median_filter((mine - mean) / (std + 1e-6), MEDIAN_WIDTH).mean(0).numpy()
        starts = onsets(weights) if reading == "onsets" else path_entries(weights)
        probs = logits[i, : len(ids)].float().softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)].cpu().tolist()
        spans = [(int(starts[k]), int(max(starts[k + 1], starts[k] + 1)), p) for k, p in enumerate(probs)]
        out.append(group_words(strs, spans, token_type, frame_s))
    return out


def onsets(weights: np.ndarray) -> np.ndarray:
    """The frame each row of weights (tokens, frames: attention standardised over the tokens) starts at.
    Dynamic time warping gives the monotonic path through the rows that follows the weights most
    closely; it passes from one row to the next about midway between the frames they stand out at,
    while the alignment heads stand out at a word's onset (measured: starts 0.27 s off at the path's
    changes; docs/GUIDE.md#word-timings), so each row starts where it stands out most between the path's
    entries into the rows before and after it."""
    entry = np.append(path_entries(weights), weights.shape[1])
    out: list[int] = []
    for k, row in enumerate(weights):
        lo = max(entry[k - 1] if k else 0, out[-1] if out else 0)
        hi = max(entry[k + 1], lo + 1)
        out.append(lo + int(np.argmax(row[lo:hi])))
    return np.array(out)


def path_entries(weights: np.ndarray) -> np.ndarray:
    """The frame at which the dynamic time warping path through weights (tokens, frames) enters each row."""
    rows, frames = dtw(-weights.astype(np.float64))
    return frames[np.searchsorted(rows, np.arange(len(weights)))]


def clip_to_speech(words: list[dict], probs: np.ndarray | None, chunk_s: float, threshold: float = 0.5) -> list[dict]:
    """Words off the silence at their edges: a word's start moves on to its first chunk of speech (speech
    probability `probs` over `threshold`, chunks of chunk_s seconds), its end back to the end of its last;
    a word without a chunk of speech (or a timing of None) stays as it is."""
    if probs is None or not len(probs):
        return words
    speech = np.flatnonzero(np.asarray(probs) > threshold)
    out = []
    for w in words:
        if w.get("start") is None:
            out.append(w)
            continue
        lo, hi = np.searchsorted(speech, [int(w["start"] / chunk_s), int(np.ceil(w["end"] / chunk_s))])
        inside = speech[lo:hi]  # the speech chunks that overlap the word
        if len(inside):
            w = {**w, "start": round(max(w["start"], float(inside[0] * chunk_s)), 3),
                 "end": round(min(w["end"], float((inside[-1] + 1) * chunk_s)), 3)}
        out.append(w)
    return out


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """The median of each value's `width` neighbours along the last axis (edges reflected)."""
    if x.size(-1) <= width // 2:
        return x
    padded = F.pad(x.reshape(-1, 1, x.size(-1)), (width // 2, width // 2), mode="reflect")
    return padded.unfold(-1, width, 1).median(-1).values.reshape(x.shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The path of least total cost through cost (N, T) from its first cell to its last, each step going
    one row down, one frame on, or both: (rows, frames), the path's cells in order.

    Row by row: with b_j the best of the two cells above, acc[i, j] = cost[i, j] + min(b_j, acc[i, j-1])
    unrolls into prefix sums S of the row's costs, acc[i, j] = S_j + min over k <= j of (b_k - S_{k-1}),
    a running minimum: numpy does each row at once."""
    n, t = cost.shape
    acc = np.full((n + 1, t + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        above = np.minimum(acc[i - 1, :-1], acc[i - 1, 1:])  # b_1..b_T: from the diagonal or straight above
        sums = np.cumsum(cost[i - 1])
        acc[i, 1:] = sums + np.minimum.accumulate(above - np.concatenate([[0.0], sums[:-1]]))
    i, j, path = n, t, []
    while i > 0 and j > 0:  # back from the last cell, always to the cheapest of the three before
        path.append((i - 1, j - 1))
        step = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, frames = np.array(path[::-1]).T
    return rows, frames


def group_words(token_strs: list[str], spans: list[tuple[int, int, float]], token_type: str,
                frame_s: float) -> list[dict]:
    """Tokens with their (start frame, end frame, probability) grouped into words: a new word at each
    piece marked as one (▁ sentencepiece, Ġ byte-level BPE), each word token, or after <space> (char)."""
    mark = {"bpe": "\u2581", "whisper": "\u0120"}.get(token_type)
    words: list[dict | None] = []
    for tok, (start, end, p) in zip(token_strs, spans):
        if token_type == "char" and tok == "<space>":
            words.append(None)  # a boundary, dropped below
            continue
        piece = tok.lstrip(mark) if mark else tok
        if token_type == "word" or not words or words[-1] is None or bool(mark and tok.startswith(mark)):
            words.append({"word": "", "start": None, "_p": []})
        w = words[-1]
        if piece and w["start"] is None:  # (a bare word mark, Ġ, is the space before a word: not part of it)
            w["start"] = start
        w["word"] += piece
        w["end"] = end
        w["_p"].append(p)
    out = []
    for w in words:
        if w is None or w["start"] is None:
            continue
        p = w.pop("_p")
        text = _bytes_text(w["word"]) if token_type == "whisper" else w["word"]
        out.append({"word": text, "start": round(w["start"] * frame_s, 3), "end": round(w["end"] * frame_s, 3),
                    "confidence": round(float(np.mean(p)), 4)})
    return out


def _bytes_text(pieces: str) -> str:
    """Byte-level BPE characters (GPT-2's one character per byte) as the text they spell."""
    byte_of = _byte_table()
    return bytes(byte_of[c] for c in pieces if c in byte_of).decode("utf-8", errors="replace")


@functools.cache
def _byte_table() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}
