"""Whisper's encoder as the stage-1 front end: the very states of transformers' encoder where the
input fills a window, trimmed inputs otherwise, batches that change nothing, windows for long
audio, a store that a WavLM model refuses (stages 0-5 on real speech with the pretrained Whisper-base:
tests/test_real_speech.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asrkit.errors import DataError
from asrkit.features.extractors import ExtractorSpec, WhisperExtractor
from asrkit.transcribe import extractor_from_attrs

SR = 16000


def waves(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = [np.arange(int(s * SR)) / SR for s in seconds]
    return [(0.3 * np.sin(2 * np.pi * 180 * x * (1 + 0.1 * np.sin(3 * x))) + 0.02 * rng.standard_normal(x.size))
            .astype(np.float32) for x in t]


@pytest.mark.parametrize("preset", ["tiny", "tiny-128"])
def test_a_full_window_gives_transformers_own_hidden_states(preset, tiny_whisper, tmp_path):
    """Also for the shape of large-v3 (128 mel bins)."""
    from transformers import WhisperModel

    from asrkit.random_models import save_random_whisper

    if preset != "tiny":
        tiny_whisper = save_random_whisper(tmp_path / preset, preset)
    ext = ExtractorSpec("wavlm", str(tiny_whisper), "all", "float32", "float32").build("cpu")
    assert isinstance(ext, WhisperExtractor) and ext.attrs["model_type"] == "whisper"
    assert ext.attrs["frame_rate"] == 50.0 and ext.attrs["num_layers"] == 4
    wav = waves(30.0)[0]
    mel = ext.prepare(wav)
    stock_mel = ext.fe(wav, sampling_rate=SR, return_tensors="np").input_features  # Whisper's own input
    assert mel.frames == [3000] and np.array_equal(mel.windows[0], stock_mel[0])
    encoder = WhisperModel.from_pretrained(str(tiny_whisper)).get_encoder().eval()
    with torch.no_grad():
        stock = encoder(torch.from_numpy(stock_mel), output_hidden_states=True).hidden_states
    ours = ext([mel])[0]
    assert ours.shape == (4, 1500, 64) and ext.num_frames(len(wav)) == 1500
    for layer in range(3):  # the embeddings, layer 1, and layer 2 after the final layer norm
        np.testing.assert_allclose(ours[layer], stock[layer][0].numpy(), rtol=1e-5, atol=1e-5)
    # a single layer below the top drops the layers above it and computes the same
    low = WhisperExtractor(str(tiny_whisper), "1", dtype="float32", compute_dtype="float32")
    assert len(low.encoder.layers) == 1
    np.testing.assert_allclose(low([mel])[0], ours[1], rtol=1e-5, atol=1e-5)


def test_padded_inputs_give_transformers_own_states_of_the_padded_window(tiny_whisper):
    from transformers import WhisperModel

    ext = WhisperExtractor(str(tiny_whisper), "all", dtype="float32", compute_dtype="float32")
    assert ext.attrs["whisper_input"] == "padded, 30 s windows"
    encoder = WhisperModel.from_pretrained(str(tiny_whisper)).get_encoder().eval()
    wavs = waves(1.7, 0.4, 31.0)
    feats = ext([ext.prepare(w) for w in wavs])
    assert [f.shape[1] for f in feats] == [85, 20, 1550]
    for w, f in zip(wavs, feats):
        with torch.no_grad():  # Whisper's own input: the audio padded to 30 s (each 30 s window alone)
            stock = [encoder(torch.from_numpy(ext.fe(w[s:s + 30 * SR], sampling_rate=SR, return_tensors="np")
                                              .input_features), output_hidden_states=True).hidden_states
                     for s in range(0, len(w), 30 * SR)]
        for layer in range(3):
            want = np.concatenate([h[layer][0].numpy() for h in stock])[:ext.num_frames(len(w))]
            np.testing.assert_allclose(f[layer], want, rtol=1e-4, atol=1e-4)


def test_trimmed_inputs_batches_and_windows(tiny_whisper):
    ext = WhisperExtractor(str(tiny_whisper), "mean:1-2", dtype="float32", compute_dtype="float32",
                           whisper_input="trimmed")
    wavs = waves(0.3, 1.7, 2.0, 43.2)
    inputs = [ext.prepare(w) for w in wavs]
    # a short utterance's log-mel frames are exactly the first ones of its 30 s padded window
    padded = ext.fe(wavs[1], sampling_rate=SR, return_tensors="np").input_features[0]
    assert inputs[1].frames == [170] and np.array_equal(inputs[1].windows[0], padded[:, :170])
    # 43.2 s: a full window, then 13.2 s windowed on its own
    assert inputs[3].frames == [3000, 1320] and [w.shape[1] for w in inputs[3].windows] == [3000, 1320]
    tail = ext.fe(wavs[3][30 * SR:], sampling_rate=SR, return_tensors="np").input_features[0]
    assert np.array_equal(inputs[3].windows[1], tail[:, :1320])
    batched = ext(inputs)
    alone = [ext([m])[0] for m in inputs]
    for w, b, a in zip(wavs, batched, alone):
        assert b.shape == a.shape == (ext.num_frames(len(w)), 64)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert [b.shape[0] for b in batched] == [15, 85, 100, 1500 + 660]
    # trimming is not padding: the states of the 1.7 s utterance differ from those of its padded window
    full = WhisperExtractor(str(tiny_whisper), "mean:1-2", dtype="float32", compute_dtype="float32")
    assert not np.allclose(full([full.prepare(wavs[1])])[0], batched[1], atol=1e-3)


def test_a_whisper_store_is_refused_by_a_wavlm_model(tiny_whisper, tiny_wavlm):
    from asrkit.features.store import check_compatible

    whisper = ExtractorSpec("wavlm", str(tiny_whisper), "1", "float32", "float32").build("cpu").attrs
    wavlm = ExtractorSpec("wavlm", str(tiny_wavlm), "1", "float32", "float32").build("cpu").attrs
    with pytest.raises(DataError, match="model_type: store has 'whisper', model expects 'wavlm'.*weights_hash"):
        check_compatible(whisper, wavlm)
    with pytest.raises(DataError, match="layer\\(s\\) \\[9\\] do not exist: the model has layers 0-3"):
        ExtractorSpec("wavlm", str(tiny_whisper), "9", "float32", "float32").build("cpu")
    # trimmed and padded states are not the same features, and the model dir rebuilds the one it was trained on
    trimmed = ExtractorSpec("wavlm", str(tiny_whisper), "1", "float32", "float32", whisper_input="trimmed").build("cpu")
    with pytest.raises(DataError, match="whisper_input: store has 'trimmed, 30 s windows', model expects 'padded"):
        check_compatible(trimmed.attrs, whisper)
    assert extractor_from_attrs(trimmed.attrs).attrs["whisper_input"] == "trimmed, 30 s windows"
    assert extractor_from_attrs(whisper).padded
