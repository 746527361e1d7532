"""Feature extractors: an HF speech encoder's hidden states (WavLM, wav2vec2, HuBERT; Whisper's
encoder), or fbank.

Each extractor has `prepare(wav)`, run in the DataLoader workers on one mono 16 kHz waveform,
and `__call__(arrays)`, run on a batch in the main process (on the GPU for SSL models); both
return numpy arrays. `num_frames(samples)` is the exact frame count for an input length and
`attrs` the description that the store records. `ExtractorSpec` is what the user chose: built once
from the command line, it builds the extractor (`build`), whose `spec` is it resolved (the layers'
indices, the checkpoint's weights hash). The store records that one as its "extractor" attribute, a
model dir keeps it (feats_attrs.json), and `ExtractorSpec.from_attrs` reads it back to rebuild the same
extractor, or to tell a later stage which checkpoint and layer the features came from.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

import asrkit
from asrkit.audio import SAMPLE_RATE
from asrkit.errors import DataError
from asrkit.ssl import (conv_geometry, load_ssl_model, load_whisper_encoder, model_type, num_frames, parse_layers,
                        weights_hash)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WHISPER_INPUTS = ("padded", "trimmed")


class FbankExtractor:
    """Kaldi-compatible log-mel filterbank (torchaudio.compliance.kaldi): 25 ms windows every 10 ms,
    no dither, so 100 frames/s and the same numbers on every run."""

    frame_length_ms, frame_shift_ms = 25.0, 10.0

    def __init__(self, n_mels: int = 80, dtype: str = "float16"):
        self.n_mels, self.dtype = n_mels, dtype
        self.field = int(SAMPLE_RATE * self.frame_length_ms / 1000)
        self.stride = int(SAMPLE_RATE * self.frame_shift_ms / 1000)
        self.spec = ExtractorSpec("fbank", "", "0", dtype, "float32", n_mels, layers=(0,), layer_reduce="none")
        self.attrs = dict(feats_type="fbank", n_mels=n_mels, frame_length_ms=self.frame_length_ms,
                          frame_shift_ms=self.frame_shift_ms, dim=n_mels, num_layers=1, layers=[0],
                          layer_reduce="none", sample_rate=SAMPLE_RATE, frame_rate=1000 / self.frame_shift_ms,
                          dtype=dtype, asrkit_version=asrkit.__version__, extractor=self.spec.as_attr())

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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX): there bf16 matmuls
    and convolutions run about twice as fast as fp32; elsewhere bf16 would only be emulated."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch or a non-x86 build
        return False


def default_compute_dtype(device: torch.device) -> str:
    """`--compute_dtype auto`: float16 on GPU; bfloat16 on a CPU with native bf16, else float32."""
    if device.type == "cuda":
        return "float16"
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


@dataclass(frozen=True)
class ExtractorSpec:
    """The stage-1 extractor as the user chose it (the dump_feats options of the same names): fbank, or
    the hidden states of the HF speech encoder `ssl_model` (WavLM, wav2vec2, HuBERT; Whisper's encoder).
    Resolved (an extractor's `spec`), it also holds the layers' indices and how they are combined, and
    the hash of the checkpoint's weights."""
    feats_type: str = "wavlm"  # wavlm: any HF speech encoder's hidden states; fbank
    ssl_model: str = "microsoft/wavlm-base-plus"  # the checkpoint: an HF model id or a local dir
    ssl_layer: str = "9"  # a layer spec (asrkit.ssl.parse_layers), as given
    dtype: str = "float16"  # stored
    compute_dtype: str = "auto"
    n_mels: int = 80  # fbank
    whisper_input: str = WHISPER_INPUTS[0]  # Whisper: padded or trimmed windows
    layers: tuple[int, ...] = ()  # resolved: the layers stored (ssl_layer's)
    layer_reduce: str = ""  # resolved: none (one layer), stack or mean
    weights_hash: str = ""  # resolved: of the checkpoint's weights

    def build(self, device: str | torch.device = "cpu"):
        if self.feats_type == "fbank":
            return FbankExtractor(n_mels=self.n_mels, dtype=self.dtype)
        layers = (self.layers, self.layer_reduce) if self.layers else self.ssl_layer
        if model_type(self.ssl_model) == "whisper":
            return WhisperExtractor(self.ssl_model, layers, device=str(device), dtype=self.dtype,
                                    compute_dtype=self.compute_dtype, whisper_input=self.whisper_input)
        return SSLExtractor(self.ssl_model, layers, device=str(device), dtype=self.dtype,
                            compute_dtype=self.compute_dtype)

    @property
    def stored_layer(self) -> int:
        """The (highest) layer stored: the top layers of a model train above it (nets.ssl_top)."""
        return max(self.layers)

    def as_attr(self) -> dict:
        """As the store's "extractor" attribute (JSON)."""
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> ExtractorSpec:
        """The resolved spec that a store's attrs (or a model dir's feats_attrs.json) record; for a store
        written before the "extractor" attribute, made from the attributes it had."""
        if "extractor" in attrs:
            return cls(**{**attrs["extractor"], "layers": tuple(attrs["extractor"]["layers"])})
        layers, reduce = tuple(attrs.get("layers") or (0,)), attrs.get("layer_reduce", "none")
        if attrs.get("feats_type") == "fbank":
            return cls("fbank", "", "0", attrs.get("dtype", "float16"), "float32", int(attrs["n_mels"]),
                       layers=layers, layer_reduce=reduce)
        return cls(attrs.get("feats_type", "wavlm"), attrs.get("ssl_model", ""), ",".join(map(str, layers)),
                   attrs.get("dtype", "float16"), attrs.get("compute_dtype", "auto"),
                   whisper_input=attrs.get("whisper_input", "padded").split(",")[0], layers=layers,
                   layer_reduce=reduce, weights_hash=attrs.get("weights_hash", ""))


class _EncoderStates:
    """What the hidden-state extractors share: the layer choice, the dtypes, the store's attrs and
    the step from the encoder's hidden states to each utterance's stored array."""

    def _setup(self, ssl_model: str, encoder: nn.Module, num_layers: int, dim: int, layers: str | tuple, dtype: str,
               compute_dtype: str, stride: int, regime: str = WHISPER_INPUTS[0], **attrs) -> None:
        """`layers`: a layer spec, or a resolved spec's (indices, reduce); `regime`: Whisper's input."""
        if isinstance(layers, str):
            self.layers, self.reduce = parse_layers(layers, num_layers)
        else:  # a resolved spec's (indices, reduce)
            self.layers, self.reduce = list(layers[0]), layers[1]
        if compute_dtype == "auto":
            compute_dtype = default_compute_dtype(self.device)
        self.compute_dtype, self.dtype, self.stride = DTYPES[compute_dtype], dtype, stride
        given = layers if isinstance(layers, str) else ",".join(map(str, self.layers))
        self.spec = ExtractorSpec("wavlm", str(ssl_model), given, dtype, compute_dtype, whisper_input=regime,
                                  layers=tuple(self.layers), layer_reduce=self.reduce,
                                  weights_hash=weights_hash(encoder))
        self.attrs = dict(feats_type="wavlm", ssl_model=str(ssl_model), weights_hash=self.spec.weights_hash, **attrs,
                          layers=self.layers, layer_reduce=self.reduce, dim=dim,
                          num_layers=len(self.layers) if self.reduce == "stack" else 1, sample_rate=SAMPLE_RATE,
                          frame_rate=SAMPLE_RATE / stride, dtype=dtype, compute_dtype=compute_dtype,
                          asrkit_version=asrkit.__version__, extractor=self.spec.as_attr())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32)

    def _pick(self, hidden: tuple[torch.Tensor, ...], frames: list[int]) -> list[np.ndarray]:
        """Row i of the chosen layers, its first frames[i] frames: (frames, dim), or (layers, frames, dim) stacked."""
        out = torch.stack([hidden[i] for i in self.layers])  # (layers, batch, frames, dim)
        if self.reduce == "mean":
            out = out.float().mean(0, keepdim=True)
        out = out.to(DTYPES[self.dtype]).cpu().numpy()
        if self.reduce != "stack":
            out = out[0]
        return [out[..., i, :n, :] for i, n in enumerate(frames)]


class SSLExtractor(_EncoderStates):
    """Hidden states of a frozen HF speech encoder, batched so that an utterance's features do not
    depend on what it is batched with (see MaskedGroupNorm). With a 16-bit `compute_dtype` the model
    runs under autocast. `speedups` (default: on CPU) applies features/speedups.py: there the first
    convolution and its normalization stay in float32, and the weights are cast once."""

    def __init__(self, ssl_model: str, layers: str | tuple = "9", device: str = "cpu", dtype: str = "float16",
                 compute_dtype: str = "auto", speedups: bool | None = None):
        self.device = torch.device(device)
        self.model, self.do_normalize = load_ssl_model(ssl_model, self.device)
        self.config = config = self.model.config
        self.field, stride = conv_geometry(config)
        self._setup(ssl_model, self.model, config.num_hidden_layers, config.hidden_size, layers, dtype,
                    compute_dtype, stride, model_type=config.model_type)
        # layers above the last one kept are never needed: drop them (WavLM's relative position bias
        # lives in layer 0, so the lower layers compute exactly what they compute in the full model)
        self.model.encoder.layers = self.model.encoder.layers[:max(self.layers)]
        self.speedups = self.device.type == "cpu" if speedups is None else speedups
        if self.speedups:
            from asrkit.features.speedups import speed_up

            self._length_aware = speed_up(self.model, self.compute_dtype)
        else:
            first = self.model.feature_extractor.conv_layers[0]
            self._length_aware = []
            if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm):
                first.layer_norm = MaskedGroupNorm(first.layer_norm, first.conv)
                self._length_aware.append(first.layer_norm)

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
        for m in self._length_aware:
            m.lengths = dev_lengths
        with self._autocast(), warnings.catch_warnings():
            # WavLM passes a bool padding mask with a float position bias; torch warns, results are right
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask")
            hidden = self.model(x, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        return self._pick(hidden, [self.num_frames(int(n)) for n in lengths])

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


class MaskedGroupNorm(nn.Module):
    """The group norm of a front end's first conv layer (WavLM/wav2vec2/HuBERT Base), which
    normalizes every channel over time: zero padding would shift the mean and variance of the
    shorter utterances of a batch. With `lengths` (input samples per utterance) set, each utterance
    is normalized over its own frames only, by the same call that one-by-one extraction makes."""

    def __init__(self, norm: nn.GroupNorm, conv: nn.Conv1d):
        super().__init__()
        self.norm, self.kernel, self.stride = norm, conv.kernel_size[0], conv.stride[0]
        self.lengths: torch.Tensor | None = None

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # (batch, channels, time)
        t = y.shape[-1]
        if self.lengths is None:
            return self.norm(y)
        n = ((self.lengths - self.kernel) // self.stride + 1).clamp(min=1, max=t).tolist()
        if min(n) == t:  # nothing padded
            return self.norm(y)
        out = torch.zeros_like(y)
        for i in range(len(n)):
            out[i:i + 1, :, :n[i]] = self.norm(y[i:i + 1, :, :n[i]])
        return out


class WhisperInput(NamedTuple):
    """What WhisperExtractor.prepare gives its batch step: the log-mel of each 30 s window, and the
    number of those log-mel frames that are the utterance's own (100/s)."""
    windows: list[np.ndarray]
    frames: list[int]


class WhisperExtractor(_EncoderStates):
    """Hidden states of Whisper's frozen encoder (layer 0: its input embeddings; the last layer: after
    its final layer norm, as transformers' `hidden_states`), 50 frames/s.

    Whisper's encoder was trained on 30 s windows of log-mel frames (100/s; shorter audio padded
    with silence) with one learned embedding per position. `whisper_input` says what it is given:

    - "padded" (the default): as in training, every window is padded to 30 s by Whisper's own
      feature extractor, and the states of the utterance's own frames are kept: transformers'
      `hidden_states` on that window, cut.
    - "trimmed": the encoder runs on the utterance's own log-mel frames alone (computed on the audio
      plus n_fft zeros: exactly the padded window's first frames), at positions 0..T-1, so that a
      2 s utterance costs about 1/15 of a window. That is not what the encoder computes on a padded
      window (the padding frames are keys of every attention). On so762_dev with the real Whisper-base,
      a model trained on trimmed states scored 1.2 WER points worse, within the noise
      (docs/PERFORMANCE.md); bench/bench_whisper.py measures the cost and the difference.

    A longer utterance is cut into 30 s windows, encoded independently and concatenated. In a batch
    the padding of trimmed inputs is masked (after the first convolution and as attention keys), so
    that an utterance's features never depend on what it is batched with.
    """

    def __init__(self, ssl_model: str, layers: str | tuple = "6", device: str = "cpu", dtype: str = "float16",
                 compute_dtype: str = "auto", whisper_input: str = "padded"):
        if whisper_input not in WHISPER_INPUTS:
            raise DataError(f"unknown whisper_input {whisper_input!r}", "--whisper_input",
                            f"choose one of {', '.join(WHISPER_INPUTS)}")
        self.device, self.padded = torch.device(device), whisper_input == "padded"
        self.encoder, self.fe = load_whisper_encoder(ssl_model, self.device)
        config = self.encoder.config
        self.hop, self.window_frames = self.fe.hop_length, 2 * config.max_source_positions  # 160, 3000
        self.window_samples = self.window_frames * self.hop                                # 30 s
        # attrs' whisper_input says it for people ("padded, 30 s windows"); the spec's is the choice
        self._setup(ssl_model, self.encoder, config.encoder_layers, config.d_model, layers, dtype, compute_dtype,
                    2 * self.hop, whisper_input, model_type="whisper", n_mels=config.num_mel_bins,
                    whisper_input=f"{whisper_input}, {self.window_samples / SAMPLE_RATE:g} s windows")
        self.final_norm = max(self.layers) == config.encoder_layers
        self.encoder.layers = self.encoder.layers[:max(self.layers)]

    def num_frames(self, num_samples: int) -> int:
        windows, rest = divmod(num_samples, self.window_samples)
        return windows * self.window_frames // 2 + (rest // self.hop + 1) // 2

    def prepare(self, wav: np.ndarray) -> WhisperInput:
        """The log-mel input of each 30 s window: the padded window (n_mels, 3000), or its own frames
        alone (n_mels, frames), which are exactly the first frames of the padded window's."""
        windows, frames = [], []
        for start in range(0, len(wav), self.window_samples):
            piece = wav[start:start + self.window_samples]
            n = len(piece) // self.hop
            if not n:
                continue
            if self.padded:  # WhisperFeatureExtractor's own padding to 30 s
                mel = self.fe(piece, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
            else:  # the zeros stand for the padding of the window: the frames near the end see them
                piece = np.pad(piece, (0, min(self.fe.n_fft, self.window_samples - len(piece))))
                mel = self.fe(piece, sampling_rate=SAMPLE_RATE, padding="longest",
                              return_tensors="np").input_features[0][:, :n]
            windows.append(mel.astype(np.float32, copy=False))
            frames.append(n)
        return WhisperInput(windows, frames)

    @torch.inference_mode()
    def __call__(self, inputs: list[WhisperInput]) -> list[np.ndarray]:
        windows = [w for x in inputs for w in x.windows]
        owner = [i for i, x in enumerate(inputs) for _ in x.windows]
        lengths = torch.tensor([w.shape[1] for w in windows])
        x = torch.zeros(len(windows), windows[0].shape[0], int(lengths.max()))
        for i, w in enumerate(windows):
            x[i, :, :w.shape[1]] = torch.from_numpy(w)
        with self._autocast():
            hidden = self._encode(x.to(self.device), lengths.to(self.device))
        pieces = self._pick(hidden, [(n + 1) // 2 for x in inputs for n in x.frames])
        return [np.concatenate([p for p, o in zip(pieces, owner) if o == i], axis=-2) for i in range(len(inputs))]

    def _encode(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """transformers' WhisperEncoder.forward on (batch, n_mels, frames) log-mels of any length up
        to a window, with the padding beyond `lengths` masked; the hidden states of every layer kept."""
        enc, frames = self.encoder, x.shape[-1]
        padded = bool(lengths.min() < frames)
        h = nn.functional.gelu(enc.conv1(x))
        if padded:  # the second convolution must see zeros beyond the end, as one utterance alone does
            h = h * (torch.arange(frames, device=x.device) < lengths[:, None])[:, None, :]
        h = nn.functional.gelu(enc.conv2(h)).transpose(1, 2)
        h = h + enc.embed_positions.weight[:h.shape[1]]
        mask = None
        if padded:  # (batch, 1, 1, keys): True where a key is attended to
            mask = (torch.arange(h.shape[1], device=x.device) < ((lengths + 1) // 2)[:, None])[:, None, None, :]
        hidden = [h]
        for layer in enc.layers:
            h = layer(h, mask)
            hidden.append(h)
        if self.final_norm:
            hidden[-1] = enc.layer_norm(h)
        return hidden
