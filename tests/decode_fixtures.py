"""A tiny random-weight CTC/attention model with the decoding interface of asrkit.nets (see
docs/INTERNALS.md), small enough for brute-force checks: GRU decoder with a reorderable state,
attention over the encoder output masked by its lengths."""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import nn


class TinyState(NamedTuple):
    """The GRU's hidden state per row (None before the first step), the memory per utterance."""
    h: torch.Tensor | None
    memory: torch.Tensor
    memory_lens: torch.Tensor
    rows_per_utt: int
    live: torch.Tensor | None = None

    def at_rows(self, live):
        return self._replace(live=live)

    def select(self, index):
        return self if self.h is None else self._replace(h=self.h.index_select(0, index))

    def keep(self, utts):
        return self._replace(memory=self.memory[utts], memory_lens=self.memory_lens[utts])


class TinyASR(nn.Module):
    def __init__(self, vocab_size: int = 6, dim: int = 8, input_dim: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab_size, self.blank, self.sos, self.eos, self.ignore_id = vocab_size, 0, vocab_size - 1, vocab_size - 1, -1
        self.enc = nn.Linear(input_dim, dim)
        self.ctc = nn.Linear(dim, vocab_size)
        self.emb = nn.Embedding(vocab_size, dim)
        self.rnn = nn.GRUCell(dim, dim)
        self.out = nn.Linear(2 * dim, vocab_size)
        for p in self.parameters():  # peaky enough that searches differ, flat enough that many paths count
            nn.init.normal_(p, std=1.0)

    def encode(self, feats, feat_lens):
        return torch.tanh(self.enc(feats)), feat_lens

    def ctc_log_probs(self, enc):
        return self.ctc(enc).log_softmax(-1)

    def _attend(self, h, memory, memory_lens):
        att = torch.einsum("nd,ntd->nt", h, memory)
        mask = torch.arange(memory.size(1), device=memory.device)[None] >= memory_lens[:, None]
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return torch.einsum("nt,ntd->nd", att, memory)

    def _out(self, h, memory, memory_lens):
        return self.out(torch.cat([h, self._attend(h, memory, memory_lens)], -1)).log_softmax(-1)

    def decoder_init(self, enc, enc_lens, rows_per_utt):
        return TinyState(None, enc, enc_lens, rows_per_utt)

    def decoder_step(self, tokens, state):
        rows = torch.arange(len(tokens)) if state.live is None else state.live
        utt = rows // state.rows_per_utt
        h = torch.zeros(len(tokens), self.rnn.hidden_size) if state.h is None else state.h
        h = self.rnn(self.emb(tokens), h)
        return self._out(h, state.memory[utt], state.memory_lens[utt]), state._replace(h=h)

    def decoder_forward(self, ys_in, ys_lens, memory, memory_lens):
        h = torch.zeros(ys_in.size(0), self.rnn.hidden_size, device=ys_in.device)
        out = []
        for t in range(ys_in.size(1)):
            h = self.rnn(self.emb(ys_in[:, t]), h)
            out.append(self._out(h, memory, memory_lens))
        return torch.stack(out, 1)


def random_batch(lengths, input_dim: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), input_dim, generator=g)
    lens = torch.tensor(lengths)
    for b, n in enumerate(lengths):
        feats[b, n:] = 0.0
    return feats, lens


def make_exp_dir(root, n_test: int = 7, seed: int = 0, epochs: int = 0, ctc_only: bool = False):
    """An experiment dir with a tiny random-weight model of asrkit.nets (as stage 3 leaves it), and a
    test split with its feature store: (exp_dir, data, feats, tokenizer)."""
    from pathlib import Path

    import yaml

    from asrkit.model_io import build_from_config, save_exp_files, save_weights
    from asrkit.tokenizer import Tokenizer
    from train_fixtures import ATTRS, DIM, make_experiment, write_split

    root = Path(root)
    paths = make_experiment(root, n_train=8, n_valid=2)
    data, feats = write_split(root, "test", n_test, seed=3)
    tok = Tokenizer.load(paths["token_dir"])
    config = {**yaml.safe_load(paths["config"].read_text()), "input_dim": DIM, "input_layers": 1,
              "vocab_size": tok.vocab_size, "best_model_criterion": "acc"}
    if ctc_only:
        config["model_conf"] = {**config["model_conf"], "ctc_weight": 1.0}
    exp = root / "exp" / "tiny"
    save_exp_files(exp, config, paths["token_dir"], ATTRS)
    torch.manual_seed(seed)
    save_weights(build_from_config(config, ATTRS).state_dict(), exp / "model.avg.safetensors")
    for e in range(1, epochs + 1):
        torch.manual_seed(seed + e)
        save_weights(build_from_config(config, ATTRS).state_dict(), exp / f"epoch{e}.safetensors")
    return exp, data, feats, tok


def assert_same_hyps(a: dict[str, dict], b: dict[str, dict], tol: float = 1e-4) -> None:
    """Two decodings' hyp.jsonl records (by utterance) agree: the same utterances, texts and tokens
    of every n-best entry exactly, the scores to `tol`. Scores are sums of float kernels whose rounding
    depends on the batch's shape and the CPU (AVX-512 rounds otherwise than AVX2): never compare them
    exactly across batch sizes or process counts."""
    assert sorted(a) == sorted(b)
    for utt, r in a.items():
        s = b[utt]
        assert [(h["text"], h["token_ids"]) for h in r["nbest"]] == [(h["text"], h["token_ids"]) for h in s["nbest"]], utt
        assert (r["text"], r["token_ids"]) == (s["text"], s["token_ids"]), utt
        for x, y in zip([r, *r["nbest"]], [s, *s["nbest"]]):
            for key in ("score", "att", "ctc"):
                if x.get(key) is not None or y.get(key) is not None:
                    assert x[key] == pytest.approx(y[key], abs=tol), (utt, key)
