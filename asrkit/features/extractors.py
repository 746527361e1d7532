"""Feature extractors: an HF speech encoder's hidden states (WavLM, wav2vec2, HuBERT), or fbank.

Each extractor has `prepare(wav)`, run in the DataLoader workers on one mono 16 kHz waveform,
and `__call__(arrays)`, run on a batch in the main process (on the GPU for SSL models); both
return numpy arrays. `num_frames(samples)` is the exact frame count for an input length and
`attrs` the description that the store records.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

import asrkit
from asrkit.audio import SAMPLE_RATE
from asrkit.ssl import conv_geometry, load_ssl_model, num_frames, parse_layers, weights_hash

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FbankExtractor:
    """Kaldi-compatible log-mel filterbank (torchaudio.compliance.kaldi): 25 ms windows every 10 ms,
    no dither, so 100 frames/s and the same numbers on every run."""

    frame_length_ms, frame_shift_ms = 25.0, 10.0

    def __init__(self, n_mels: int = 80, dtype: str = "float16"):
        self.n_mels, self.dtype = n_mels, dtype
        self.field = int(SAMPLE_RATE * self.frame_length_ms / 1000)
        self.stride = int(SAMPLE_RATE * self.frame_shift_ms / 1000)
        self.attrs = dict(feats_type="fbank", n_mels=n_mels, frame_length_ms=self.frame_length_ms,
                          frame_shift_ms=self.frame_shift_ms, dim=n_mels, num_layers=1, layers=[0],
                          layer_reduce="none", sample_rate=SAMPLE_RATE, frame_rate=1000 / self.frame_shift_ms,
                          dtype=dtype, asrkit_version=asrkit.__version__)

    def num_frames(self, num_samples: int) -> int:  # snip_edges: only whole windows
        return 0 if num_samples < self.field else 1 + (num_samples - self.field) // self.stride

    def prepare(self, wav: np.ndarray) -> np.ndarray:
        from torchaudio.compliance import kaldi

        wav = torch.from_numpy(wav).unsqueeze(0) * 32768  # Kaldi works on the 16-bit integer scale
        feats = kaldi.fbank(wav, num_mel_bins=self.n_mels, frame_length=self.frame_length_ms,
                            frame_shift=self.frame_shift_ms, dither=0.0, sample_frequency=SAMPLE_RATE)
        return feats.numpy().astype(self.dtype)

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return arrays


class SSLExtractor:
    """Hidden states of a frozen HF speech encoder, batched so that an utterance's features do not
    depend on what it is batched with (see _MaskedGroupNormConv)."""

    def __init__(self, model: str, layers: str = "9", device: str = "cpu", dtype: str = "float16",
                 compute_dtype: str = "auto"):
        self.device = torch.device(device)
        self.model, self.do_normalize = load_ssl_model(model, self.device)
        config = self.model.config
        self.layers, self.reduce = parse_layers(layers, config.num_hidden_layers)
        if compute_dtype == "auto":
            compute_dtype = "float16" if self.device.type == "cuda" else "float32"
        self.compute_dtype, self.dtype, self.config = DTYPES[compute_dtype], dtype, config
        self.field, self.stride = conv_geometry(config)
        self.attrs = dict(feats_type="wavlm", ssl_model=str(model), model_type=config.model_type,
                          weights_hash=weights_hash(self.model), layers=self.layers, layer_reduce=self.reduce,
                          dim=config.hidden_size, num_layers=len(self.layers) if self.reduce == "stack" else 1,
                          sample_rate=SAMPLE_RATE, frame_rate=SAMPLE_RATE / self.stride, dtype=dtype,
                          compute_dtype=compute_dtype, asrkit_version=asrkit.__version__)
        convs = self.model.feature_extractor.conv_layers
        self._masked = []
        for i, layer in enumerate(convs):
            if isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm):
                convs[i] = _MaskedGroupNormConv(layer)
                self._masked.append(convs[i])
        # layers above the last one kept are never needed: drop them (WavLM's relative position bias
        # lives in layer 0, so the lower layers compute exactly what they compute in the full model)
        self.model.encoder.layers = self.model.encoder.layers[:max(self.layers)]

    def num_frames(self, num_samples: int) -> int:
        return num_frames(num_samples, self.config)

    def prepare(self, wav: np.ndarray) -> np.ndarray:
        if self.do_normalize:
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
        return wav.astype(np.float32, copy=False)

    @torch.inference_mode()
    def __call__(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        lengths = torch.tensor([len(w) for w in wavs])
        x = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            x[i, :len(w)] = torch.from_numpy(w)
        if self.device.type == "cuda":
            x = x.pin_memory()
        x, dev_lengths = x.to(self.device, non_blocking=True), lengths.to(self.device)
        mask = torch.arange(x.shape[1], device=self.device)[None] < dev_lengths[:, None]
        for m in self._masked:
            m.lengths = dev_lengths
        with torch.autocast(self.device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32), warnings.catch_warnings():
            # WavLM passes a bool padding mask with a float position bias; torch warns, results are right
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask")
            hidden = self.model(x, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        out = torch.stack([hidden[i] for i in self.layers])  # (layers, batch, frames, dim)
        if self.reduce == "mean":
            out = out.float().mean(0, keepdim=True)
        out = out.to(DTYPES[self.dtype]).cpu().numpy()
        if self.reduce != "stack":
            out = out[0]
        return [out[..., i, :self.num_frames(int(n)), :] for i, n in enumerate(lengths)]

    def extract_long(self, wav: np.ndarray, max_samples: int) -> np.ndarray:
        """Features of an utterance too long for one pass: windows of `max_samples` that overlap by
        (receptive field - stride) samples, so that their frames line up with the whole file's."""
        hop = max(self.stride, (max_samples - self.field) // self.stride * self.stride + self.stride)
        pieces = []
        for start in range(0, len(wav), hop):
            piece = wav[start:start + hop + self.field - self.stride]
            if len(piece) >= self.field:
                pieces.append(self([piece])[0])
        return np.concatenate(pieces, axis=-2)


class _MaskedGroupNormConv(nn.Module):
    """A conv + GroupNorm + activation layer of a "group"-norm front end (WavLM/wav2vec2/HuBERT Base)
    whose normalization statistics cover each utterance's own frames only.

    GroupNorm normalizes every channel over time: zero padding would shift the mean and variance of
    shorter utterances in a batch. With `lengths` (input samples per utterance) set, the padded
    frames are left out of the statistics, which makes the batch equal to one-by-one extraction.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.conv, self.norm, self.activation = layer.conv, layer.layer_norm, layer.activation
        self.lengths: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.lengths is None:
            return self.activation(self.norm(x))
        (k,), (s,) = self.conv.kernel_size, self.conv.stride
        n = ((self.lengths - k) // s + 1).clamp(min=1)
        b, c, t = x.shape
        g = self.norm.num_groups
        pad = (torch.arange(t, device=x.device)[None] >= n[:, None])[:, None, None, :]  # (b, 1, 1, t)
        xf = x.float().view(b, g, c // g, t).masked_fill(pad, 0.0)
        count = n.float()[:, None] * (c // g)
        mean = xf.sum((2, 3)) / count
        dev = (xf - mean[..., None, None]).masked_fill_(pad, 0.0)
        var = torch.linalg.vector_norm(dev.view(b, g, -1), dim=-1) ** 2 / count
        # y = (x - mean) * rstd * weight + bias, as one multiply-add per element
        scale = (torch.rsqrt(var + self.norm.eps)[:, :, None] * self.norm.weight.view(g, c // g)).view(b, c)
        shift = self.norm.bias - mean.repeat_interleave(c // g, dim=1) * scale
        y = torch.addcmul(shift[..., None], x.float(), scale[..., None])
        return self.activation(y.to(x.dtype))
