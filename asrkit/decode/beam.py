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
from dataclasses import dataclass
from typing import NamedTuple

import torch

from asrkit.decode.ctc import NEG_INF, CTCPrefixScorer
from asrkit.decode.stepper import Stepper
from asrkit.options import option

log = logging.getLogger(__name__)


@dataclass
class Hyp:
    tokens: list[int]
    score: float
    att: float = 0.0  # sum of decoder log-probs
    ctc: float = 0.0  # CTC prefix (or full) log-prob

    def asdict(self) -> dict:
        return {"tokens": self.tokens, "score": self.score, "att": self.att, "ctc": self.ctc}


@dataclass
class SearchOptions:
    beam: int = option(10, "beam size")
    ctc_weight: float = option(0.3, "weight of the CTC prefix score (joint, attention_rescoring)")
    length_bonus: float = option(0.0, "score added per token (ESPnet's penalty)", aliases=["penalty"])
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
    search = _Search(model, enc, enc_lens, opts, ctc_logp)
    for step in range(max(search.maxlen) + 1):
        att, token_scores = search.token_scores(step)
        candidates, scores, ctc_scores = search.candidates(token_scores, step)
        search.extend(att, candidates, scores, ctc_scores)
        if not search.drop_finished(step, stop_when_decided):
            break
    return [sorted(h, key=lambda x: -x.score)[: opts.nbest] for h in search.ended]


class _Search:
    """One batched search. Its rows are (utterance, beam slot) pairs, `beam` consecutive rows for each
    utterance still searching (`active`); a row holds a prefix `ys` from <sos>, whose total score is in
    `scores` (utterances, beam) (-inf: an empty or finished slot), its summed decoder log-probs in
    `att_sum` and its CTC prefix state in `ctc_state`. `ended` collects each utterance's finished
    hypotheses. A step: `token_scores` -> `candidates` -> `extend` -> `drop_finished`."""

    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, opts: SearchOptions,
                 ctc_logp: torch.Tensor | None):
        self.opts, self.device, self.beam, self.vocab = opts, enc.device, opts.beam, model.vocab_size
        self.sos, self.eos, self.blank = model.sos, model.eos, model.blank
        self.use_ctc, self.use_att = opts.ctc_weight > 0, opts.ctc_weight < 1
        cap = getattr(model, "max_tokens", None) if self.use_att else None
        self.maxlen, self.minlen = length_limits(enc_lens, opts, cap)
        self.maxlen_t = torch.tensor(self.maxlen, device=self.device)
        self.minlen_t = torch.tensor(self.minlen, device=self.device)
        # the pre-beam: the decoder's best tokens of each row are its candidates (all tokens without a decoder)
        self.n_candidates = (self.vocab if not self.use_att else
                             min(self.vocab, max(self.beam, int(opts.pre_beam_ratio * self.beam))))
        self.ctc = None
        if self.use_ctc:
            self.ctc = CTCPrefixScorer(model.ctc_log_probs(enc) if ctc_logp is None else ctc_logp, enc_lens,
                                       self.blank, self.eos)
        n_utts = enc.size(0)
        self.active = torch.arange(n_utts, device=self.device)
        self.row_utt = self.active.repeat_interleave(self.beam)  # the utterance of each row
        self.stepper = Stepper(model, enc, enc_lens, self.beam) if self.use_att else None
        self.ys = torch.full((n_utts * self.beam, 1), self.sos, dtype=torch.long, device=self.device)
        self.scores = torch.full((n_utts, self.beam), NEG_INF, device=self.device)
        self.scores[:, 0] = 0.0  # one live hypothesis per utterance at the start
        self.att_sum = torch.zeros(n_utts * self.beam, device=self.device)
        self.ctc_state = self.ctc.init_state(self.row_utt) if self.use_ctc else None
        self.ended: list[list[Hyp]] = [[] for _ in range(n_utts)]
        self.before: Beams | None = None  # the beams before this step's extension

    def token_scores(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(decoder log-probs (rows, V) of each row's next token, or None without a decoder; their
        weighted part of the score, with the tokens this step cannot take at -inf)."""
        rows, w = self.ys.size(0), self.opts.ctc_weight
        att = None
        if self.use_att:  # the decoder runs on live rows only (dead ones: K-1 empty slots at the start, finished)
            live = torch.isfinite(self.scores).view(-1)
            if bool(live.all()):
                att = self.stepper.step(self.ys)
            else:
                live = live.nonzero().squeeze(1)
                att = torch.zeros(rows, self.vocab, device=self.device).index_copy_(
                    0, live, self.stepper.step(self.ys, live).float())
            scores = (1 - w) * att.float()
        else:
            scores = torch.zeros(rows, self.vocab, device=self.device)
        scores[:, self.blank] = NEG_INF
        if self.sos != self.eos:
            scores[:, self.sos] = NEG_INF
        scores[step < self.minlen_t[self.row_utt], self.eos] = NEG_INF
        forced = step >= self.maxlen_t[self.row_utt]
        if forced.any():  # last step: only eos
            eos_score = scores[forced, self.eos]
            scores[forced] = NEG_INF
            scores[forced, self.eos] = eos_score
        return att, scores

    def candidates(self, token_scores: torch.Tensor, step: int):
        """(candidate tokens (rows, C'), the total score of each row extended by each, the CTC scorer's
        (psi, state) for them or None)."""
        eos = self.eos
        if self.n_candidates < self.vocab:  # as in ESPnet, eos is always a candidate (an extra column unless in the top C)
            cand = token_scores.topk(self.n_candidates, dim=1).indices
            has_eos = (cand == eos).any(1, keepdim=True)
            cand = torch.cat([cand, torch.full_like(cand[:, :1], eos)], dim=1)
            cand_scores = token_scores.gather(1, cand)
            cand_scores[:, -1:] = cand_scores[:, -1:].masked_fill(has_eos, NEG_INF)
        else:
            cand = torch.arange(self.vocab, device=self.device).expand(token_scores.size(0), self.vocab)
            cand_scores = token_scores.gather(1, cand)
        ctc_scores = None
        if self.use_ctc:
            psi, r_new = ctc_scores = self.ctc.score(self.ctc_state, self.row_utt, cand, step)
            prev = self.ctc_state.psi
            alive = torch.isfinite(prev)[:, None]  # dead rows would give inf - inf
            cand_scores = cand_scores + self.opts.ctc_weight * torch.where(alive, psi - prev[:, None], NEG_INF)
        return cand, cand_scores + self.opts.length_bonus + self.scores.view(-1, 1), ctc_scores

    def extend(self, att: torch.Tensor | None, cand: torch.Tensor, cand_scores: torch.Tensor, ctc_scores) -> None:
        """Each utterance keeps its `beam` best (row, candidate) pairs; the hypotheses that chose <eos> end."""
        n_utts, beam, width = self.active.numel(), self.beam, cand.size(1)
        self.before = Beams(self.ys, self.scores, self.att_sum, self.ctc_state.psi if self.use_ctc else None)
        best, flat = cand_scores.reshape(n_utts, beam * width).topk(beam, dim=1)  # (utterances, beam)
        parent = (torch.arange(n_utts, device=self.device)[:, None] * beam + flat // width).view(-1)
        which = (flat % width).view(-1)  # the chosen candidate of the parent row
        token = cand[parent, which]
        if self.use_att:
            self.att_sum = self.att_sum[parent] + att[parent, token]
            self.stepper.reorder(parent)
        if self.use_ctc:
            psi, r_new = ctc_scores
            self.ctc_state = CTCPrefixScorer.select(r_new, psi, cand, parent, which)
        self.ys = torch.cat([self.ys[parent], token[:, None]], dim=1)
        self.scores = best
        finished = (token.view(n_utts, beam) == self.eos) & torch.isfinite(best)
        if finished.any():  # they leave their slot
            for a, k in finished.nonzero().tolist():
                r = a * beam + k
                self.ended[int(self.active[a])].append(Hyp(
                    self.ys[r, 1:-1].tolist(), float(best[a, k]), float(self.att_sum[r]),
                    float(self.ctc_state.psi[r]) if self.use_ctc else 0.0))
            self.scores = self.scores.masked_fill(finished, NEG_INF)

    def drop_finished(self, step: int, stop_when_decided: bool) -> bool:
        """Drop the utterances that are done (eos was forced, nothing alive, its n-best decided, or
        with maxlenratio 0 end detection); False when none is left."""
        opts, beam, keep = self.opts, self.beam, []
        best_live = self.scores.max(1).values.tolist()  # one device sync per step, not per utterance
        for a, b in enumerate(self.active.tolist()):
            dead = best_live[a] == NEG_INF
            if dead and not self.ended[b]:
                # every candidate was impossible (e.g. CTC cannot fit it): keep the best unfinished one
                self.ended[b].append(self.before.best(a))
                log.warning("utterance %d: no hypothesis reached eos; keeping the best unfinished one", b)
            decided = (stop_when_decided and opts.length_bonus <= 0 and len(self.ended[b]) >= opts.nbest
                       and best_live[a] < sorted(h.score for h in self.ended[b])[-opts.nbest])
            if not (dead or decided or step >= self.maxlen[b]
                    or (opts.maxlenratio == 0 and end_detect(self.ended[b], step))):
                keep.append(a)
        if len(keep) == len(best_live):
            return True
        if not keep:
            return False
        sel = torch.tensor(keep, device=self.device)
        rows = (sel[:, None] * beam + torch.arange(beam, device=self.device)).view(-1)
        self.active, self.scores = self.active[sel], self.scores[sel]
        self.row_utt, self.ys, self.att_sum = self.row_utt[rows], self.ys[rows], self.att_sum[rows]
        if self.use_att:
            self.stepper.reorder(rows)
            self.stepper.keep(sel)
        if self.use_ctc:
            self.ctc_state = self.ctc_state.rows(rows)
        return True
