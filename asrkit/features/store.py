"""The HDF5 feature store: one dataset per utterance, an index of lengths, the extractor in attrs.

Layout of `<split>.h5`:
    attrs            extractor description (feats_type, model, weights hash, layers, dtype, rates, ...)
                     and store_codec (how the arrays are kept: features/codecs.py; none if absent)
    feats/<utt_id>   (frames, dim), or (layers, frames, dim) when several layers are stacked
    scales/<utt_id>  the codec's scales, for a codec that has them
    index/utt_ids    every stored key, in writing order (length-sorted)
    index/num_frames their frame counts, so that samplers need not touch the datasets
    index/skipped    utterances that could not be read, with the reason ("utt_id\treason", the id
                     escaped as in fileio.escape_key)

A store appears under its final name only when complete: the dumper writes `<out>.partial/`
shards (resumable, see FeatureWriter) and renames or merges them at the end (finalize_store).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

from asrkit.errors import DataError
from asrkit.features.codecs import decode, encode
from asrkit.fileio import atomic_path, escape_key, unescape_key

# Extractor attributes that change what a model sees; anything else (the path a model was loaded
# from, the asrkit version, storage dtype, corpus statistics) may differ between stores.
COMPAT_KEYS = ("feats_type", "model_type", "weights_hash", "layers", "layer_reduce", "dim", "num_layers",
               "sample_rate", "frame_rate", "n_mels", "frame_length_ms", "frame_shift_ms", "whisper_input")
STATS_KEYS = ("num_utts", "num_skipped", "total_frames", "total_seconds")
JSON_ATTRS = ("extractor",)  # attributes that are mappings (features.extractors.ExtractorSpec)


def h5_name(key: str) -> str:
    """A key as a dataset name: as in the lists (fileio.escape_key), and '/' (HDF5's path separator)
    escaped too, and '.' and '..', which HDF5 takes for links. unescape_key undoes it: no key is lost
    or merged with another."""
    name = escape_key(key).replace("/", "%2F")
    return name.replace(".", "%2E") if name in (".", "..") else name


def speed_key(utt_id: str, factor: float) -> str:
    """Key of a speed-perturbed copy: `<utt_id>-sp0.9`; factor 1.0 keeps the utterance's own id."""
    return utt_id if factor == 1.0 else f"{utt_id}-sp{factor:g}"


def split_speed_key(key: str) -> tuple[str, float]:
    """(utt_id, speed factor) of a store key: inverse of speed_key."""
    m = re.fullmatch(r"(.+)-sp(\d+(?:\.\d+)?)", key)
    return (m.group(1), float(m.group(2))) if m else (key, 1.0)


def _from_h5(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_from_h5(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(h5: h5py.File | h5py.AttributeManager) -> dict:
    attrs = h5.attrs if isinstance(h5, h5py.File) else h5
    return {k: json.loads(_from_h5(v)) if k in JSON_ATTRS else _from_h5(v) for k, v in attrs.items()}


def write_attrs(h5: h5py.File, attrs: dict) -> None:
    for k, v in attrs.items():
        if k in JSON_ATTRS:  # a mapping: as JSON text
            v = json.dumps(v)
        h5.attrs[k] = np.asarray(v) if isinstance(v, (list, tuple)) else v


def check_compatible(store_attrs: dict, model_attrs: dict, where: str = "") -> None:
    """Raise DataError naming every extractor attribute on which a store and a model disagree."""
    diffs = []
    for key in COMPAT_KEYS:
        a, b = store_attrs.get(key), model_attrs.get(key)
        if a != b:
            diffs.append(f"{key}: store has {a!r}, model expects {b!r}")
    if diffs:
        desc = lambda attrs: attrs.get("ssl_model") or attrs.get("feats_type")  # noqa: E731
        raise DataError(
            "feature store was made by a different extractor than the model was trained on: "
            + "; ".join(diffs), where,
            f"dump the features again with the model's extractor ({desc(model_attrs)}), "
            f"or use a model trained on {desc(store_attrs)} features")


class FeatureReader:
    """Random access to a finished store by utt_id; the HDF5 file is opened lazily, read-only,
    once per process (so one reader can be shared with DataLoader workers)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise DataError("feature store not found", self.path, "run stage 1 (dump_feats) first")
        try:
            with h5py.File(self.path, "r") as f:
                if "index" not in f:
                    raise DataError("not a finished asrkit feature store (it has no index)", self.path,
                                    "run dump_feats again to finish it")
                self.attrs = read_attrs(f)
                ids = f["index/utt_ids"].asstr()[()].tolist()
                frames = f["index/num_frames"][()].tolist()
                self.skipped = [(unescape_key(k), why) for k, why in
                                (line.split("\t", 1) for line in f["index/skipped"].asstr()[()].tolist())]
        except OSError as e:
            raise DataError(f"cannot open the feature store: {e}", self.path,
                            "the file is damaged; delete it and run dump_feats again") from None
        self._frames = dict(zip(ids, frames))
        self.codec = self.attrs.get("store_codec", "none")
        self.dim = int(self.attrs["dim"])
        self.num_layers = int(self.attrs["num_layers"])
        self._h5 = self._pid = None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():  # a forked worker opens its own handle
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._h5

    def keys(self) -> list[str]:
        return list(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[str]:
        return iter(self._frames)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._frames

    def num_frames(self, utt_id: str) -> int:
        return self._frames[utt_id]

    def __getitem__(self, utt_id: str) -> np.ndarray:
        if utt_id not in self._frames:
            raise DataError(f"utterance {utt_id!r} is not in the feature store", self.path,
                            "dump the features of this split again, or check the utt_ids")
        f, name = self._file(), h5_name(utt_id)
        if self.codec == "none":
            return f["feats"][name][()]
        return decode(f["feats"][name][()], f["scales"][name][()], self.codec, self.attrs["dtype"])

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._pid = None

    def __getstate__(self):  # pickled into spawned workers without the open handle
        state = dict(self.__dict__)
        state["_h5"] = state["_pid"] = None
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FeatureWriter:
    """Appends utterances to one partial shard; a killed writer resumes where it stopped.

    Each batch is written, flushed, and only then its keys are appended (and fsynced) to the
    `.done` list beside the shard: on resume, datasets not in that list are dropped and redone,
    and a shard made with other extractor attributes (or unreadable after a hard kill) is restarted.
    """

    def __init__(self, path: str | os.PathLike, attrs: dict):
        self.path, self.done_path = Path(path), Path(f"{path}.done")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, int] = {}
        self.codec = attrs.get("store_codec", "none")
        self.h5 = self._resume(attrs) if self.path.exists() and self.done_path.exists() else None
        if self.h5 is None:
            self.h5 = h5py.File(self.path, "w")
            write_attrs(self.h5, attrs)
            self.h5.create_group("feats")
            self.h5.flush()
            self.done_path.write_text("", encoding="utf-8")
        self._done_file = open(self.done_path, "a", encoding="utf-8")

    def _resume(self, attrs: dict) -> h5py.File | None:
        try:
            h5 = h5py.File(self.path, "a")
        except OSError:
            return None  # damaged by a hard kill: start the shard over
        if read_attrs(h5) != json.loads(json.dumps(attrs)):
            h5.close()
            return None
        self.done = {k: n for k, n in read_done(self.path).items() if h5_name(k) in h5["feats"]}
        names = {h5_name(k) for k in self.done}
        for group in ("feats", "scales"):  # written but not recorded as done: redo
            for name in list(h5.get(group, [])):
                if name not in names:
                    del h5[group][name]
        return h5

    def write(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        lines = []
        for key, feats in items:
            name = h5_name(key)
            stored, scales = encode(feats, self.codec)
            for group, data in (("feats", stored), ("scales", scales)):
                if data is None:
                    continue
                g = self.h5.require_group(group)
                if name in g:
                    del g[name]
                g.create_dataset(name, data=data)
            frames = feats.shape[-2]
            self.done[key] = frames
            lines.append(f"{escape_key(key)}\t{frames}\n")
        self.h5.flush()
        self._done_file.write("".join(lines))
        self._done_file.flush()
        os.fsync(self._done_file.fileno())

    def close(self) -> None:
        self._done_file.close()
        self.h5.close()


def read_done(shard: str | os.PathLike) -> dict[str, int]:
    """{key: frames} recorded as written in a shard's `.done` list (a torn last line is ignored)."""
    done = {}
    path = Path(f"{shard}.done")
    for line in path.read_text(encoding="utf-8").split("\n") if path.exists() else []:
        key, _, frames = line.partition("\t")
        if frames.isdigit():
            done[unescape_key(key)] = int(frames)
    return done


def finalize_store(shards: list[Path], out: str | os.PathLike, attrs: dict,
                   skipped: list[tuple[str, str]]) -> dict:
    """Turn finished shards into the store at `out` (a rename for one shard, a merge for several);
    returns its statistics. `out` appears complete or not at all."""
    done = {k: n for shard in shards for k, n in read_done(shard).items()}
    stats = dict(num_utts=len(done), num_skipped=len(skipped), total_frames=int(sum(done.values())),
                 total_seconds=float(sum(done.values())) / float(attrs["frame_rate"]))
    if len(shards) == 1:
        with h5py.File(shards[0], "a") as h5:
            _write_index(h5, {**attrs, **stats}, done, skipped)
        os.replace(shards[0], out)
        return stats
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as dst:
        dst.create_group("feats")
        for shard in shards:
            with h5py.File(shard, "r") as src:
                for group in ("feats", "scales"):
                    if group not in src:
                        continue
                    dst_group = dst.require_group(group)
                    for key in read_done(shard):
                        src.copy(src[group][h5_name(key)], dst_group, name=h5_name(key))
        _write_index(dst, {**attrs, **stats}, done, skipped)
    return stats


def _write_index(h5: h5py.File, attrs: dict, done: dict[str, int], skipped: list[tuple[str, str]]) -> None:
    write_attrs(h5, attrs)
    if "index" in h5:
        del h5["index"]
    index = h5.create_group("index")
    str_dt = h5py.string_dtype("utf-8")
    index.create_dataset("utt_ids", data=np.array(list(done), dtype=object), dtype=str_dt)
    index.create_dataset("num_frames", data=np.array(list(done.values()), dtype=np.int64))
    index.create_dataset("skipped", data=np.array([f"{escape_key(k)}\t{r}" for k, r in skipped], dtype=object),
                         dtype=str_dt)


def slice_layers(src: str | os.PathLike, dst: str | os.PathLike, layers: list[int]) -> dict:
    """A copy of the store `src` with only these stored layers (the model's layer numbers, as in
    attrs["layers"], in the order given), in the same codec; `dst` appears complete or not at all.
    Returns its attrs. One layer left gives (frames, dim) features, several a stack."""
    reader = FeatureReader(src)
    have = list(reader.attrs.get("layers", []))
    if reader.num_layers == 1 or reader.attrs.get("layer_reduce") != "stack":
        raise DataError("this store keeps one (or one averaged) layer: nothing to slice", str(src),
                        "slice a store dumped with several layers (--ssl_layer all, or a list)")
    if missing := [x for x in layers if x not in have]:
        raise DataError(f"layer(s) {missing} are not in the store", str(src), f"it has layers {have}")
    if len(set(layers)) != len(layers) or not layers:
        raise DataError(f"give each layer once, at least one: got {layers}", "--layers")
    index = [have.index(x) for x in layers]
    attrs = {k: v for k, v in reader.attrs.items() if k not in STATS_KEYS}
    attrs.update(layers=list(layers), num_layers=len(layers), layer_reduce="stack" if len(layers) > 1 else "none")
    shard = Path(f"{dst}.partial") / "shard0.h5"
    if shard.parent.exists():  # an interrupted slicing: start over
        shutil.rmtree(shard.parent)
    writer = FeatureWriter(shard, attrs)
    keys = reader.keys()
    for i in range(0, len(keys), 64):
        batch = []
        for k in keys[i: i + 64]:
            feats = reader[k][index]
            batch.append((k, feats[0] if len(layers) == 1 else feats))
        writer.write(batch)
    writer.close()
    finalize_store([shard], dst, attrs, [tuple(x) for x in reader.skipped])
    shutil.rmtree(shard.parent)
    return FeatureReader(dst).attrs
