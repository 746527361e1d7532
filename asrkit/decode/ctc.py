"""CTC scoring for decoding: greedy, prefix beam search, and the vectorized prefix scorer used by
the joint CTC/attention search (Watanabe et al. 2017; ESPnet's CTCPrefixScoreTH), here batched over
utterances x hypotheses x candidate tokens at once."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

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
    B, T, V = logp.shape
    dev, W = logp.device, beam
    k = min(token_prune or beam, V)
    top_lp, top_id = logp.topk(k, dim=-1)  # on the input dtype: the same choice as the per-utterance search
    top_lp = top_lp.double()
    lens = lens.to(dev)
    neg = torch.tensor(NEG_INF, dtype=torch.float64, device=dev)
    pb = torch.full((B, W), NEG_INF, dtype=torch.float64, device=dev)  # ending in a blank
    pb[:, 0] = 0.0  # the empty prefix
    pnb = torch.full_like(pb, NEG_INF)  # ending in a label
    tokens = torch.zeros(B, W, 1, dtype=torch.long, device=dev)  # grows with the longest prefix
    length = torch.zeros(B, W, dtype=torch.long, device=dev)
    last = torch.full((B, W), -1, dtype=torch.long, device=dev)  # -1: empty prefix
    # polynomial hash of each prefix and of its parent (the prefix without its last label), mod a prime
    hash_, parent_hash = torch.zeros_like(length), torch.full_like(length, -1)
    P, M = _HASH_P, _HASH_M
    bi = torch.arange(B, device=dev)[:, None]
    for t in range(T):
        lp, ids = top_lp[:, t], top_id[:, t]  # (B, k)
        valid = torch.maximum(pb, pnb) > NEG_INF  # (B, W)
        lp_blank = torch.where(ids == blank, lp, neg).max(1).values[:, None]  # (B, 1), -inf: blank not in top k
        # staying the same prefix: through a blank, or the last label repeated
        stay_b = torch.logaddexp(pb + lp_blank, pnb + lp_blank)
        match = ids[:, None, :] == last[:, :, None]  # (B, W, k): candidate c is the prefix's last label
        lp_last = torch.where(match, lp[:, None, :], neg).max(2).values  # (B, W)
        stay_nb = pnb + lp_last
        # extending by c: after a blank only when c repeats the last label
        lpc = lp[:, None, :]
        ext = torch.where(match, pb[:, :, None] + lpc, torch.logaddexp(pb[:, :, None] + lpc, pnb[:, :, None] + lpc))
        ext = ext.masked_fill((ids == blank)[:, None, :] | ~valid[:, :, None], NEG_INF)  # (B, W, k)
        # an extension of prefix i equal to prefix j (j's parent is i, j's last label a candidate) joins j
        pair = (parent_hash[:, None, :] == hash_[:, :, None]) & (length[:, None, :] == length[:, :, None] + 1) \
            & valid[:, :, None] & valid[:, None, :]  # (B, i, j)
        b_, i_, j_ = pair.nonzero(as_tuple=True)
        if len(b_):
            n = tokens.size(2)
            differ = (tokens[b_, i_] != tokens[b_, j_]) & (torch.arange(n, device=dev) < length[b_, i_, None])
            pair[b_, i_, j_] = ~differ.any(1)
        merge = pair[:, :, :, None] & match[:, None, :, :]  # (B, i, j, c): extension (i, c) is prefix j
        into_j = torch.where(merge, ext[:, :, None, :], neg).amax(dim=(1, 3))  # (B, W)
        stay_nb = torch.logaddexp(stay_nb, into_j)
        ext = ext.masked_fill(merge.any(2), NEG_INF)
        # the `beam` best of stays (W) and extensions (W x k), per utterance
        score = torch.cat([torch.logaddexp(stay_b, stay_nb), ext.view(B, W * k)], dim=1)
        top, idx = score.topk(W, dim=1)
        is_ext, src = idx >= W, torch.where(idx >= W, (idx - W) // k, idx)
        e_idx = (idx - W).clamp(min=0)
        c = ids.gather(1, e_idx % k)
        dead = top == NEG_INF
        new_pb = torch.where(is_ext, neg, stay_b.gather(1, src)).masked_fill(dead, NEG_INF)
        new_pnb = torch.where(is_ext, ext.view(B, W * k).gather(1, e_idx), stay_nb.gather(1, src))
        new_pnb = new_pnb.masked_fill(dead, NEG_INF)
        src_len, src_hash = length.gather(1, src), hash_.gather(1, src)
        if int(src_len.max()) >= tokens.size(2):  # room for one more label
            tokens = torch.cat([tokens, torch.zeros_like(tokens[:, :, :1])], 2)
        new_tokens = tokens[bi, src]  # (B, W, n)
        new_tokens.scatter_(2, src_len[:, :, None],
                            torch.where(is_ext, c, new_tokens.gather(2, src_len[:, :, None])[..., 0])[..., None])
        on = (t < lens)[:, None]  # frames past an utterance's end leave its beam as it is
        pb, pnb = torch.where(on, new_pb, pb), torch.where(on, new_pnb, pnb)
        tokens = torch.where(on[:, :, None], new_tokens, tokens)
        length = torch.where(on, src_len + is_ext.long(), length)
        last = torch.where(on, torch.where(is_ext, c, last.gather(1, src)), last)
        parent_hash = torch.where(on, torch.where(is_ext, src_hash, parent_hash.gather(1, src)), parent_hash)
        hash_ = torch.where(on, torch.where(is_ext, (src_hash * M + c + 1) % P, src_hash), hash_)
    score = torch.logaddexp(pb, pnb)
    out = []
    for b in range(B):
        out.append([(tokens[b, w, : int(length[b, w])].tolist(), float(score[b, w]))
                    for w in range(W) if score[b, w] > NEG_INF])
    return out
