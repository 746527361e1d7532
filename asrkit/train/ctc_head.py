"""The CTC head fitted after training, on the trained model's encoder output (--ctc_head_epochs).

A new linear CTC head beside a pretrained encoder and decoder (Whisper's) learns far more slowly than
the few updates that fine-tune them: on so762 its validation CER was still 0.8 after 148 updates
(docs/PERFORMANCE.md). With `model_conf.ctc_detach` the encoder never learns from the head, so the
head can learn after the rest: the averaged model's encoder output for every training utterance is
computed once and kept in memory (float16, frames x dim x 2 bytes: 0.2 GB for so762's 0.8 h), the
head alone trains on it for ctc_head_epochs epochs (Adam at ctc_head_lr, batches of batch_bins
frames), and the head of the epoch with the lowest greedy validation CER (the one trained with the
model included, as epoch 0) replaces the head in model.avg.safetensors. Each epoch is logged and
recorded in train_log.jsonl (kind ctc_head).
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from torch.nn.utils.rnn import pad_sequence

from asrkit import model_io
from asrkit.data import SpeechDataset, collate, make_batches
from asrkit.decode.ctc import ctc_greedy_search
from asrkit.nets import IGNORE_ID

log = logging.getLogger(__name__)


def char_edits(model, logp: torch.Tensor, enc_lens: torch.Tensor, ys: torch.Tensor, ys_lens: torch.Tensor,
               tokenizer) -> tuple[int, int]:
    """(character edits, reference characters) of the greedy CTC path of logp (B, T, V) against ys."""
    edits = chars = 0
    for (hyp, _), y, n in zip(ctc_greedy_search(logp, enc_lens, model.blank), ys, ys_lens):
        ref = tokenizer.decode(y[:n].tolist())
        edits += AF.edit_distance(list(ref), list(tokenizer.decode(hyp)))
        chars += len(ref)
    return edits, chars


@torch.no_grad()
def encoder_outputs(model, dataset: SpeechDataset, batch_bins: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(encoder output (T', D) in float16 on the CPU, token ids) of each readable utterance, in eval mode."""
    model.eval()
    out = []
    for batch in make_batches(dataset.lengths, batch_bins):
        b = collate([dataset[i] for i in batch])
        if b is None:
            continue
        enc, lens = model.encode(b["feats"].to(device), b["feat_lens"].to(device))
        out += [(e[:n].to("cpu", torch.float16), y[:m].clone())
                for e, n, y, m in zip(enc, lens.tolist(), b["ys"], b["ys_lens"].tolist())]
    return out


def pad(items: list[tuple[torch.Tensor, torch.Tensor]], device):
    """enc (B, T, D) float32, enc_lens, ys (B, U) padded with IGNORE_ID, ys_lens."""
    enc = pad_sequence([e for e, _ in items], batch_first=True).to(device, torch.float32)
    ys = pad_sequence([y for _, y in items], batch_first=True, padding_value=IGNORE_ID).to(device)
    enc_lens = torch.tensor([len(e) for e, _ in items], device=device)
    ys_lens = torch.tensor([len(y) for _, y in items], device=device)
    return enc, enc_lens, ys, ys_lens


def valid_cer(model, items, batch_bins: int, tokenizer, device) -> float:
    edits = chars = 0
    model.eval()
    with torch.no_grad():
        for batch in make_batches([len(e) for e, _ in items], batch_bins):
            enc, enc_lens, ys, ys_lens = pad([items[i] for i in batch], device)
            e, c = char_edits(model, model.ctc_log_probs(enc), enc_lens, ys, ys_lens, tokenizer)
            edits, chars = edits + e, chars + c
    return edits / max(chars, 1)


def fit_ctc_head(model, train_set: SpeechDataset, valid_set: SpeechDataset, tokenizer, exp_dir: str | Path,
                 epochs: int, lr: float, batch_bins: int, seed: int, device, reporter=None) -> float:
    """Fit model's CTC head on the encoder output of model.avg's weights and write it there; returns
    the head's validation CER."""
    path = Path(exp_dir) / model_io.AVERAGE
    model.load_state_dict(model_io.model_state(path))
    t0 = time.time()
    train, valid = (encoder_outputs(model, ds, batch_bins, device) for ds in (train_set, valid_set))
    log.info("CTC head: the encoder output of %d training and %d validation utterances (%.2f GB) in %.0fs",
             len(train), len(valid), sum(e.numel() * 2 for e, _ in train) / 1e9, time.time() - t0)
    best_cer, best = valid_cer(model, valid, batch_bins, tokenizer, device), copy.deepcopy(model.ctc.state_dict())
    log.info("CTC head: epoch 0 (trained with the model): valid cer %.4f", best_cer)
    if reporter is not None:
        reporter.record("ctc_head", 0, epoch=0, valid_cer=best_cer)
    optimizer = torch.optim.Adam(model.ctc.parameters(), lr=lr)
    batches = make_batches([len(e) for e, _ in train], batch_bins)
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        t0, total, n = time.time(), 0.0, 0
        model.ctc_dropout.train()
        for i in rng.permutation(len(batches)):
            enc, enc_lens, ys, ys_lens = pad([train[j] for j in batches[i]], device)
            loss = model.ctc_loss(enc, enc_lens, ys, ys_lens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + float(loss.detach()) * len(batches[i]), n + len(batches[i])
        cer = valid_cer(model, valid, batch_bins, tokenizer, device)
        log.info("CTC head: epoch %d: train loss %.4f | valid cer %.4f | %.1fs", epoch, total / n, cer, time.time() - t0)
        if reporter is not None:
            reporter.record("ctc_head", epoch, epoch=epoch, train_loss=total / n, valid_cer=cer)
        if cer < best_cer:
            best_cer, best = cer, copy.deepcopy(model.ctc.state_dict())
    model.ctc.load_state_dict(best)
    state = model_io.model_state(path)
    state.update({f"ctc.{k}": v for k, v in best.items()})
    model_io.save_weights(state, path)
    log.info("CTC head: the head of validation CER %.4f written into %s", best_cer, path)
    return best_cer
