"""The HDF5 store: writer, resumable shards, finalize, reader, compatibility check."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from asrkit.errors import DataError
from asrkit.features.store import (FeatureReader, FeatureWriter, check_compatible, finalize_store,
                                   speed_key, split_speed_key)

ATTRS = dict(feats_type="wavlm", ssl_model="/some/dir", weights_hash="abc", layers=[6, 9],
             layer_reduce="stack", dim=4, num_layers=2, sample_rate=16000, frame_rate=50.0,
             dtype="float16", asrkit_version="0.1.0")


def feats(n, seed):
    return np.random.default_rng(seed).standard_normal((2, n, 4)).astype(np.float16)


def test_write_finalize_read(tmp_path):
    shard = tmp_path / "out.h5.partial" / "shard0.h5"
    w = FeatureWriter(shard, ATTRS)
    w.write([("a/1", feats(5, 0)), ("b%c", feats(7, 1))])
    w.close()
    stats = finalize_store([shard], tmp_path / "out.h5", ATTRS, [("bad", "cannot read audio")])
    assert stats["num_utts"] == 2 and stats["total_frames"] == 12 and stats["num_skipped"] == 1
    r = FeatureReader(tmp_path / "out.h5")
    assert r.keys() == ["a/1", "b%c"] and r.num_frames("b%c") == 7
    np.testing.assert_array_equal(r["a/1"], feats(5, 0))
    assert (r.dim, r.num_layers) == (4, 2) and r.attrs["layers"] == [6, 9]
    assert [tuple(x) for x in r.skipped] == [("bad", "cannot read audio")]
    r2 = pickle.loads(pickle.dumps(r))  # what a spawned DataLoader worker gets
    np.testing.assert_array_equal(r2["b%c"], feats(7, 1))
    with pytest.raises(DataError, match="'zz' is not in the feature store"):
        r["zz"]


def test_no_key_is_lost_or_merged_with_another(tmp_path):
    """Keys that HDF5 or the line-oriented lists would take apart: '.' and '..' (HDF5 links), '/', tab
    and newline (the lists' separators), '%' and what looks escaped. All are written, found by a resumed
    writer, merged, indexed and read back (a '.' used to crash the dump; a tab or newline was left out
    of the index, and every rerun started over)."""
    from asrkit.features.store import read_done

    keys = [".", "..", "a/b", "tab\tkey", "new\nline", "%", "%2F", "%25x", "plain", "\u2028"]
    shards = [tmp_path / "p" / "part0.h5", tmp_path / "p" / "part1.h5"]
    for i, shard in enumerate(shards):
        w = FeatureWriter(shard, ATTRS)
        w.write([(k, feats(3 + j, j)) for j, k in enumerate(keys) if j % 2 == i])
        w.close()
        again = FeatureWriter(shard, ATTRS)  # a resumed writer keeps all it recorded
        assert sorted(again.done) == sorted(k for j, k in enumerate(keys) if j % 2 == i)
        again.close()
    assert sorted(k for s in shards for k in read_done(s)) == sorted(keys)
    finalize_store(shards, tmp_path / "out.h5", ATTRS, [("skip\tme", "why"), (".", "because")])
    r = FeatureReader(tmp_path / "out.h5")
    assert sorted(r.keys()) == sorted(keys)
    for j, k in enumerate(keys):
        np.testing.assert_array_equal(r[k], feats(3 + j, j))
    assert sorted(map(tuple, r.skipped)) == [(".", "because"), ("skip\tme", "why")]


def test_merge_shards(tmp_path):
    shards = []
    for k in range(2):
        shards.append(tmp_path / f"shard{k}.h5")
        w = FeatureWriter(shards[-1], ATTRS)
        w.write([(f"u{k}", feats(3 + k, k))])
        w.close()
    finalize_store(shards, tmp_path / "out.h5", ATTRS, [])
    r = FeatureReader(tmp_path / "out.h5")
    assert sorted(r.keys()) == ["u0", "u1"] and r.num_frames("u1") == 4
    np.testing.assert_array_equal(r["u1"], feats(4, 1))


def test_writer_resumes_only_recorded_utterances(tmp_path):
    shard = tmp_path / "shard0.h5"
    w = FeatureWriter(shard, ATTRS)
    w.write([("u0", feats(3, 0))])
    w.h5["feats"].create_dataset("u1", data=feats(3, 1))  # written, but killed before recorded
    w.close()
    w = FeatureWriter(shard, ATTRS)
    assert w.done == {"u0": 3} and list(w.h5["feats"]) == ["u0"]
    w.close()
    w = FeatureWriter(shard, {**ATTRS, "layers": [12]})  # other options: start over
    assert w.done == {}
    w.close()


def test_check_compatible_names_differences():
    check_compatible(ATTRS, {**ATTRS, "ssl_model": "other/path", "asrkit_version": "9", "dtype": "float32"})
    with pytest.raises(DataError, match=r"layers: store has \[6, 9\], model expects \[12\]") as e:
        check_compatible(ATTRS, {**ATTRS, "layers": [12], "weights_hash": "def"})
    assert "weights_hash" in str(e.value)
    with pytest.raises(DataError, match="feats_type: store has 'fbank'"):
        check_compatible({**ATTRS, "feats_type": "fbank"}, ATTRS)


def test_missing_or_unfinished_store(tmp_path):
    with pytest.raises(DataError, match="not found"):
        FeatureReader(tmp_path / "none.h5")
    w = FeatureWriter(tmp_path / "partial.h5", ATTRS)
    w.close()
    with pytest.raises(DataError, match="not a finished"):
        FeatureReader(tmp_path / "partial.h5")


def test_speed_keys():
    assert speed_key("u1", 1.0) == "u1" and speed_key("u1", 0.9) == "u1-sp0.9"
    assert split_speed_key("u1-sp1.1") == ("u1", 1.1) and split_speed_key("u-sp") == ("u-sp", 1.0)


@pytest.mark.parametrize("codec", ["int8", "int8f"])
def test_int8_codecs_round_trip_merge_and_resume(tmp_path, codec):
    """Decoded features are float16 within half a quantization step of the stored ones; the arrays
    take about half the bytes; merging shards and resuming keep the scales with their features."""
    from asrkit.features.codecs import decode, encode

    g = np.random.default_rng(7)
    x = (g.standard_normal((2, 300, 64)) * g.uniform(0.1, 20, (1, 1, 64))).astype(np.float16)  # channels of
    q, s = encode(x, codec)  # very different scales, as WavLM's are
    assert q.dtype == np.int8 and s.dtype == np.float16 and s.shape == ((2, 64) if codec == "int8" else (2, 300))
    y = decode(q, s, codec, "float16")
    assert y.dtype == np.float16 and y.shape == x.shape
    step = np.expand_dims(s.astype(np.float32), -2 if codec == "int8" else -1)
    assert np.all(np.abs(y.astype(np.float32) - x.astype(np.float32)) <= 0.51 * step + 1e-2 * np.abs(x))
    assert (q.nbytes + s.nbytes) / x.nbytes < 0.55
    zero = np.zeros((3, 4), np.float16)  # an all-zero channel or frame has scale 0: decodes to zeros
    np.testing.assert_array_equal(decode(*encode(zero, codec), codec, "float16"), zero)

    attrs = {**ATTRS, "store_codec": codec}
    shards = []
    for k in range(2):
        shards.append(tmp_path / f"shard{k}.h5")
        w = FeatureWriter(shards[-1], attrs)
        w.write([(f"u{k}", feats(5 + k, k))])
        if k == 1:  # killed after writing u2's arrays, before recording it
            w.h5["feats"].create_dataset("u2", data=q[0])
            w.h5["scales"].create_dataset("u2", data=s[0])
        w.close()
    w = FeatureWriter(shards[1], attrs)  # resumed: the unrecorded arrays and scales are gone
    assert w.done == {"u1": 6} and list(w.h5["feats"]) == ["u1"] == list(w.h5["scales"])
    w.close()
    finalize_store(shards, tmp_path / "out.h5", attrs, [])
    r = FeatureReader(tmp_path / "out.h5")
    assert r.codec == codec and sorted(r.keys()) == ["u0", "u1"]
    for k in range(2):
        want = decode(*encode(feats(5 + k, k), codec), codec, "float16")
        np.testing.assert_array_equal(r[f"u{k}"], want)
        assert np.abs(r[f"u{k}"].astype(np.float32) - feats(5 + k, k)).max() < 0.05


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_slice_layers(tmp_path, codec):
    """slice_store keeps the chosen stacked layers, in the order given, in the same codec; one layer
    left is stored unstacked; a layer the store lacks, or a one-layer store, is a clear error."""
    from asrkit.bin import slice_store

    attrs = {**ATTRS, "layers": [0, 4, 8], "num_layers": 3, "store_codec": codec}
    shard = tmp_path / "src.partial" / "shard0.h5"
    w = FeatureWriter(shard, attrs)
    x = {f"u{i}": np.random.default_rng(i).standard_normal((3, 5 + i, 4)).astype(np.float16) for i in range(3)}
    w.write(list(x.items()))
    w.close()
    finalize_store([shard], tmp_path / "train.h5", attrs, [("bad", "unreadable")])
    src = FeatureReader(tmp_path / "train.h5")
    slice_store.main(["--src", str(tmp_path / "train.h5"), "--out_dir", str(tmp_path / "two"), "--layers", "8,0"])
    two = FeatureReader(tmp_path / "two" / "train.h5")
    assert two.attrs["layers"] == [8, 0] and two.num_layers == 2 and two.codec == codec
    assert two.skipped == [("bad", "unreadable")] and two.attrs["num_utts"] == 3
    for k in x:
        np.testing.assert_allclose(two[k], src[k][[2, 0]], atol=0.02 if codec == "int8" else 0)
    slice_store.main(["--src", str(tmp_path / "train.h5"), "--out_dir", str(tmp_path / "one"), "--layers", "4"])
    one = FeatureReader(tmp_path / "one" / "train.h5")
    assert one.num_layers == 1 and one.attrs["layer_reduce"] == "none" and one["u1"].shape == (6, 4)
    with pytest.raises(DataError, match=r"layer\(s\) \[5\] are not in the store"):
        slice_store.main(["--src", str(tmp_path / "train.h5"), "--out_dir", str(tmp_path / "x"), "--layers", "5"])
    with pytest.raises(DataError, match="nothing to slice"):
        slice_store.main(["--src", str(tmp_path / "one" / "train.h5"), "--out_dir", str(tmp_path / "y"),
                          "--layers", "4"])
