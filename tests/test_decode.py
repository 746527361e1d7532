"""Correctness of the searches against brute force on problems small enough to enumerate."""
from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from asrkit.decode import DecodeOptions, decode_batch
from asrkit.decode.beam import SearchOptions, beam_search
from asrkit.decode.ctc import CTCPrefixScorer, ctc_greedy_search, ctc_prefix_beam_search, ctc_prefix_beam_search_batch
from decode_fixtures import TinyASR, random_batch


def collapsed_probs(logp: torch.Tensor, blank: int = 0) -> dict:
    """P(label sequence) by summing every alignment path: the definition of CTC."""
    T, V = logp.shape
    probs = logp.double().exp()
    out: dict = defaultdict(float)
    for path in itertools.product(range(V), repeat=T):
        p = math.prod(float(probs[t, c]) for t, c in enumerate(path))
        seq = tuple(c for k, c in enumerate(path) if c != blank and (k == 0 or c != path[k - 1]))
        out[seq] += p
    return out


def prefix_prob(probs: dict, prefix: tuple) -> float:
    return sum(p for seq, p in probs.items() if seq[: len(prefix)] == prefix)


def test_ctc_prefix_score_equals_brute_force_over_alignments():
    torch.manual_seed(0)
    V, lengths = 4, [5, 3]
    logp = (torch.randn(2, max(lengths), V) * 1.5).log_softmax(-1)
    lens = torch.tensor(lengths)
    eos = V - 1
    scorer = CTCPrefixScorer(logp, lens, blank=0, eos=eos)
    cand = torch.arange(V).expand(2, V)
    for path in [(1, 2), (2, 2), (1, 1)]:  # includes a repeated label
        state, utt = scorer.init_state(torch.arange(2)), torch.arange(2)
        for step, tok in enumerate(path):
            psi, r = scorer.score(state, utt, cand, step)
            for b, T in enumerate(lengths):
                brute = collapsed_probs(logp[b, :T])
                prefix = tuple(path[:step])
                for c in range(1, V):
                    want = brute.get(prefix, 0.0) if c == eos else prefix_prob(brute, prefix + (c,))
                    got = math.exp(psi[b, c].item())
                    assert got == pytest.approx(want, rel=1e-4, abs=1e-12), (b, prefix, c)
                assert psi[b, 0] == float("-inf")  # blank is never a candidate
            state = CTCPrefixScorer.select(r, psi, cand, torch.arange(2), torch.tensor([tok, tok]))


def brute_force_joint(model, enc, enc_len, tokens, maxlen, w, bonus):
    """Every label sequence up to maxlen tokens, scored by teacher forcing and by F.ctc_loss."""
    ctc_logp = model.ctc_log_probs(enc)[0, :enc_len]
    out = []
    for n in range(maxlen + 1):
        for y in itertools.product(tokens, repeat=n):
            ys_in = torch.tensor([[model.sos, *y]])
            logp = model.decoder_forward(ys_in, torch.tensor([n + 1]), enc, torch.tensor([enc_len]))[0]
            att = sum(float(logp[i, t]) for i, t in enumerate([*y, model.eos]))
            ctc = -float(F.ctc_loss(ctc_logp[:, None], torch.tensor([list(y)]), torch.tensor([enc_len]),
                                    torch.tensor([n]), blank=0, reduction="sum", zero_infinity=False))
            out.append((list(y), (1 - w) * att + w * ctc + bonus * (n + 1)))
    return sorted(out, key=lambda x: -x[1])


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_wide_beam_equals_exhaustive_search(w):
    model = TinyASR(vocab_size=5, seed=3).eval()  # blank 0, tokens 1-3, sos/eos 4
    feats, lens = random_batch([6], seed=2)
    enc, enc_lens = model.encode(feats, lens)
    maxlen, bonus = 3, 0.5
    opts = SearchOptions(beam=40, ctc_weight=w, length_bonus=bonus, maxlenratio=-maxlen, pre_beam_ratio=10, nbest=100)
    with torch.no_grad():
        hyps = beam_search(model, enc, enc_lens, opts)[0]
        brute = brute_force_joint(model, enc, 6, [1, 2, 3], maxlen, w, bonus)
    assert len(hyps) == len(brute) == 1 + 3 + 9 + 27
    assert hyps[0].tokens == brute[0][0]
    got = sorted(h.score for h in hyps)
    want = sorted(s for _, s in brute)
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("mode", ["joint", "attention", "ctc_greedy", "ctc_prefix_beam", "attention_rescoring"])
def test_batch_equals_one_at_a_time_and_batch_size_does_not_matter(mode):
    model = TinyASR(vocab_size=9, seed=1).eval()
    lengths = [12, 4, 9, 20, 7]  # very different lengths in one batch
    feats, lens = random_batch(lengths, seed=4)
    opts = DecodeOptions(mode=mode, beam=4, ctc_weight=0.3, nbest=3)
    full = decode_batch(model, feats, lens, opts)
    alone = [decode_batch(model, feats[b: b + 1, :n], lens[b: b + 1], opts)[0] for b, n in enumerate(lengths)]
    pairs = decode_batch(model, feats[:2, :12], lens[:2], opts) + decode_batch(model, feats[2:4], lens[2:4], opts) \
        + decode_batch(model, feats[4:, :7], lens[4:], opts)
    for other in (alone, pairs):
        for a, b in zip(full, other):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    assert any(h[0].tokens for h in full)


def test_stopping_when_the_nbest_is_decided_changes_nothing_but_the_steps(monkeypatch):
    """An utterance stops once n ended hypotheses beat every live one: same n-best, fewer decoder steps."""
    import asrkit.decode.beam as beam_mod
    steps = []

    class CountingStepper(beam_mod.Stepper):
        def step(self, *a, **k):
            steps.append(1)
            return super().step(*a, **k)

    monkeypatch.setattr(beam_mod, "Stepper", CountingStepper)
    saved = 0
    for seed, w, nbest, ratio in itertools.product((1, 2, 3), (0.0, 0.3), (1, 3), (0.0, -12)):
        model = TinyASR(vocab_size=8, seed=seed).eval()
        feats, lens = random_batch([14, 6, 22, 9], seed=seed)
        enc, enc_lens = model.encode(feats, lens)
        opts = SearchOptions(beam=4, ctc_weight=w, nbest=nbest, maxlenratio=ratio)
        counts = []
        results = []
        for stop in (False, True):
            steps.clear()
            results.append(beam_search(model, enc, enc_lens, opts, stop_when_decided=stop))
            counts.append(len(steps))
        for a, b in zip(*results):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert counts[1] <= counts[0]
        saved += counts[0] - counts[1]
    assert saved > 0


def test_joint_hypothesis_scores_add_up_to_weighted_attention_and_ctc():
    model = TinyASR(vocab_size=7, seed=5).eval()
    feats, lens = random_batch([10, 6], seed=5)
    enc, enc_lens = model.encode(feats, lens)
    opts = SearchOptions(beam=5, ctc_weight=0.4, length_bonus=0.2, nbest=5)
    with torch.no_grad():
        res = beam_search(model, enc, enc_lens, opts)
        for b, hyps in enumerate(res):
            assert len(hyps) == 5 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
            T = int(enc_lens[b])
            for h in hyps:
                ctc = -float(F.ctc_loss(model.ctc_log_probs(enc[b: b + 1, :T])[0][:, None], torch.tensor([h.tokens]),
                                        torch.tensor([T]), torch.tensor([len(h.tokens)]), reduction="sum"))
                assert h.ctc == pytest.approx(ctc, abs=1e-4)
                assert h.score == pytest.approx(0.6 * h.att + 0.4 * h.ctc + 0.2 * (len(h.tokens) + 1), abs=1e-4)


def test_length_limits():
    model = TinyASR(vocab_size=7, seed=6).eval()
    feats, lens = random_batch([6, 6], seed=6)
    enc, enc_lens = model.encode(feats, lens)
    with torch.no_grad():
        res = beam_search(model, enc, enc_lens, SearchOptions(beam=6, ctc_weight=0.3, maxlenratio=-2, nbest=50))
        assert all(len(h.tokens) <= 2 for hyps in res for h in hyps)
        assert any(len(h.tokens) == 2 for hyps in res for h in hyps)
        res = beam_search(model, enc, enc_lens, SearchOptions(beam=6, ctc_weight=0.3, minlenratio=0.5, nbest=50))
        assert all(len(h.tokens) >= 3 for hyps in res for h in hyps)


def test_ctc_prefix_beam_search_and_greedy_match_brute_force():
    torch.manual_seed(2)
    logp = (torch.randn(5, 4) * 2).log_softmax(-1)
    brute = sorted(collapsed_probs(logp).items(), key=lambda kv: -kv[1])
    nbest = ctc_prefix_beam_search(logp, beam=1000, blank=0, token_prune=4)
    assert len(nbest) == len(brute)
    for (toks, lp), (seq, p) in zip(nbest[:10], brute[:10]):
        assert tuple(toks) == seq and math.exp(lp) == pytest.approx(p, rel=1e-6)
    (toks, score), = ctc_greedy_search(logp[None], torch.tensor([5]))
    best_path = logp.argmax(-1).tolist()
    assert toks == [c for k, c in enumerate(best_path) if c != 0 and (k == 0 or c != best_path[k - 1])]
    assert score == pytest.approx(float(logp.max(-1).values.sum()))


@pytest.mark.parametrize("hash_p", [None, 3])
def test_batched_ctc_prefix_beam_search_equals_one_utterance_at_a_time(hash_p, monkeypatch):
    """Same n-best (tokens, order, scores) as the per-utterance search, on batches of utterances of
    different lengths (0 frames included), flat and peaky posteriors, several beams and prunings; with a
    3-valued prefix hash, collisions everywhere must not merge different prefixes."""
    import asrkit.decode.ctc as ctc

    if hash_p:
        monkeypatch.setattr(ctc, "_HASH_P", hash_p)
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        T, V = int(torch.randint(1, 25, (1,), generator=g)), int(torch.randint(2, 8, (1,), generator=g))
        logp = (torch.randn(4, T, V, generator=g) * (0.5 + 5 * seed / 60)).log_softmax(-1)
        lens = torch.randint(0, T + 1, (4,), generator=g)
        lens[0] = T
        beam, prune = 1 + seed % 7, [None, 2, V][seed % 3]
        got = ctc_prefix_beam_search_batch(logp, lens, beam, 0, prune)
        for b in range(4):
            want = ctc_prefix_beam_search(logp[b, : int(lens[b])], beam, 0, prune)
            assert [t for t, _ in got[b]] == [t for t, _ in want], (seed, b)
            assert [s for _, s in got[b]] == pytest.approx([s for _, s in want], abs=1e-9)


def test_attention_rescoring_scores_candidates_with_the_decoder():
    model = TinyASR(vocab_size=6, seed=7).eval()
    feats, lens = random_batch([8], seed=8)
    opts = DecodeOptions(mode="attention_rescoring", beam=4, ctc_weight=0.5, nbest=4)
    hyps = decode_batch(model, feats, lens, opts)[0]
    enc, enc_lens = model.encode(feats, lens)
    with torch.no_grad():
        for h in hyps:  # decoder score recomputed step by step through decoder_step
            state, last, att = model.decoder_init(enc, enc_lens, 1), torch.tensor([model.sos]), 0.0
            for t in [*h.tokens, model.eos]:
                logp, state = model.decoder_step(last, state)
                att += float(logp[0, t])
                last = torch.tensor([t])
            assert h.att == pytest.approx(att, abs=1e-4)
            assert h.score == pytest.approx(0.5 * att + 0.5 * h.ctc, abs=1e-4)


class OOMOnBigBatches(TinyASR):
    """Fails like a full GPU when more than 8 hypotheses are scored at once."""

    def decoder_step(self, tokens, state):
        if tokens.size(0) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().decoder_step(tokens, state)


def test_out_of_memory_splits_the_batch_and_retries(caplog):
    feats, lens = random_batch([5, 9, 7, 3], seed=9)
    opts = DecodeOptions(beam=3, ctc_weight=0.3)
    want = decode_batch(TinyASR(vocab_size=6, seed=9).eval(), feats, lens, opts)
    got = decode_batch(OOMOnBigBatches(vocab_size=6, seed=9).eval(), feats, lens, opts)
    assert [h[0].tokens for h in got] == [h[0].tokens for h in want]
    assert "out of memory" in caplog.text
    with pytest.raises(torch.OutOfMemoryError):  # one utterance that does not fit is not retried forever
        decode_batch(OOMOnBigBatches(vocab_size=6, seed=9).eval(), feats[:1], lens[:1], DecodeOptions(beam=9))


def test_real_transformer_decoder_with_cache_batched_equals_alone():
    """The same check on asrkit.nets' Transformer decoder, whose cache the search reorders."""
    from asrkit.nets import build_model
    from train_fixtures import TINY_MODEL

    torch.manual_seed(0)
    model = build_model(TINY_MODEL, 8, 1, 12).eval()
    lengths = [9, 4, 13]
    enc = torch.randn(3, 13, 16)
    enc_lens = torch.tensor(lengths)
    opts = SearchOptions(beam=4, ctc_weight=0.3, nbest=2)
    with torch.no_grad():
        both = beam_search(model, enc, enc_lens, opts)
        for b, n in enumerate(lengths):
            alone = beam_search(model, enc[b: b + 1, :n], enc_lens[b: b + 1], opts)[0]
            assert [h.tokens for h in alone] == [h.tokens for h in both[b]]
            assert [h.score for h in alone] == pytest.approx([h.score for h in both[b]], abs=1e-4)


def test_transformer_steps_equal_teacher_forcing():
    """Search steps (shared cross-attention, two-chunk self-attention cache) give the log-probs of the
    decoder's teacher-forcing forward on the whole prefixes, through reorders within and across chunk
    merges and utterances leaving."""
    from asrkit.decode.stepper import Stepper
    from asrkit.nets import build_model
    from train_fixtures import TINY_MODEL

    torch.manual_seed(1)
    model = build_model(TINY_MODEL, 8, 1, 12).eval()
    K, enc, enc_lens = 3, torch.randn(3, 7, 16), torch.tensor([7, 4, 6])
    stepper = Stepper(model, enc, enc_lens, K, merge_every=3)
    g = torch.Generator().manual_seed(2)
    ys, utts = torch.full((3 * K, 1), model.sos), torch.arange(3)
    with torch.no_grad():
        for step in range(9):
            row_utt = utts.repeat_interleave(K)
            want = model.decoder_forward(ys, torch.full((len(ys),), ys.size(1)), enc[row_utt], enc_lens[row_utt])
            assert torch.allclose(stepper.step(ys), want[:, -1], atol=1e-5), step
            A = ys.size(0) // K  # beams take rows of their own utterance, in any order, some twice
            perm = (torch.arange(A)[:, None] * K + torch.randint(0, K, (A, K), generator=g)).view(-1)
            stepper.reorder(perm)
            ys = torch.cat([ys[perm], torch.randint(1, 11, (A * K, 1), generator=g)], 1)
            if step in (2, 5):  # the first (then the last) remaining utterance leaves
                keep = torch.tensor([1, 2]) if step == 2 else torch.tensor([0])
                rows = (keep[:, None] * K + torch.arange(K)).view(-1)
                stepper.reorder(rows)
                stepper.keep(keep)
                ys, utts = ys[rows], utts[keep]
        assert [k.size(2) for k in stepper.state.cache[0].keys] == [6, 3]  # chunks merged at steps 4 and 7
        assert stepper.state.memory[0].keys.size(2) == 4  # the frames of utterance 1, the one left
    with pytest.raises(ValueError, match="one position at a time"):
        stepper.step(ys[:, :-1])  # a step skipped or repeated is an error, not wrong log-probs


@pytest.mark.parametrize("merge_every", [2, 16])
def test_steps_on_live_rows_only_equal_all_rows(merge_every):
    """Rows of dead hypotheses are not computed (nor their caches kept): the live rows' log-probs are
    those of a stepper that computes every row, through reorders that take parents among live rows."""
    from asrkit.decode.stepper import Stepper
    from asrkit.nets import build_model
    from train_fixtures import TINY_MODEL

    torch.manual_seed(3)
    model = build_model(TINY_MODEL, 8, 1, 12).eval()
    K, enc, enc_lens = 4, torch.randn(2, 6, 16), torch.tensor([6, 5])
    part = Stepper(model, enc, enc_lens, K, merge_every=merge_every)
    every = Stepper(model, enc, enc_lens, K)
    g = torch.Generator().manual_seed(4)
    ys = torch.full((2 * K, 1), model.sos)
    live = torch.tensor([0, K])  # one hypothesis per utterance at the start
    with torch.no_grad():
        for step in range(6):
            got, want = part.step(ys, live), every.step(ys)[live]
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), step
            # parents among this step's live rows of the same utterance; next step, a random subset lives
            alive = torch.zeros(2 * K, dtype=torch.bool)
            alive[live] = True
            perm = torch.cat([torch.nonzero(alive[u * K:(u + 1) * K]).squeeze(1)[
                torch.randint(0, int(alive[u * K:(u + 1) * K].sum()), (K,), generator=g)] + u * K for u in range(2)])
            for s in (part, every):
                s.reorder(perm)
            ys = torch.cat([ys[perm], torch.randint(1, 11, (2 * K, 1), generator=g)], 1)
            sizes = torch.randint(1, K + 1, (2,), generator=g).tolist()
            live = torch.cat([torch.randperm(K, generator=g)[: sizes[u]].sort().values + u * K for u in range(2)])
