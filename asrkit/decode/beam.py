"""Joint CTC/attention beam search, batched over utterances and beams together.

Score of a hypothesis = sum over its tokens of
    (1 - ctc_weight) * log p_att(token | prefix) + ctc_weight * (psi(prefix + token) - psi(prefix)) + length_bonus
where psi is the CTC prefix score (so the CTC part telescopes to log p_ctc of the whole prefix), as in
ESPnet's BatchBeamSearch with CTCPrefixScorer. ESPnet batches the hypotheses of one utterance; here the
rows are (utterance, beam slot) pairs for every utterance of the batch. Finished utterances leave the
batch, and a finished hypothesis frees its slot (its score becomes -inf).

Differences from ESPnet, all at the edges: the decoder never proposes <blank> (nor <sos> when it differs
from <eos>); at the length limit <eos> is scored rather than appended unscored; if no hypothesis of an
utterance can end (every candidate impossible), its best unfinished one is returned instead of nothing.
On ordinary inputs both give the same hypotheses and scores (bench/bench_decode.py checks it).

The model needs `decoder_init` and `decoder_step` (see decode/stepper.py), `ctc_log_probs`, and `sos`,
`eos`, `blank`, `vocab_size` (see docs/INTERNALS.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from asrkit.decode.ctc import NEG_INF, CTCPrefixScorer
from asrkit.decode.stepper import Stepper

log = logging.getLogger(__name__)


@dataclass
class Hyp:
    tokens: list[int]
    score: float
    att: float = 0.0  # sum of decoder log-probs
    ctc: float = 0.0  # CTC prefix (or full) log-prob

    def asdict(self) -> dict:
        return {"tokens": self.tokens, "score": self.score, "att": self.att, "ctc": self.ctc}


def option(default, help: str):
    """A search option: its default and --help text, defined here once for the API and the commands."""
    return field(default=default, metadata={"help": help})


@dataclass
class SearchOptions:
    beam: int = option(10, "beam size")
    ctc_weight: float = option(0.3, "weight of the CTC prefix score (joint, attention_rescoring)")
    length_bonus: float = option(0.0, "score added per token (ESPnet's penalty)")
    maxlenratio: float = option(0.0, "max tokens = ratio x encoder frames; 0: encoder frames, with end "
                                     "detection; <0: -ratio tokens")
    minlenratio: float = option(0.0, "min tokens = ratio x encoder frames")
    pre_beam_ratio: float = option(1.5, "CTC scores the decoder's best pre_beam_ratio x beam tokens")
    nbest: int = option(1, "hypotheses kept per utterance")


class Beams(NamedTuple):
    """The hypotheses of the utterances still searching: prefixes ys (A*K, L) from <sos>, scores
    (A, K), summed decoder log-probs att (A*K,) and CTC prefix scores ctc (A*K,) (None without CTC)."""
    ys: torch.Tensor
    scores: torch.Tensor
    att: torch.Tensor
    ctc: torch.Tensor | None

    def best(self, a: int) -> Hyp:
        """The best hypothesis of utterance a, as it is (unfinished)."""
        k = int(self.scores[a].argmax())
        r = a * self.scores.size(1) + k
        return Hyp(self.ys[r, 1:].tolist(), float(self.scores[a, k]), float(self.att[r]),
                   0.0 if self.ctc is None else float(self.ctc[r]))


def length_limits(enc_lens: torch.Tensor, opts: SearchOptions,
                  cap: int | None = None) -> tuple[list[int], list[int]]:
    """Per utterance: the step at which eos is forced (maxlen, at most `cap`: the tokens the decoder
    has positions for) and the first step eos is allowed (minlen)."""
    lens = enc_lens.tolist()
    if opts.maxlenratio < 0:
        maxlen = [int(-opts.maxlenratio)] * len(lens)
    elif opts.maxlenratio == 0:
        maxlen = lens
    else:
        maxlen = [max(1, int(opts.maxlenratio * n)) for n in lens]
    if cap is not None:
        maxlen = [min(m, cap) for m in maxlen]
    return maxlen, [int(opts.minlenratio * n) for n in lens]


def end_detect(ended: list[Hyp], step: int, m: int = 3, d_end: float = -10.0) -> bool:
    """ESPnet's end detection: the best hypotheses that ended in each of the last `m` steps are all
    worse than the best ended one by more than exp(d_end)."""
    if not ended:
        return False
    best = max(h.score for h in ended)
    for k in range(m):
        length = step - k  # ESPnet counts sos and eos: len(yseq) = len(tokens) + 2
        same = [h.score for h in ended if len(h.tokens) + 2 == length]
        if not same or max(same) - best >= d_end:
            return False
    return True


@torch.inference_mode()
def beam_search(model, enc: torch.Tensor, enc_lens: torch.Tensor, opts: SearchOptions,
                ctc_logp: torch.Tensor | None = None, stop_when_decided: bool = True) -> list[list[Hyp]]:
    """Joint (0 < ctc_weight < 1), attention-only (0) or CTC-prefix-only (1) beam search of a batch.

    enc (B, T, D), enc_lens (B,): encoder output. Returns for each utterance its n-best, best first.
    stop_when_decided: an utterance stops as soon as its n-best is settled, i.e. it has n ended
    hypotheses that score above every live one. Exact when length_bonus <= 0: both parts of a score
    only go down as a hypothesis grows (decoder log-probs are <= 0, and the CTC probability of a
    prefix bounds that of its extensions), so no live hypothesis can overtake them. The result is
    the same as without it; only the wasted steps at the end are saved."""
    B, device, V, K = enc.size(0), enc.device, model.vocab_size, opts.beam
    sos, eos, blank, w = model.sos, model.eos, model.blank, opts.ctc_weight
    use_ctc, use_att = w > 0, w < 1
    maxlen, minlen = length_limits(enc_lens, opts, getattr(model, "max_tokens", None) if use_att else None)
    maxlen_t, minlen_t = torch.tensor(maxlen, device=device), torch.tensor(minlen, device=device)
    C = V if not use_att else min(V, max(K, int(opts.pre_beam_ratio * K)))
    ctc = None
    if use_ctc:
        ctc = CTCPrefixScorer(model.ctc_log_probs(enc) if ctc_logp is None else ctc_logp, enc_lens, blank, eos)

    active = torch.arange(B, device=device)  # utterances still searching
    row_utt = active.repeat_interleave(K)  # utterance of each row
    stepper = Stepper(model, enc, enc_lens, K) if use_att else None
    ys = torch.full((B * K, 1), sos, dtype=torch.long, device=device)
    scores = torch.full((B, K), NEG_INF, device=device)
    scores[:, 0] = 0.0  # one live hypothesis per utterance at the start
    att_sum = torch.zeros(B * K, device=device)
    state = ctc.init_state(row_utt) if use_ctc else None
    ended: list[list[Hyp]] = [[] for _ in range(B)]

    for step in range(max(maxlen) + 1):
        A, N = active.numel(), active.numel() * K
        if use_att:  # the decoder runs on live rows only (dead ones: K-1 empty slots at the start, finished)
            live = torch.isfinite(scores).view(-1)
            if bool(live.all()):
                att = stepper.step(ys)
            else:
                live = live.nonzero().squeeze(1)
                att = torch.zeros(N, V, device=device).index_copy_(0, live, stepper.step(ys, live).float())
            full = (1 - w) * att.float()
        else:
            full = torch.zeros(N, V, device=device)
        full[:, blank] = NEG_INF
        if sos != eos:
            full[:, sos] = NEG_INF
        row_maxlen, row_minlen = maxlen_t[row_utt], minlen_t[row_utt]
        full[step < row_minlen, eos] = NEG_INF
        forced = step >= row_maxlen
        if forced.any():  # last step: only eos
            eos_score = full[forced, eos]
            full[forced] = NEG_INF
            full[forced, eos] = eos_score
        if C < V:  # pre-beam; as in ESPnet, eos is always a candidate (an extra column unless in the top C)
            cand = full.topk(C, dim=1).indices
            has_eos = (cand == eos).any(1, keepdim=True)
            cand = torch.cat([cand, torch.full_like(cand[:, :1], eos)], dim=1)
            cand_score = full.gather(1, cand)
            cand_score[:, -1:] = cand_score[:, -1:].masked_fill(has_eos, NEG_INF)
        else:
            cand = torch.arange(V, device=device).expand(N, V)
            cand_score = full.gather(1, cand)
        if use_ctc:
            psi, r_new = ctc.score(state, row_utt, cand, step)
            alive = torch.isfinite(state.psi)[:, None]  # dead rows would give inf - inf
            cand_score = cand_score + w * torch.where(alive, psi - state.psi[:, None], NEG_INF)
        cand_score = cand_score + opts.length_bonus + scores.view(N, 1)

        before = Beams(ys, scores, att_sum, state.psi if use_ctc else None)  # for utterances that die out
        Cx = cand.size(1)
        top_s, top_i = cand_score.reshape(A, K * Cx).topk(K, dim=1)  # (A, K)
        parent = (torch.arange(A, device=device)[:, None] * K + top_i // Cx).view(-1)
        j = (top_i % Cx).view(-1)
        tok = cand[parent, j]
        if use_att:
            att_sum = att_sum[parent] + att[parent, tok]
            stepper.reorder(parent)
        if use_ctc:
            state = CTCPrefixScorer.select(r_new, psi, cand, parent, j)
        ys = torch.cat([ys[parent], tok[:, None]], dim=1)
        scores = top_s

        # finished hypotheses leave their slot
        fin = (tok.view(A, K) == eos) & torch.isfinite(top_s)
        if fin.any():
            for a, k in fin.nonzero().tolist():
                r = a * K + k
                ended[int(active[a])].append(Hyp(ys[r, 1:-1].tolist(), float(top_s[a, k]), float(att_sum[r]),
                                                 float(state.psi[r]) if use_ctc else 0.0))
            scores = scores.masked_fill(fin, NEG_INF)

        # utterances that are done: eos was forced, nothing alive, or (maxlenratio=0) end detection
        keep = []
        best_live = scores.max(1).values.tolist()  # one device sync per step, not per utterance
        for a, b in enumerate(active.tolist()):
            dead = best_live[a] == NEG_INF
            if dead and not ended[b]:
                # every candidate was impossible (e.g. CTC cannot fit it): keep the best unfinished one
                ended[b].append(before.best(a))
                log.warning("utterance %d: no hypothesis reached eos; keeping the best unfinished one", b)
            decided = (stop_when_decided and opts.length_bonus <= 0 and len(ended[b]) >= opts.nbest
                       and best_live[a] < sorted(h.score for h in ended[b])[-opts.nbest])
            if not (dead or decided or step >= maxlen[b] or (opts.maxlenratio == 0 and end_detect(ended[b], step))):
                keep.append(a)
        if len(keep) < A:
            if not keep:
                break
            sel = torch.tensor(keep, device=device)
            rows = (sel[:, None] * K + torch.arange(K, device=device)).view(-1)
            active, scores = active[sel], scores[sel]
            row_utt, ys, att_sum = row_utt[rows], ys[rows], att_sum[rows]
            if use_att:
                stepper.reorder(rows)
                stepper.keep(sel)
            if use_ctc:
                state = state.rows(rows)
    return [sorted(h, key=lambda x: -x.score)[: opts.nbest] for h in ended]
