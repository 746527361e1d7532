"""CTC scoring for decoding: greedy, prefix beam search, and the vectorized prefix scorer used by
the joint CTC/attention search (Watanabe et al. 2017; ESPnet's CTCPrefixScoreTH), here batched over
utterances x hypotheses x candidate tokens at once."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import torch

NEG_INF = float("-inf")
_HASH_P, _HASH_M = 2147483647, 1000003  # prefix hashes of the batched prefix beam search (tests shrink P)


@dataclass
class CTCState:
    """Prefix state of N hypotheses: r (T, 2, N) log-probs of the prefix ending at frame t in a
    label (0) or a blank (1); psi (N,) the prefix score; last (N,) its last label (-1 if empty)."""

    r: torch.Tensor
    psi: torch.Tensor
    last: torch.Tensor

    def rows(self, index: torch.Tensor) -> "CTCState":
        return CTCState(self.r[:, :, index], self.psi[index], self.last[index])


class CTCPrefixScorer:
    """CTC prefix scores of (hypothesis + candidate) for many hypotheses of many utterances.

    logp (B, T, V) and lens (B,): CTC log-posteriors. Frames past an utterance's end are replaced by a
    certain blank, which leaves every prefix score unchanged, so padded utterances need no masking.
    """

    def __init__(self, logp: torch.Tensor, lens: torch.Tensor, blank: int, eos: int):
        B, T, _ = logp.shape
        pad = torch.arange(T, device=logp.device)[None] >= lens.to(logp.device)[:, None]
        logp = logp.float().masked_fill(pad[..., None], NEG_INF)
        logp[..., blank] = logp[..., blank].masked_fill(pad, 0.0)
        # (T, B * V): a step gathers the columns of its (utterance, candidate) pairs, frame-major
        self.x = logp.transpose(0, 1).reshape(T, -1).contiguous()
        self.lens, self.blank, self.eos, self.T, self.V = lens.to(logp.device), blank, eos, T, logp.size(2)

    def init_state(self, utt: torch.Tensor) -> CTCState:
        """State of the empty prefix for hypotheses of utterances `utt` (N,)."""
        rb = torch.cumsum(self.x.index_select(1, utt * self.V + self.blank), dim=0)  # (T, N): all blanks so far
        r = torch.stack([torch.full_like(rb, NEG_INF), rb], dim=1)
        return CTCState(r, torch.zeros(len(utt), device=rb.device), torch.full_like(utt, -1))

    def score(self, state: CTCState, utt: torch.Tensor, cand: torch.Tensor, step: int):
        """Prefix scores (N, C) of each hypothesis extended by each candidate in cand (N, C), and the
        new r (T', 2, N, C). All hypotheses have `step` labels (the search is synchronous).

        Only the frames up to the longest of these utterances are computed (T' <= T: the longest ones
        may have left the search), so a state's r may be shorter than T."""
        N, C = cand.shape
        T = int(self.lens[utt].max()) if len(utt) else 0
        r_prev = state.r[:T]
        start = max(step, 1)  # a prefix of step + 1 labels needs step + 1 frames
        if start > T:  # longer than every utterance: impossible
            psi = torch.full((N, C), NEG_INF, device=cand.device)
            return torch.where(cand == self.eos, self._psi_eos(r_prev, utt)[:, None], psi), \
                torch.full((T, 2, N, C), NEG_INF, device=cand.device)
        xc = self.x[:T].index_select(1, (utt[:, None] * self.V + cand).view(-1)).view(T, N, C)
        xb = self.x[:T].index_select(1, utt * self.V + self.blank)  # (T, N)
        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T, N)
        # phi: the prefix may emit the candidate next, unless it repeats the last label without a blank
        same = (cand == state.last[:, None])[None]
        log_phi = torch.where(same, r_prev[:, 1, :, None], r_sum[:, :, None])  # (T, N, C)
        r = torch.empty(T, 2, N, C, device=cand.device)
        r[:start] = NEG_INF
        if step == 0:
            r[0, 0] = xc[0]
        x = torch.stack([xc[start:], xb[start:, :, None].expand(-1, -1, C)], dim=1)  # (T - start, 2, N, C)
        # the frame loop is the scorer's hot spot: in place, on views made once (unbind), not per frame
        r0, r1 = r[start - 1:, 0].unbind(0), r[start - 1:, 1].unbind(0)  # frames start-1 .. T-1
        for r0_prev, phi_prev, r1_prev, r0_t, r1_t, r_t, x_t in zip(
                r0, log_phi[start - 1:].unbind(0), r1, r0[1:], r1[1:], r[start:].unbind(0), x.unbind(0)):
            torch.logaddexp(r0_prev, phi_prev, out=r0_t)  # label: newly emitted, or repeated
            torch.logaddexp(r0_prev, r1_prev, out=r1_t)  # blank after the label
            r_t.add_(x_t)
        # psi: the candidate is emitted at some frame t >= start after phi(t-1), or (step 0) at frame 0
        psi = torch.logaddexp(torch.logsumexp(log_phi[start - 1: T - 1] + xc[start:], dim=0), r[start - 1, 0])
        # eos: the whole prefix has been emitted by the utterance's last frame
        psi = torch.where(cand == self.eos, self._psi_eos(r_prev, utt, r_sum)[:, None], psi)
        psi = psi.masked_fill(cand == self.blank, NEG_INF)
        return psi, r

    def _psi_eos(self, r_prev: torch.Tensor, utt: torch.Tensor, r_sum: torch.Tensor | None = None) -> torch.Tensor:
        if r_sum is None:
            r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])
        end = (self.lens[utt] - 1).clamp(min=0)
        return r_sum.gather(0, end[None]).squeeze(0)  # (N,)

    @staticmethod
    def select(r_new: torch.Tensor, psi: torch.Tensor, cand: torch.Tensor, parent: torch.Tensor,
               j: torch.Tensor) -> CTCState:
        """New states: hypothesis `parent[k]` extended by its candidate number `j[k]`."""
        return CTCState(r_new[:, :, parent, j], psi[parent, j], cand[parent, j])


def ctc_greedy_search(logp: torch.Tensor, lens: torch.Tensor, blank: int = 0):
    """Best path per utterance, repeats merged and blanks removed: list of (tokens, score)."""
    best, idx = logp.max(dim=-1)
    out = []
    for b in range(logp.size(0)):
        n = int(lens[b])
        path = idx[b, :n].tolist()
        tokens = [p for k, p in enumerate(path) if p != blank and (k == 0 or p != path[k - 1])]
        out.append((tokens, float(best[b, :n].sum())))
    return out


def _lse(*xs: float) -> float:
    m = max(xs)
    if m == NEG_INF:
        return NEG_INF
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ctc_prefix_beam_search(logp: torch.Tensor, beam: int = 10, blank: int = 0, token_prune: int | None = None):
    """Prefix beam search over one utterance's CTC log-posteriors (T, V), as in WeNet.

    Returns up to `beam` (tokens, log-prob) pairs, best first. Per frame only the `token_prune`
    likeliest tokens (default: beam) are expanded."""
    k = min(token_prune or beam, logp.size(-1))
    top_lp, top_id = logp.topk(k, dim=-1)
    top_lp, top_id = top_lp.tolist(), top_id.tolist()
    hyps = {(): (0.0, NEG_INF)}  # prefix -> (log p ending in blank, log p ending in a label)
    for lps, ids in zip(top_lp, top_id):
        nxt: dict = defaultdict(lambda: (NEG_INF, NEG_INF))
        for prefix, (pb, pnb) in hyps.items():
            for lp, c in zip(lps, ids):
                if c == blank:
                    b, nb = nxt[prefix]
                    nxt[prefix] = (_lse(b, pb + lp, pnb + lp), nb)
                elif prefix and c == prefix[-1]:
                    b, nb = nxt[prefix]
                    nxt[prefix] = (b, _lse(nb, pnb + lp))  # repeat collapses
                    ext = prefix + (c,)
                    b, nb = nxt[ext]
                    nxt[ext] = (b, _lse(nb, pb + lp))  # a blank separated the repeat
                else:
                    ext = prefix + (c,)
                    b, nb = nxt[ext]
                    nxt[ext] = (b, _lse(nb, pb + lp, pnb + lp))
        live = [kv for kv in nxt.items() if max(kv[1]) > NEG_INF]  # e.g. a repeat with no blank between
        hyps = dict(sorted(live, key=lambda kv: -_lse(*kv[1]))[:beam])
    return [(list(p), _lse(*s)) for p, s in hyps.items()]


def ctc_prefix_beam_search_batch(logp: torch.Tensor, lens: torch.Tensor, beam: int = 10, blank: int = 0,
                                 token_prune: int | None = None) -> list[list[tuple[list[int], float]]]:
    """ctc_prefix_beam_search on every utterance of a padded batch (B, T, V) at once: per utterance up to
    `beam` (tokens, log-prob) pairs, best first, the same as one utterance at a time (up to rounding;
    tests/test_decode.py checks it). Computes in float64 like the per-utterance search.

    Per frame each of the `beam` prefixes of each utterance is extended by each of the `token_prune`
    likeliest tokens. An extension equals an existing prefix only when it extends that prefix's parent
    by its last label: such pairs are merged, found by a hash of the prefixes and confirmed by comparing
    them (so a hash collision cannot merge different prefixes)."""
    n_utts, n_frames, vocab = logp.shape
    k = min(token_prune or beam, vocab)
    top_lp, top_id = logp.topk(k, dim=-1)  # on the input dtype: the same choice as the per-utterance search
    top_lp, lens = top_lp.double(), lens.to(logp.device)
    prefixes = _Prefixes.start(n_utts, beam, logp.device)
    neg = torch.tensor(NEG_INF, dtype=torch.float64, device=logp.device)
    utt = torch.arange(n_utts, device=logp.device)[:, None]
    for t in range(n_frames):
        lp, ids = top_lp[:, t], top_id[:, t]  # (B, k)
        if int(prefixes.length.max()) >= prefixes.tokens.size(2):  # room for one more label
            prefixes = prefixes._replace(tokens=torch.cat([prefixes.tokens, torch.zeros_like(prefixes.tokens[:, :, :1])], 2))
        valid = prefixes.valid()
        stay_b, stay_nb, ext, match = _frame_scores(prefixes, valid, lp, ids, blank, neg)
        stay_nb, ext = _merge_equal_prefixes(prefixes, valid, stay_nb, ext, match, neg)
        new = _best_beam(prefixes, stay_b, stay_nb, ext, ids, neg, utt)
        prefixes = prefixes.updated(new, (t < lens)[:, None])  # past an utterance's end its beam stays
    score = torch.logaddexp(prefixes.pb, prefixes.pnb)
    return [[(prefixes.tokens[b, w, : int(prefixes.length[b, w])].tolist(), float(score[b, w]))
             for w in range(beam) if score[b, w] > NEG_INF] for b in range(n_utts)]


class _Prefixes(NamedTuple):
    """The batched prefix search's beams, (B, W) each: the log-probs of a prefix ending in a blank
    (pb) and in a label (pnb), its labels (B, W, n; n grows with the longest), its length and last
    label (-1: empty), and a polynomial hash of it and of its parent (itself without its last label)."""
    pb: torch.Tensor
    pnb: torch.Tensor
    tokens: torch.Tensor
    length: torch.Tensor
    last: torch.Tensor
    hash: torch.Tensor
    parent_hash: torch.Tensor

    @classmethod
    def start(cls, n_utts: int, beam: int, device) -> _Prefixes:
        """The empty prefix alone in each beam."""
        pb = torch.full((n_utts, beam), NEG_INF, dtype=torch.float64, device=device)
        pb[:, 0] = 0.0
        length = torch.zeros(n_utts, beam, dtype=torch.long, device=device)
        return cls(pb, torch.full_like(pb, NEG_INF), torch.zeros(n_utts, beam, 1, dtype=torch.long, device=device),
                   length, torch.full_like(length, -1), torch.zeros_like(length), torch.full_like(length, -1))

    def valid(self) -> torch.Tensor:
        return torch.maximum(self.pb, self.pnb) > NEG_INF

    def updated(self, new: _Prefixes, on: torch.Tensor) -> _Prefixes:
        """`new` for the utterances `on` (B, 1), these prefixes for the others."""
        old, on3 = self, on[:, :, None]
        return _Prefixes(torch.where(on, new.pb, old.pb), torch.where(on, new.pnb, old.pnb),
                         torch.where(on3, new.tokens, old.tokens), torch.where(on, new.length, old.length),
                         torch.where(on, new.last, old.last), torch.where(on, new.hash, old.hash),
                         torch.where(on, new.parent_hash, old.parent_hash))


def _frame_scores(p: _Prefixes, valid: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor, blank: int,
                  neg: torch.Tensor):
    """Each prefix staying itself (through a blank: stay_b (B, W); the last label repeated: stay_nb)
    and extended by each candidate label (ext (B, W, k)), and which candidates repeat its last label
    (match (B, W, k)); `valid` are the prefixes that exist, `neg` -inf as a tensor."""
    lp_blank = torch.where(ids == blank, lp, neg).max(1).values[:, None]  # (B, 1), -inf: blank not in top k
    stay_b = torch.logaddexp(p.pb + lp_blank, p.pnb + lp_blank)
    match = ids[:, None, :] == p.last[:, :, None]
    stay_nb = p.pnb + torch.where(match, lp[:, None, :], neg).max(2).values
    # extending by c: after a blank only when c repeats the last label
    lpc = lp[:, None, :]
    ext = torch.where(match, p.pb[:, :, None] + lpc,
                      torch.logaddexp(p.pb[:, :, None] + lpc, p.pnb[:, :, None] + lpc))
    ext = ext.masked_fill((ids == blank)[:, None, :] | ~valid[:, :, None], NEG_INF)
    return stay_b, stay_nb, ext, match


def _merge_equal_prefixes(p: _Prefixes, valid: torch.Tensor, stay_nb: torch.Tensor, ext: torch.Tensor,
                          match: torch.Tensor, neg: torch.Tensor):
    """An extension of prefix i equal to prefix j (j's parent is i, j's last label the candidate) joins
    j: (stay_nb with it added, ext with it removed)."""
    pair = (p.parent_hash[:, None, :] == p.hash[:, :, None]) & (p.length[:, None, :] == p.length[:, :, None] + 1) \
        & valid[:, :, None] & valid[:, None, :]  # (B, i, j)
    b_, i_, j_ = pair.nonzero(as_tuple=True)
    if len(b_):  # confirm by the labels: a hash collision must not merge different prefixes
        n = p.tokens.size(2)
        differ = (p.tokens[b_, i_] != p.tokens[b_, j_]) & (torch.arange(n, device=ext.device) < p.length[b_, i_, None])
        pair[b_, i_, j_] = ~differ.any(1)
    merge = pair[:, :, :, None] & match[:, None, :, :]  # (B, i, j, c): extension (i, c) is prefix j
    into_j = torch.where(merge, ext[:, :, None, :], neg).amax(dim=(1, 3))  # (B, W)
    return torch.logaddexp(stay_nb, into_j), ext.masked_fill(merge.any(2), NEG_INF)


def _best_beam(p: _Prefixes, stay_b: torch.Tensor, stay_nb: torch.Tensor, ext: torch.Tensor,
               ids: torch.Tensor, neg: torch.Tensor, utt: torch.Tensor) -> _Prefixes:
    """The `beam` best of the stays (W) and the extensions (W x k) of each utterance (`utt`: their
    indices (B, 1)), as new prefixes; `p.tokens` has room for one more label."""
    n_utts, beam, k = ext.shape
    score = torch.cat([torch.logaddexp(stay_b, stay_nb), ext.view(n_utts, beam * k)], dim=1)
    top, idx = score.topk(beam, dim=1)
    is_ext, src = idx >= beam, torch.where(idx >= beam, (idx - beam) // k, idx)  # src: the prefix it came from
    e_idx = (idx - beam).clamp(min=0)
    label = ids.gather(1, e_idx % k)
    dead = top == NEG_INF
    pb = torch.where(is_ext, neg, stay_b.gather(1, src)).masked_fill(dead, NEG_INF)
    pnb = torch.where(is_ext, ext.view(n_utts, beam * k).gather(1, e_idx), stay_nb.gather(1, src))
    pnb = pnb.masked_fill(dead, NEG_INF)
    src_len, src_hash = p.length.gather(1, src), p.hash.gather(1, src)
    tokens = p.tokens[utt, src]  # (B, W, n)
    tokens.scatter_(2, src_len[:, :, None],
                    torch.where(is_ext, label, tokens.gather(2, src_len[:, :, None])[..., 0])[..., None])
    return _Prefixes(pb, pnb, tokens, src_len + is_ext.long(), torch.where(is_ext, label, p.last.gather(1, src)),
                     torch.where(is_ext, (src_hash * _HASH_M + label + 1) % _HASH_P, src_hash),
                     torch.where(is_ext, src_hash, p.parent_hash.gather(1, src)))
