"""asrkit.data: the length-bucketed DDP batch sampler, the HDF5 Dataset and collate."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from asrkit.data import BucketBatchSampler, SpeechDataset, collate, make_batches
from asrkit.errors import DataError
from asrkit.tokenizer import Tokenizer
from train_fixtures import make_experiment, utterance_feats, write_split

LENGTHS = np.random.default_rng(0).integers(5, 200, size=101).tolist()


def all_ranks(lengths, world, epoch=0, batch_bins=600, **kw):
    samplers = [BucketBatchSampler(lengths, batch_bins, num_replicas=world, rank=r, seed=7, **kw)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return [list(s) for s in samplers]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sampler_equal_batch_counts_and_each_utterance_once(world):
    for epoch in range(3):
        per_rank = all_ranks(LENGTHS, world, epoch)
        assert len({len(b) for b in per_rank}) == 1, "ranks must run the same number of steps"
        seen = sorted(i for batches in per_rank for b in batches for i in b)
        assert seen == list(range(len(LENGTHS)))


def test_batches_respect_batch_bins_and_group_similar_lengths():
    batches = make_batches(LENGTHS, 600)
    for b in batches:
        lens = [LENGTHS[i] for i in b]
        assert len(b) == 1 or len(b) * max(lens) <= 600
    # sorted by length: the longest of one batch is no longer than the shortest of the next
    assert all(max(LENGTHS[i] for i in a) <= min(LENGTHS[i] for i in b) for a, b in zip(batches, batches[1:]))
    assert make_batches([1000, 5], 600) == [[1], [0]]  # too long for batch_bins: a batch of its own


def test_sampler_shuffles_per_epoch_from_seed():
    e0, e0_again, e1 = all_ranks(LENGTHS, 1, 0)[0], all_ranks(LENGTHS, 1, 0)[0], all_ranks(LENGTHS, 1, 1)[0]
    assert e0 == e0_again and e0 != e1
    assert sorted(map(tuple, e0)) == sorted(map(tuple, e1))  # same batches, other order
    fixed = BucketBatchSampler(LENGTHS, 600, shuffle=False)
    assert list(fixed) == make_batches(LENGTHS, 600)


def test_sampler_resumes_mid_epoch():
    world = 2
    for rank in range(world):
        s = BucketBatchSampler(LENGTHS, 600, num_replicas=world, rank=rank, seed=3)
        s.set_epoch(4)
        full = list(s)
        s.set_epoch(4, start=5)
        assert len(s) == len(full) - 5 and list(s) == full[5:]


def test_sampler_splits_batches_to_divide_among_ranks():
    # 5 equal batches cannot be dealt to 2 ranks: one is split, every utterance still seen once
    lengths = [100] * 10
    assert len(make_batches(lengths, 200)) == 5
    per_rank = all_ranks(lengths, 2, batch_bins=200)
    assert [len(b) for b in per_rank] == [3, 3]
    assert sorted(i for r in per_rank for b in r for i in b) == list(range(10))
    # fewer utterances than ranks: some repeated rather than a rank without work (a DDP hang)
    per_rank = all_ranks([50, 60, 70], 4, batch_bins=1000)
    assert [len(b) for b in per_rank] == [1, 1, 1, 1]


def test_ranks_of_one_step_get_neighbouring_lengths():
    per_rank = all_ranks(LENGTHS, 2)
    batches = BucketBatchSampler(LENGTHS, 600, num_replicas=2).batches  # sorted by length
    for b0, b1 in zip(*per_rank):  # one step: neighbours in length order, so no rank waits long
        assert batches.index(b0) // 2 == batches.index(b1) // 2


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_experiment(root, n_train=12, n_valid=4)


def test_dataset_reads_store_and_tokenizes(exp):
    tok = Tokenizer.load(exp["token_dir"])
    ds = SpeechDataset(exp["train_data"], exp["train_feats"], tok)
    assert len(ds) == 12 and not ds.skipped and (ds.dim, ds.num_layers) == (8, 1)
    texts = {r["utt_id"]: r["text"] for r in map(json.loads, open(exp["train_data"]))}
    item = ds[3]
    assert tok.decode(item["ys"].tolist()) == texts[item["utt_id"]]
    expected = utterance_feats(texts[item["utt_id"]], seed=1000 + int(item["utt_id"][-3:]))
    np.testing.assert_array_equal(item["feats"], expected)
    assert ds.lengths[3] == item["feats"].shape[0]


def test_dataset_skips_and_lists_unusable_utterances(tmp_path, exp):
    tok = Tokenizer.load(exp["token_dir"])
    # a speed-perturbed copy of valid_000, and a 1-frame utterance too short for the model
    extra = {"valid_000-sp0.9": utterance_feats("abc", 5), "valid_001": utterance_feats("x", 6, 1)}
    data, store = write_split(tmp_path, "valid", 4, seed=2, store_extra=extra)
    lines = open(data).read().splitlines()
    open(data, "a").write(lines[0].replace("valid_000", "valid_missing"))
    ds = SpeechDataset(data, store, tok, min_frames=3)
    reasons = dict(ds.skipped)
    assert "not in feature store" in reasons["valid_missing"]
    assert "1 frames, the model needs at least 3" in reasons["valid_001"]
    sp = ds.utt_ids.index("valid_000-sp0.9")
    assert ds.tokens[sp].tolist() == ds.tokens[ds.utt_ids.index("valid_000")].tolist()


def test_dataset_refuses_bad_list(tmp_path, exp):
    tok = Tokenizer.load(exp["token_dir"])
    bad = tmp_path / "dup.jsonl"
    line = open(exp["valid_data"]).readline()
    bad.write_text(line + line)
    with pytest.raises(DataError, match=r"dup.jsonl:2.*appears twice"):
        SpeechDataset(bad, exp["valid_feats"], tok)


def test_collate_pads_features_and_labels():
    items = [{"utt_id": "a", "feats": np.ones((2, 5, 3), np.float16), "ys": np.array([4, 5, 6])},
             None,  # an unreadable utterance is dropped
             {"utt_id": "b", "feats": np.ones((2, 7, 3), np.float16), "ys": np.array([7])}]
    b = collate(items)
    assert b["utt_ids"] == ["a", "b"] and b["feats"].shape == (2, 2, 7, 3) and b["feats"].dtype == torch.float16
    assert b["feats"][0, :, 5:].abs().sum() == 0 and b["feats"][1].sum() == 2 * 7 * 3
    assert b["feat_lens"].tolist() == [5, 7] and b["ys_lens"].tolist() == [3, 1]
    assert b["ys"].tolist() == [[4, 5, 6], [7, -1, -1]]
    assert collate([None]) is None


def test_loader_with_workers_matches_in_process(exp):
    tok = Tokenizer.load(exp["token_dir"])
    ds = SpeechDataset(exp["train_data"], exp["train_feats"], tok)
    sampler = BucketBatchSampler(ds.lengths, 120, seed=1)

    def run(workers):
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return [(b["utt_ids"], b["feats"].sum().item()) for b in loader]

    with_workers = run(2)
    assert ds.reader._h5 is None  # only the workers opened the HDF5 file, each its own handle
    assert with_workers == run(0) and sum(len(u) for u, _ in with_workers) == len(ds)
