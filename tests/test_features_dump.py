"""Stage 1 feature dump: exact batching, resume, refusal of foreign stores, bad and odd audio."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from asrkit.audio import load_audio, resample
from asrkit.errors import DataError
from dataclasses import fields

from asrkit.features import dump as dump_mod
from asrkit.features.extractors import ExtractorSpec, SSLExtractor
from asrkit.features.store import FeatureReader, check_compatible
from asrkit.ssl import parse_layers
from tests.conftest import write_manifest, write_tone


def dump(data, out, **kw):
    """dump_mod.dump, with the ExtractorSpec fields among the keywords (the tests' shorthand)."""
    spec = ExtractorSpec(**{k: kw.pop(k) for k in {f.name for f in fields(ExtractorSpec)} & set(kw)})
    return dump_mod.dump(data, out, spec, **kw)


def read_store(path):
    r = FeatureReader(path)
    return r, {k: r[k] for k in r.keys()}


@pytest.mark.parametrize("speedups", [True, False])
def test_batched_equals_one_by_one(tiny_wavlm, speedups):
    """Batched output equals the stock HF model's one by one, with the CPU speed patches and without."""
    from transformers import AutoModel

    rng = np.random.default_rng(0)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 1600, 12345, 4000)]
    ext = SSLExtractor(str(tiny_wavlm), "all", dtype="float32", compute_dtype="float32", speedups=speedups)
    assert ext.speedups == speedups and SSLExtractor(str(tiny_wavlm), "1").speedups  # on by default on CPU
    patched = type(ext.model.feature_extractor.conv_layers[1]).__module__ == "asrkit.features.speedups"
    assert patched == speedups
    batched = ext(wavs)
    ref_model = AutoModel.from_pretrained(tiny_wavlm).eval()  # unmodified HF model, one at a time
    with torch.inference_mode():
        refs = [torch.stack(ref_model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states)[:, 0]
                for w in wavs]
        padded = torch.stack([torch.nn.functional.pad(torch.from_numpy(w), (0, 16000 - len(w))) for w in wavs])
        naive = torch.stack(ref_model(padded, output_hidden_states=True).hidden_states)
    for i, (b, ref) in enumerate(zip(batched, refs)):
        assert b.shape == tuple(ref.shape) == (3, ext.num_frames(len(wavs[i])), 64)
        np.testing.assert_allclose(b, ref.numpy(), atol=2e-3, rtol=1e-3)  # fp16 storage tolerance
    # the test can fail: zero-padding without our masking changes the short utterances
    assert (naive[:, 2, :4] - refs[2]).abs().max() > 0.05


def test_layer_specs(tiny_wavlm):
    assert parse_layers("6,9,12", 12) == ([6, 9, 12], "stack")
    assert parse_layers("mean:6-8", 12) == ([6, 7, 8], "mean")
    assert parse_layers("all", 2) == ([0, 1, 2], "stack") and parse_layers("9", 12) == ([9], "none")
    assert parse_layers("last", 6) == ([6], "none") and parse_layers("last-2", 6) == ([4], "none")
    with pytest.raises(DataError, match="layers 0-2"):
        parse_layers("9", 2)
    with pytest.raises(DataError, match="layers 0-2"):
        parse_layers("last-3", 2)
    with pytest.raises(DataError, match="bad layer spec"):
        parse_layers("x", 2)
    wav = [(0.1 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32)]
    stacked = SSLExtractor(str(tiny_wavlm), "1,2", dtype="float32")(wav)[0]
    mean = SSLExtractor(str(tiny_wavlm), "mean:1-2", dtype="float32")(wav)[0]
    one = SSLExtractor(str(tiny_wavlm), "2", dtype="float32")(wav)[0]
    assert stacked.shape == (2, 24, 64) and mean.shape == one.shape == (24, 64)
    np.testing.assert_allclose(mean, stacked.mean(0), atol=1e-5)
    np.testing.assert_allclose(one, stacked[1], atol=1e-5)


def test_dump_speed_perturb_and_verify(tiny_corpus, tiny_wavlm, caplog):
    out = tiny_corpus.parent / "dump" / "train.h5"
    dump(str(tiny_corpus), str(out), ssl_model=str(tiny_wavlm), ssl_layer="2", speed_perturb="0.9 1.0 1.1",
         nj=2, batch_seconds=3, progress=False)
    r, feats = read_store(out)
    assert len(r) == 72 and r.attrs["layers"] == [2] and r.attrs["frame_rate"] == 50.0
    assert r.attrs["dtype"] == "float16" and r.attrs["ssl_model"] == str(tiny_wavlm)
    assert not (tiny_corpus.parent / "dump" / "train.h5.partial").exists()
    ext = SSLExtractor(str(tiny_wavlm), "2", dtype="float16")
    wav = load_audio(str(tiny_corpus.parent / "wav/spk1/u3.wav"))
    for factor, key in [(1.0, "spk1_u3"), (0.9, "spk1_u3-sp0.9"), (1.1, "spk1_u3-sp1.1")]:
        w = wav if factor == 1.0 else resample(wav, int(16000 * factor), 16000)
        assert r.num_frames(key) == ext.num_frames(len(w)) == int((1.25 / factor * 16000 - 400) // 320 + 1)
        np.testing.assert_allclose(feats[key], ext([w])[0], atol=2e-2)
    mtime = out.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="asrkit")
    dump(str(tiny_corpus), str(out), ssl_model=str(tiny_wavlm), ssl_layer="2", speed_perturb="0.9 1.0 1.1",
         nj=0, progress=False)
    assert out.stat().st_mtime_ns == mtime and "nothing to do" in caplog.text
    dump(str(tiny_corpus), str(out), ssl_model=str(tiny_wavlm), ssl_layer="1", nj=0, progress=False)
    r = FeatureReader(out)
    assert len(r) == 24 and r.attrs["layers"] == [1]  # other options: redone


def killed_after_writes(monkeypatch, n: int) -> list[list[str]]:
    """The dump is killed (KeyboardInterrupt) at its n+1-th batch write; the keys of the n written."""
    real_write, calls = dump_mod.FeatureWriter.write, []

    def dying_write(self, items):
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        calls.append([k for k, _ in items])
        real_write(self, items)

    monkeypatch.setattr(dump_mod.FeatureWriter, "write", dying_write)
    return calls


@pytest.mark.parametrize("feats_type,nj", [("wavlm", 0), ("fbank", 0), ("wavlm", 2)])
def test_kill_and_resume_gives_the_same_store(tiny_corpus, tiny_wavlm, monkeypatch, feats_type, nj):
    """A killed dump rerun ends identical to an uninterrupted one; with nj = 2 the interrupted and the
    resumed runs extract in two worker processes, the reference in the main process."""
    kw = dict(feats_type=feats_type, ssl_model=str(tiny_wavlm), ssl_layer="1,2", speed_perturb="1.0 1.1",
              batch_seconds=4, progress=False)
    ref_out = tiny_corpus.parent / "ref.h5"
    dump(str(tiny_corpus), str(ref_out), nj=0, **kw)
    kw["nj"] = nj
    _, ref = read_store(ref_out)

    real_write = dump_mod.FeatureWriter.write
    out = tiny_corpus.parent / "out.h5"
    killed_after_writes(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        dump(str(tiny_corpus), str(out), **kw)
    assert not out.exists() and (tiny_corpus.parent / "out.h5.partial").is_dir()
    monkeypatch.setattr(dump_mod.FeatureWriter, "write", real_write)
    done_before = len(dump_mod.read_done(tiny_corpus.parent / "out.h5.partial" / "part0.h5"))
    assert 0 < done_before < 48
    seen, real_features, pids = [], dump_mod._features, tiny_corpus.parent / "pids"

    def features(*args):  # which processes extract (workers are forked: they run this too)
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real_features(*args)

    monkeypatch.setattr(dump_mod.FeatureWriter, "write",
                        lambda self, items: seen.extend(k for k, _ in items) or real_write(self, items))
    monkeypatch.setattr(dump_mod, "_features", features)
    dump(str(tiny_corpus), str(out), **kw)
    assert len(seen) == 48 - done_before  # only the rest was extracted
    extractors = set(pids.read_text().split())
    assert extractors == {str(os.getpid())} if nj == 0 else len(extractors) == 2 and str(os.getpid()) not in extractors
    r, got = read_store(out)
    assert sorted(got) == sorted(ref) and r.attrs == FeatureReader(ref_out).attrs
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_a_resumed_dump_whose_audio_changed_starts_afresh(tiny_corpus, monkeypatch):
    """Killed, then an utterance's audio replaced (same length, same path): the parts made from the old
    audio are not kept (they used to be: the resume checked the utterance ids only)."""
    real_write = dump_mod.FeatureWriter.write
    out = tiny_corpus.parent / "out.h5"
    calls = killed_after_writes(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        dump(str(tiny_corpus), str(out), feats_type="fbank", batch_seconds=4, nj=0, progress=False)
    done = calls[0][0]  # an utterance extracted before the kill
    wav = tiny_corpus.parent / "wav" / done.split("_")[0] / f"{done.split('_')[1]}.wav"
    seconds = len(load_audio(str(wav))) / 16000
    write_tone(wav, seconds=seconds, freq=900.0)
    monkeypatch.setattr(dump_mod.FeatureWriter, "write", real_write)
    dump(str(tiny_corpus), str(out), feats_type="fbank", batch_seconds=4, nj=0, progress=False)
    fresh = tiny_corpus.parent / "fresh.h5"
    dump(str(tiny_corpus), str(fresh), feats_type="fbank", batch_seconds=4, nj=0, progress=False)
    np.testing.assert_array_equal(FeatureReader(out)[done], FeatureReader(fresh)[done])


def test_a_second_writer_is_refused_and_the_first_ones_parts_are_kept(tiny_corpus, monkeypatch):
    """A dump on an output that another dump is writing is refused before it touches anything (it used to
    take the other's open part for a damaged one and delete it); so is one whose part another process
    holds open for writing (HDF5's lock)."""
    import subprocess
    import sys

    from asrkit.fileio import exclusive

    real_write = dump_mod.FeatureWriter.write
    out = tiny_corpus.parent / "out.h5"
    kw = dict(feats_type="fbank", batch_seconds=4, nj=0, progress=False)
    killed_after_writes(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        dump(str(tiny_corpus), str(out), **kw)
    monkeypatch.setattr(dump_mod.FeatureWriter, "write", real_write)
    part = tiny_corpus.parent / "out.h5.partial" / "part0.h5"
    held = sorted(dump_mod.read_done(part))
    with exclusive(f"{out}.partial.lock", "the first dump"):  # the first dump, still running
        with pytest.raises(DataError, match=r"out.h5.partial is being written by another process \(pid \d+"):
            dump(str(tiny_corpus), str(out), **kw)
    assert sorted(dump_mod.read_done(part)) == held
    opener = subprocess.Popen([sys.executable, "-c", f"import h5py, time; f = h5py.File({str(part)!r}, 'a'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert opener.stdout.readline().strip() == "open"
        with pytest.raises(DataError, match="another process has it open for writing"):
            dump(str(tiny_corpus), str(out), **kw)
    finally:
        opener.kill()
        opener.wait()
    assert sorted(dump_mod.read_done(part)) == held
    dump(str(tiny_corpus), str(out), **kw)  # the first one's work resumed
    assert len(FeatureReader(out)) == 24 and not (tiny_corpus.parent / "out.h5.partial.lock").exists()


def test_odd_ids_are_dumped_and_a_rerun_finds_the_store_complete(tiny_corpus, tmp_path, caplog):
    """A dump given ids that stage 0 would drop or that HDF5 takes apart ('.' crashed it; a tab left the
    key out of the index, so every rerun started over) stores them all and is complete on rerun."""
    from asrkit.fileio import load_jsonl, write_jsonl

    records = [dict(r, audio=str(tiny_corpus.parent / r["audio"])) for r in load_jsonl(tiny_corpus)[:4]]
    for r, utt in zip(records, [".", "..", "tab\tid", "new\nline"]):
        r["utt_id"] = utt
    data, out = tmp_path / "odd.jsonl", tmp_path / "odd.h5"
    write_jsonl(data, records)
    dump(str(data), str(out), feats_type="fbank", nj=0, progress=False)
    assert sorted(FeatureReader(out).keys()) == sorted(r["utt_id"] for r in records)
    caplog.set_level(logging.INFO, logger="asrkit")
    dump(str(data), str(out), feats_type="fbank", nj=0, progress=False)
    assert "nothing to do" in caplog.text


def test_foreign_store_is_refused(tiny_corpus, tiny_wavlm, tmp_path):
    from asrkit.random_models import save_random_ssl

    other = save_random_ssl(tmp_path / "other", preset="tiny", seed=1)
    stores = {}
    for name, kw in [("a", dict(ssl_model=str(tiny_wavlm))), ("b", dict(ssl_model=str(other))),
                     ("fb", dict(feats_type="fbank"))]:
        dump(str(tiny_corpus), str(tmp_path / f"{name}.h5"), ssl_layer="2", nj=0, progress=False, **kw)
        stores[name] = FeatureReader(tmp_path / f"{name}.h5").attrs
    check_compatible(stores["a"], {**stores["a"], "ssl_model": "/moved/elsewhere"})
    with pytest.raises(DataError, match="weights_hash: store has"):
        check_compatible(stores["b"], stores["a"])
    with pytest.raises(DataError, match="feats_type: store has 'fbank', model expects 'wavlm'.*dim"):
        check_compatible(stores["fb"], stores["a"])


def test_bad_and_odd_audio(tmp_path, tiny_wavlm):
    d = tmp_path / "c"
    write_tone(d / "sr8k.wav", seconds=1.0, sr=8000)
    write_tone(d / "sr44k.wav", seconds=1.0, sr=44100)
    write_tone(d / "stereo.wav", seconds=1.0, channels=2)
    write_tone(d / "short.wav", seconds=0.1)
    write_tone(d / "long.wav", seconds=2.0, seed=3)
    write_tone(d / "tiny.wav", seconds=0.01)
    (d / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    recs = [dict(utt_id=n, audio=f"{n}.wav") for n in ("sr8k", "sr44k", "stereo", "short", "tiny", "garbage")]
    recs += [dict(utt_id="missing", audio="nope.wav", duration=1.0),
             dict(utt_id="seg", audio="long.wav", start=0.5, end=1.25)]
    data = write_manifest(d / "list.jsonl", recs)
    for feats_type, rate, frames, nj in [("wavlm", 50, lambda n: (n - 400) // 320 + 1, 2),  # in 2 workers
                                         ("fbank", 100, lambda n: (n - 400) // 160 + 1, 0)]:
        out = tmp_path / f"{feats_type}.h5"
        dump(str(data), str(out), feats_type=feats_type, ssl_model=str(tiny_wavlm), ssl_layer="2", nj=nj,
             batch_seconds=1.5, progress=False)
        r, feats = read_store(out)
        assert sorted(r.keys()) == ["seg", "short", "sr44k", "sr8k", "stereo"]
        assert r.attrs["frame_rate"] == rate
        for k in ("sr8k", "sr44k", "stereo"):
            assert r.num_frames(k) == frames(16000)
        assert r.num_frames("short") == frames(1600) and r.num_frames("seg") == frames(12000)
        listed = dict(line.split("\t", 1) for line in
                      (tmp_path / f"{feats_type}.h5.skipped.tsv").read_text().splitlines())
        assert sorted(listed) == ["garbage", "missing", "tiny"] and "too short" in listed["tiny"]
        assert "nope.wav" in listed["missing"] and "cannot read audio" in listed["garbage"]
        assert sorted(k for k, _ in r.skipped) == sorted(listed)
        assert np.isfinite(feats["sr44k"].astype(np.float32)).all()
    # the segment is the cut of the file, not its beginning
    ext = SSLExtractor(str(tiny_wavlm), "2")
    cut = load_audio(str(d / "long.wav"))[8000:20000]
    seg = FeatureReader(tmp_path / "wavlm.h5")["seg"]
    assert seg.shape == ((12000 - 400) // 320 + 1, 64)
    np.testing.assert_allclose(seg, ext([cut])[0], atol=2e-2)


def test_long_utterance_windows(tiny_wavlm):
    ext = SSLExtractor(str(tiny_wavlm), "2", dtype="float32")
    wav = (0.1 * np.random.default_rng(2).standard_normal(5 * 16000 + 77)).astype(np.float32)
    long = ext.extract_long(wav, 16000)
    assert long.shape == ext([wav])[0].shape  # windows line up with the whole file's frames
    # first window: 49 frames (15680 samples) + 80 samples of overlap, the longest that fits 16000
    np.testing.assert_allclose(long[:49], ext([wav[:15760]])[0], atol=1e-4)
    assert np.abs(long[49:60] - ext([wav[15680:15680 + 15760]])[0][:11]).max() < 1e-4


def test_cli_and_bad_list(tmp_path, tiny_corpus, tiny_wavlm):
    from asrkit.bin.dump_feats import main

    out = tmp_path / "cli.h5"
    main(["--data", str(tiny_corpus), "--out", str(out), "--feats_type", "fbank", "--nj", "0"])
    r = FeatureReader(out)
    assert len(r) == 24 and r.dim == 80 and r.attrs["feats_type"] == "fbank"
    bad = write_manifest(tmp_path / "bad.jsonl", [{"utt_id": "a", "audio": "x.wav"}, {"utt_id": "a", "audio": "y"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: utt_id 'a' appears twice"):
        main(["--data", str(bad), "--out", str(tmp_path / "b.h5"), "--feats_type", "fbank"])


def test_cli_several_lists_one_model_load(tmp_path, tiny_corpus, tiny_wavlm, monkeypatch):
    from asrkit.bin import dump_feats
    from asrkit.fileio import load_jsonl

    recs = [dict(r, audio=str(tiny_corpus.parent / r["audio"])) for r in load_jsonl(tiny_corpus)]
    a, b = write_manifest(tmp_path / "a.jsonl", recs[:5]), write_manifest(tmp_path / "b.jsonl", recs[5:8])
    built = []
    real = ExtractorSpec.build
    monkeypatch.setattr(ExtractorSpec, "build", lambda self, device="cpu": built.append(self) or real(self, device))
    dump_feats.main(["--data", str(a), str(b), "--out", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                     "--feats_type", "wavlm", "--ssl_model", str(tiny_wavlm), "--ssl_layer", "1", "--nj", "0",
                     "--speed_perturb", "0.9 1.0", "--speed_perturb_data", str(a)])
    assert len(built) == 1  # one model for both lists
    assert len(FeatureReader(tmp_path / "a.h5")) == 10 and len(FeatureReader(tmp_path / "b.h5")) == 3  # a perturbed
    with pytest.raises(DataError, match="one store per list"):
        dump_feats.main(["--data", str(a), str(b), "--out", str(tmp_path / "c.h5"), "--feats_type", "fbank"])


def _rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def test_bf16_compute_close_to_fp32_and_batching_free(tiny_wavlm):
    from transformers import AutoModel

    rng = np.random.default_rng(3)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 15000, 9000, 4000, 1600)]
    bf16 = SSLExtractor(str(tiny_wavlm), "all", dtype="float32", compute_dtype="bfloat16")
    assert bf16.attrs["compute_dtype"] == "bfloat16"
    ref_model = AutoModel.from_pretrained(tiny_wavlm).eval()
    with torch.inference_mode():
        refs = [torch.stack(ref_model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states)[:, 0]
                .numpy() for w in wavs]
    batched = bf16(wavs)
    for w, b, ref in zip(wavs, batched, refs):
        assert b.shape == ref.shape
        # bf16 keeps 8 bits of mantissa: about 1% off fp32, far from a wrong computation (~100%)
        assert _rel_rms(b, ref) < 0.03, _rel_rms(b, ref)
        # the first layer (and its group norm) runs in fp32: layer 0 of the transformer input is close
        assert _rel_rms(b[0], ref[0]) < 0.02
        # batching does not change an utterance's bf16 features beyond a rounding step here and there
        one = bf16([w])[0]
        assert _rel_rms(b, one) < 2e-3 and np.abs(b - one).max() < 0.1


def test_auto_compute_dtype_follows_the_cpu(tiny_wavlm, monkeypatch):
    from asrkit.features import extractors

    monkeypatch.setattr(extractors, "cpu_has_native_bf16", lambda: False)
    assert SSLExtractor(str(tiny_wavlm), "2").attrs["compute_dtype"] == "float32"
    monkeypatch.setattr(extractors, "cpu_has_native_bf16", lambda: True)
    ext = SSLExtractor(str(tiny_wavlm), "2")
    assert ext.attrs["compute_dtype"] == "bfloat16"
    # linear and conv weights are cast once, except the first conv's (which runs in fp32)
    assert ext.model.encoder.layers[0].feed_forward.intermediate_dense.weight.dtype == torch.bfloat16
    assert ext.model.feature_extractor.conv_layers[0].conv.weight.dtype == torch.float32
    assert SSLExtractor(str(tiny_wavlm), "2", compute_dtype="float32").attrs["compute_dtype"] == "float32"


def test_conv_without_the_fused_activation_gives_the_same(tiny_wavlm, monkeypatch):
    from asrkit.features import speedups

    wav = [(0.1 * np.random.default_rng(4).standard_normal(12000)).astype(np.float32)]
    for dt, tol in [("float32", 1e-6), ("bfloat16", 0.02)]:
        fused = SSLExtractor(str(tiny_wavlm), "2", dtype="float32", compute_dtype=dt)(wav)[0]
        with monkeypatch.context() as m:
            m.setattr(speedups, "_is_erf_gelu", lambda act: False)
            plain = SSLExtractor(str(tiny_wavlm), "2", dtype="float32", compute_dtype=dt)(wav)[0]
        assert _rel_rms(fused, plain) < tol  # bf16: GELU on the rounded conv output, or before rounding


def test_batches_cap_padding():
    items = [dump_mod.Item(f"u{i}", "", None, None, 1.0, n) for i, n in enumerate([100, 95, 91, 80, 79, 10])]
    batches = dump_mod.make_batches(items, 1000)
    assert [[it.key for it in b] for b in batches] == [["u0", "u1", "u2"], ["u3", "u4"], ["u5"]]
    assert [len(b) for b in dump_mod.make_batches(items, 1000, max_padding=1.0)] == [6]
    assert [len(b) for b in dump_mod.make_batches(items, 200, max_padding=1.0)] == [2, 2, 2]


def test_dump_with_the_int8_codec(tiny_corpus, tiny_wavlm, caplog):
    """--store_codec int8: a smaller store, decoded transparently close to the plain one; a store made
    with another codec is redone, not reused."""
    plain, small = tiny_corpus.parent / "plain.h5", tiny_corpus.parent / "int8.h5"
    opts = dict(ssl_model=str(tiny_wavlm), ssl_layer="all", nj=0, progress=False)
    dump(str(tiny_corpus), str(plain), **opts)
    dump(str(tiny_corpus), str(small), store_codec="int8", **opts)
    a, b = FeatureReader(plain), FeatureReader(small)
    assert b.attrs["store_codec"] == "int8" and a.codec == "none" and sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        assert b[k].dtype == np.float16 and b[k].shape == a[k].shape
        assert _rel_rms(b[k].astype(np.float32), a[k].astype(np.float32)) < 0.01
    assert small.stat().st_size < 0.75 * plain.stat().st_size  # tiny arrays: HDF5's overhead weighs more
    caplog.set_level(logging.INFO, logger="asrkit")
    dump(str(tiny_corpus), str(small), **opts)
    assert "store codec is int8, not none" in caplog.text and FeatureReader(small).codec == "none"
    with pytest.raises(DataError, match="unknown store codec"):
        dump(str(tiny_corpus), str(small), store_codec="int4", **opts)


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_a_checkpoint_stored_in_16_bits_dumps_like_float32(tmp_path, tiny_corpus, tiny_wavlm, tiny_whisper, kind,
                                                           stored):
    """The file's dtype is not the compute dtype: a float16 or bfloat16 checkpoint (whisper-large-v3's
    case) loads in float32 and gives float32's features up to the rounding of its weights."""
    import json
    import shutil

    from transformers import AutoModel


    src = tiny_wavlm if kind == "wavlm" else tiny_whisper
    half = tmp_path / f"{kind}-{stored}"
    AutoModel.from_pretrained(str(src), dtype=torch.float32).to(getattr(torch, stored)).save_pretrained(half)
    for f in src.iterdir():  # the feature extractor's (and tokenizer's) files
        if f.suffix in (".json", ".txt") and not (half / f.name).exists():
            shutil.copy(f, half)
    assert json.loads((half / "config.json").read_text())["dtype"] == stored
    ref, ext = (ExtractorSpec("wavlm", str(m), "all", "float32", "float32").build("cpu") for m in (src, half))
    assert {p.dtype for p in getattr(ext, "model", getattr(ext, "encoder", None)).parameters()} == {torch.float32}
    wavs = [load_audio(str(tiny_corpus.parent / f"wav/spk{s}/u3.wav")) for s in range(3)]
    for a, b in zip(ref([ref.prepare(w) for w in wavs]), ext([ext.prepare(w) for w in wavs])):
        assert a.shape == b.shape and _rel_rms(b, a) < (2e-3 if stored == "float16" else 2e-2)
    # the whole dump, in the compute dtype this CPU picks: every utterance extracted
    dump(str(tiny_corpus), str(tmp_path / "s.h5"), ssl_model=str(half), ssl_layer="1", nj=0, progress=False)
    r = FeatureReader(tmp_path / "s.h5")
    assert len(r) == 24 and not r.skipped


def test_every_utterance_failing_stops_the_dump_one_failing_does_not(tmp_path, tiny_corpus, monkeypatch):
    from asrkit.failures import SystematicFailure
    from asrkit.features.extractors import FbankExtractor

    real, calls = FbankExtractor.__call__, []

    def broken(self, arrays):  # as a float16 checkpoint on a CPU did: every batch fails
        calls.append(len(arrays))
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")

    monkeypatch.setattr(FbankExtractor, "__call__", broken)
    with pytest.raises(SystematicFailure, match=r"a.h5: feature extraction failed for (\d+) of the \1 utterances tried; "
                                                r"the first, spk\d_u\d: extraction failed: mixed dtype .*fix that cause"):
        dump(str(tiny_corpus), str(tmp_path / "a.h5"), feats_type="fbank", nj=0, batch_seconds=3, progress=False)
    assert calls.count(1) < 24 and not (tmp_path / "a.h5").exists()  # stopped early (each tried alone), no store

    def one_bad(self, arrays):  # an utterance of 1 s fails, the others do not
        if any(a.shape[0] == 98 for a in arrays):
            raise RuntimeError("this one is bad")
        return real(self, arrays)

    monkeypatch.setattr(FbankExtractor, "__call__", one_bad)
    dump(str(tiny_corpus), str(tmp_path / "b.h5"), feats_type="fbank", nj=0, batch_seconds=3, progress=False)
    r = FeatureReader(tmp_path / "b.h5")
    assert len(r) == 18 and len(r.skipped) == 6 and all("this one is bad" in why for _, why in r.skipped)
