"""Training data: stored features + token ids, length-bucketed batches by total frames, collate.

The Dataset reads one utterance's features from the HDF5 store (opened lazily, read-only, once per
DataLoader worker) and its token ids. `BucketBatchSampler` groups utterances of similar length so
that a batch holds at most `batch_bins` padded frames, shuffles the batch order per epoch from
`seed + epoch`, deals the batches to DDP ranks (every rank gets the same number, every utterance
is seen once per epoch) and can start an epoch from a saved position. SpecAugment is part of the
model (asrkit.nets), so that it runs on the device and only in training.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from asrkit.errors import DataError
from asrkit.features.store import FeatureReader, split_speed_key
from asrkit.fileio import read_jsonl

log = logging.getLogger(__name__)
IGNORE_ID = -1


def load_texts(data_jsonl: str) -> dict[str, str]:
    """utt_id -> text of a split list; a line without utt_id or text, or a repeated id, is an error."""
    texts: dict[str, str] = {}
    for lineno, rec in read_jsonl(data_jsonl):
        where = f"{data_jsonl}:{lineno}"
        if "utt_id" not in rec or not isinstance(rec.get("text"), str):
            raise DataError("a record needs 'utt_id' and a string 'text'", where, "rerun stage 0")
        if rec["utt_id"] in texts:
            raise DataError(f"utterance {rec['utt_id']!r} appears twice", where, "utt_id must be unique")
        texts[rec["utt_id"]] = rec["text"]
    return texts


class SpeechDataset(Dataset):
    """Utterances present in both the split list and the feature store, with their token ids.

    Utterances that cannot be used (no features, no tokens, too few frames) are left out and listed in
    `.skipped` as (utt_id, reason), so that one bad utterance never stops a run.
    """

    def __init__(self, data_jsonl: str, feats_h5: str, tokenizer, min_frames: int = 1):
        self.feats_h5 = str(feats_h5)
        texts = load_texts(data_jsonl)
        # The reader opens the file lazily, once per process: each DataLoader worker gets its own handle.
        self.reader = reader = FeatureReader(self.feats_h5)
        self.attrs, self.dim, self.num_layers = dict(reader.attrs), reader.dim, reader.num_layers
        self.skipped: list[tuple[str, str]] = [(u, f"feature extraction: {r}") for u, r in reader.skipped
                                               if split_speed_key(u)[0] in texts]
        self.utt_ids: list[str] = []
        self.tokens: list[np.ndarray] = []
        lengths = []
        stored = set(reader.keys())
        for utt_id in sorted(stored):
            # speed-perturbed copies ("<utt_id>-sp0.9") carry the original's text
            text = texts.get(utt_id, texts.get(split_speed_key(utt_id)[0]))
            if text is None:
                continue  # in the store but not in this list: not part of this split
            ids = tokenizer.encode(text)
            frames = reader.num_frames(utt_id)
            if not ids:
                self.skipped.append((utt_id, "empty transcript after tokenization"))
            elif frames < min_frames:
                self.skipped.append((utt_id, f"{frames} frames, the model needs at least {min_frames}"))
            else:
                self.utt_ids.append(utt_id)
                self.tokens.append(np.asarray(ids, dtype=np.int64))
                lengths.append(frames)
        failed = {u for u, _ in self.skipped}
        self.skipped += [(u, f"not in feature store {self.feats_h5}") for u in sorted(set(texts) - stored - failed)]
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if not self.utt_ids:
            raise DataError("no usable utterance: the list and the feature store share none",
                            f"{data_jsonl} / {self.feats_h5}", "check that stage 1 ran on this split")
        if self.skipped:
            log.warning("%s: %d of %d utterances skipped, e.g. %s: %s", data_jsonl, len(self.skipped),
                        len(self.skipped) + len(self.utt_ids), *self.skipped[0])

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        utt_id = self.utt_ids[index]
        try:
            feats = self.reader[utt_id]
        except Exception as e:  # a damaged entry: skip this utterance, keep the run going
            log.warning("%s: cannot read features of %s (%s); utterance skipped", self.feats_h5, utt_id, e)
            return None
        return {"utt_id": utt_id, "feats": feats, "ys": self.tokens[index]}


def pad_to(arrays: Sequence[np.ndarray], axis: int, value) -> np.ndarray:
    """Stack arrays that differ only in size along `axis`, padding them with `value`.

    numpy, not torch: torch's multi-threaded copies of many small tensors are far slower here.
    """
    axis = axis % arrays[0].ndim
    shape = list(arrays[0].shape)
    shape[axis] = max(a.shape[axis] for a in arrays)
    out = np.full((len(arrays), *shape), value, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i][(slice(None),) * axis + (slice(0, a.shape[axis]),)] = a
    return out


def pad_feats(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (T, D) or (L, T, D) of a batch -> (B, [L,] T_max, D) zero-padded in their dtype, lengths (B,)."""
    return (torch.from_numpy(pad_to(arrays, -2, 0)),
            torch.tensor([a.shape[-2] for a in arrays], dtype=torch.long))


def collate(items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Pad a batch: feats (B, [L,] T, D) with zeros in the stored dtype, ys (B, U) with -1."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    feats, feat_lens = pad_feats([it["feats"] for it in items])
    return {
        "utt_ids": [it["utt_id"] for it in items],
        "feats": feats,
        "feat_lens": feat_lens,
        "ys": torch.from_numpy(pad_to([it["ys"] for it in items], 0, IGNORE_ID)),
        "ys_lens": torch.tensor([len(it["ys"]) for it in items], dtype=torch.long),
    }


def make_batches(lengths: Sequence[int], batch_bins: int) -> list[list[int]]:
    """Indices sorted by length, cut so that batch size x longest length stays within batch_bins.

    An utterance longer than batch_bins gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > batch_bins:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class BucketBatchSampler(Sampler):
    """Batches of similar-length utterances by total padded frames, dealt evenly to DDP ranks.

    Ranks take turns within groups of `num_replicas` neighbouring batches, so that the ranks of one
    step carry similar lengths. If the batch count does not divide by the number of ranks, the
    biggest batches are split in two (still every utterance once); only when no batch can be split
    are the first batches repeated. `set_epoch(epoch, start)` sets the shuffle and the position to
    resume from; iteration then yields the remaining `len(self)` batches of this rank.
    """

    def __init__(self, lengths: Sequence[int], batch_bins: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if batch_bins <= 0:
            raise ValueError(f"batch_bins must be positive, got {batch_bins}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.lengths = np.asarray(lengths)
        self.shuffle, self.seed = shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.batches = make_batches(self.lengths.tolist(), batch_bins)
        while len(self.batches) % num_replicas:
            big = max(range(len(self.batches)), key=lambda b: len(self.batches[b]))
            if len(self.batches[big]) < 2:
                self.batches += self.batches[: num_replicas - len(self.batches) % num_replicas]
                log.warning("fewer utterances than ranks can share: %d batches repeated",
                            len(self.batches) % num_replicas)
                break
            b = self.batches[big]
            self.batches[big: big + 1] = [b[: len(b) // 2], b[len(b) // 2:]]
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for `epoch`, and skip this rank's first `start` batches (mid-epoch resume)."""
        self.epoch, self.start = epoch, start

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch, from its start."""
        groups = [self.batches[i: i + self.num_replicas] for i in range(0, len(self.batches), self.num_replicas)]
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(groups))
            groups = [groups[g] for g in order]
        return [g[self.rank] for g in groups][self.start:]

    def __iter__(self):
        return iter(self.epoch_batches())

    def __len__(self) -> int:
        return len(self.batches) // self.num_replicas - self.start

    def padded_frames(self, batch: Sequence[int]) -> int:
        return len(batch) * int(self.lengths[list(batch)].max())

    def largest(self, n: int) -> list[list[int]]:
        """This rank's `n` batches with the most padded frames (for a pre-flight memory check)."""
        mine = [b for i, b in enumerate(self.batches) if i % self.num_replicas == self.rank]
        return sorted(mine, key=self.padded_frames, reverse=True)[:n]
