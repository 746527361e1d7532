"""The pretrained encoder's top layers on its stored lower-layer states: at the start, exactly the
encoder's output on the audio, batched as one by one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asrkit.features.extractors import ExtractorSpec
from asrkit.nets.ssl_top import SSLTop
from conftest import write_tone


def utterances(tmp_path, n=3):
    from asrkit.audio import load_audio

    return [load_audio(str(write_tone(tmp_path / f"u{i}.wav", seconds=0.6 + 0.45 * i, freq=170.0 + 60 * i,
                                      seed=i))) for i in range(n)]


def strong_position_bias(wavlm, out):
    """The tiny WavLM with a relative position bias large enough to matter (random init: 0.02 scale)."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel

    model = WavLMModel.from_pretrained(str(wavlm))
    with torch.no_grad():
        model.encoder.layers[0].attention.rel_attn_embed.weight.normal_(0, 3.0)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor.from_pretrained(str(wavlm)).save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_the_top_on_stored_states_is_the_encoder_output(kind, tmp_path, tiny_wavlm, tiny_whisper):
    checkpoint = strong_position_bias(tiny_wavlm, tmp_path / "wavlm") if kind == "wavlm" else tiny_whisper
    extra = {"whisper_input": "trimmed"} if kind == "whisper" else {}
    ext = ExtractorSpec("wavlm", str(checkpoint), "all", dtype="float32", compute_dtype="float32", **extra).build("cpu")
    wavs = utterances(tmp_path)
    stored = [ext([ext.prepare(w)])[0] for w in wavs]  # (layers, T, D) each, one by one
    last = len(stored[0]) - 1
    for k in range(last):
        top = SSLTop(str(checkpoint), k, stored[0].shape[-1]).eval()
        with torch.no_grad():
            ones = [top(torch.from_numpy(s[k])[None], torch.tensor([s.shape[1]]))[0].numpy() for s in stored]
            lens = torch.tensor([s.shape[1] for s in stored])
            batch = torch.zeros(len(stored), int(lens.max()), stored[0].shape[-1])
            for i, s in enumerate(stored):
                batch[i, :s.shape[1]] = torch.from_numpy(s[k])
            batched = top(batch, lens).numpy()
        for i, s in enumerate(stored):
            want = s[last]
            np.testing.assert_allclose(ones[i], want, atol=2e-4 * np.abs(want).max(), err_msg=f"{kind} from layer {k}")
            np.testing.assert_allclose(batched[i, :s.shape[1]], want, atol=2e-4 * np.abs(want).max())
    assert sum(p.numel() for p in SSLTop(str(checkpoint), last - 1, stored[0].shape[-1]).parameters()
               if p.requires_grad) > 0


def test_a_wrong_layer_or_checkpoint_is_named(tiny_wavlm, tmp_path):
    with pytest.raises(ValueError, match="from_layer 9"):
        SSLTop(str(tiny_wavlm), 9, 32)
    with pytest.raises(ValueError, match="cannot load the encoder checkpoint"):
        SSLTop(str(tmp_path / "nowhere"), 1, 32)
