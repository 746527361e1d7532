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

# frames per block of the fused first layer on CPU: 4 MB of float32, near the cache, and few enough
# ops per utterance (each op costs a thread rendezvous, dear on a loaded machine)
_FIRST_ROWS = 4096
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


class SSLExtractor:
    """Hidden states of a frozen HF speech encoder, batched so that an utterance's features do not
    depend on what it is batched with (see _ConvLayer).

    With a 16-bit `compute_dtype` the model runs under autocast, except for the first convolution
    (on the raw waveform) and its normalization, which stay in float32; the weights that autocast
    would cast on every call are cast once here instead (the same numbers, fewer copies)."""

    def __init__(self, model: str, layers: str = "9", device: str = "cpu", dtype: str = "float16",
                 compute_dtype: str = "auto"):
        self.device = torch.device(device)
        self.model, self.do_normalize = load_ssl_model(model, self.device)
        config = self.model.config
        self.layers, self.reduce = parse_layers(layers, config.num_hidden_layers)
        if compute_dtype == "auto":
            compute_dtype = default_compute_dtype(self.device)
        self.compute_dtype, self.dtype, self.config = DTYPES[compute_dtype], dtype, config
        self.field, self.stride = conv_geometry(config)
        self.attrs = dict(feats_type="wavlm", ssl_model=str(model), model_type=config.model_type,
                          weights_hash=weights_hash(self.model), layers=self.layers, layer_reduce=self.reduce,
                          dim=config.hidden_size, num_layers=len(self.layers) if self.reduce == "stack" else 1,
                          sample_rate=SAMPLE_RATE, frame_rate=SAMPLE_RATE / self.stride, dtype=dtype,
                          compute_dtype=compute_dtype, asrkit_version=asrkit.__version__)
        convs = self.model.feature_extractor.conv_layers
        for i, layer in enumerate(convs):
            convs[i] = _ConvLayer(layer, first=i == 0)
        self._convs = list(convs)
        # layers above the last one kept are never needed: drop them (WavLM's relative position bias
        # lives in layer 0, so the lower layers compute exactly what they compute in the full model)
        self.model.encoder.layers = self.model.encoder.layers[:max(self.layers)]
        for module in self.model.encoder.modules():
            if hasattr(module, "torch_multi_head_self_attention"):  # WavLM's attention
                module.register_forward_pre_hook(_time_major_input, with_kwargs=True)
        if self.compute_dtype != torch.float32:
            _precast_weights(self.model, self.compute_dtype, keep=convs[0].conv)

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
        for m in self._convs:
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


def _is_erf_gelu(act: nn.Module) -> bool:
    """Whether an HF activation module is the exact (erf) GELU."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu


def _time_major_input(module, args, kwargs):
    """Give WavLM's attention its (batch, time, dim) input as a view of (time, batch, dim) memory.

    It transposes its input to (time, batch, dim) for F.multi_head_attention_forward, whose q/k/v
    projections on a batch of several cannot fold that view into one matmul: torch then broadcasts
    a batched matmul that copies the weight once per frame (40 MB per projection for a 6 s batch
    of three in bf16). In this layout the transposed view is contiguous and folds. Same numbers."""
    key = "hidden_states" if "hidden_states" in kwargs else None
    h = kwargs[key] if key else args[0]
    if h.dim() == 3 and h.shape[0] > 1:
        h = h.transpose(0, 1).contiguous().transpose(0, 1)
        if key:
            kwargs = {**kwargs, key: h}
        else:
            args = (h,) + tuple(args[1:])
    return args, kwargs


def _precast_weights(model: nn.Module, dtype: torch.dtype, keep: nn.Module) -> None:
    """Cast the weights of the modules whose ops autocast runs in `dtype` (linear, convolution) once,
    rather than on every call (autocast caches casts only for weights that require grad). A weight
    norm (the positional convolution's) is folded into its weight first: it is constant."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)) and module is not keep:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.to(dtype)


class _ConvLayer(nn.Module):
    """One conv + [norm] + activation layer of the front end (WavLM/wav2vec2/HuBERT), made exact
    under batching and cheaper.

    A "group"-norm front end (WavLM/wav2vec2/HuBERT Base) normalizes every channel of its first
    layer over time: zero padding would shift the mean and variance of shorter utterances in a
    batch. With `lengths` (input samples per utterance) set, each utterance is normalized over its
    own frames only, by the same group_norm call that one-by-one extraction makes.

    Activations are kept time-major, (batch, time, channels) in memory, and handed on as
    (batch, channels, time) views, the HF layers' shape: the first layer (one input channel, a
    short kernel) is a matmul over frames of the waveform, the others are 2-D convolutions on
    "channels last" tensors, which oneDNN computes without reordering between layers. The first
    layer and its normalization run in float32 even under autocast (its input is the waveform, it
    is cheap, and its statistics are best kept exact); its output is cast to the compute dtype
    (after the activation when the norm is a group norm, before it otherwise).
    """

    def __init__(self, layer: nn.Module, first: bool = False):
        super().__init__()
        self.conv, self.activation, self.first = layer.conv, layer.activation, first
        self.norm = getattr(layer, "layer_norm", None)
        self.lengths: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.device.type
        low = torch.get_autocast_dtype(dt) if torch.is_autocast_enabled(dt) else None
        with torch.autocast(dt, enabled=False):
            if self.first and isinstance(self.norm, nn.GroupNorm):
                return self._first_group_norm(x[:, 0].float(), low).transpose(1, 2)
            if self.first:
                y = self._norm(self._frames_matmul(x[:, 0].float()))  # (batch, time, channels)
                return self.activation(y.to(low) if low is not None else y).transpose(1, 2)
            y, activated = self._conv2d(x, low or self.conv.weight.dtype)
            return (y if activated else self.activation(self._norm(y))).transpose(1, 2)

    def _frames(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, frames, kernel) overlapping view of the waveforms; the conv weight as (kernel, out)."""
        (k,), (s,) = self.conv.kernel_size, self.conv.stride
        if self._weight is None:  # a first layer has one input channel
            self._weight = self.conv.weight.detach().float().reshape(-1, k).t().contiguous()
        return wav.as_strided((wav.shape[0], (wav.shape[1] - k) // s + 1, k), (wav.stride(0), s, 1))

    def _frames_matmul(self, wav: torch.Tensor) -> torch.Tensor:
        frames = self._frames(wav)
        b, t, k = frames.shape
        y = (frames.reshape(b * t, k) @ self._weight).view(b, t, -1)  # reshape copies: frames overlap
        return y if self.conv.bias is None else y.add_(self.conv.bias.float())

    def _first_group_norm(self, wav: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
        """First conv + group norm + activation, (batch, frames, channels), computed in one pass.

        The conv is linear in the frames of the waveform, so each channel's mean and variance over
        an utterance follow from the frames' mean and (kernel x kernel) covariance, in float64,
        without reading the conv output; the normalization then folds into the conv's weights and
        bias (per utterance), and the output is written once, a cache-sized block at a time, in the
        compute dtype. The same numbers as conv, then group_norm (then the activation), up to float32
        rounding."""
        frames = self._frames(wav)
        b, t, _ = frames.shape
        norm, w64 = self.norm, self._weight.double()
        c, g = w64.shape[1], norm.num_groups
        n = [t] * b if self.lengths is None else \
            ((self.lengths - self.conv.kernel_size[0]) // self.conv.stride[0] + 1).clamp(min=1, max=t).tolist()
        out = torch.empty(b, t, c, dtype=low or torch.float32, device=wav.device)
        gelu = _is_erf_gelu(self.activation)
        rows = _FIRST_ROWS if wav.device.type == "cpu" else t
        for i in range(b):
            f = frames[i, :n[i]].double()
            mu = f.mean(0)
            cov = f.T @ f / n[i] - torch.outer(mu, mu)
            mean = mu @ w64 + (0 if self.conv.bias is None else self.conv.bias.double())
            var = ((cov @ w64) * w64).sum(0)
            gmean = mean.view(g, c // g).mean(1)
            gvar = (var + mean ** 2).view(g, c // g).mean(1) - gmean ** 2
            scale = torch.rsqrt(gvar + norm.eps).repeat_interleave(c // g) * norm.weight.double()
            shift = norm.bias.double() + ((0 if self.conv.bias is None else self.conv.bias.double())
                                          - gmean.repeat_interleave(c // g)) * scale
            weight, shift = (w64 * scale).float(), shift.float()
            for a in range(0, n[i], rows):
                block = torch.addmm(shift, frames[i, a:min(a + rows, n[i])], weight)
                # the activation in float32, rounded once into `out`
                out[i, a:a + len(block)] = nn.functional.gelu(block) if gelu else self.activation(block)
            out[i, n[i]:] = 0
        return out

    def _conv2d(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
        """The conv on (batch, time, channels) memory; (output, whether the activation is applied)."""
        if self._weight is None or self._weight.dtype != dtype:
            self._weight = self.conv.weight.detach()[:, :, None].to(dtype).contiguous(
                memory_format=torch.channels_last)
        x = x[:, :, None].to(dtype=dtype, memory_format=torch.channels_last)  # a view if time-major
        bias = None if self.conv.bias is None else self.conv.bias.to(dtype)
        args = ((0, 0), (1,) + self.conv.stride, (1,) + self.conv.dilation, self.conv.groups)
        fused = False
        if self.norm is None and x.device.type == "cpu" and _is_erf_gelu(self.activation):
            try:  # oneDNN applies the GELU to the float32 accumulator: one pass fewer, and rounded once
                y = torch.ops.mkldnn._convolution_pointwise(x, self._weight, bias, *args, "gelu", [], "none")
                fused = True
            except (AttributeError, RuntimeError):  # a torch without the op (or without oneDNN)
                pass
        if not fused:
            y = nn.functional.conv2d(x, self._weight, bias, args[1], args[0], args[2], args[3])
        return y[:, :, 0].transpose(1, 2), fused

    def _norm(self, y: torch.Tensor) -> torch.Tensor:
        """Normalization of time-major (batch, time, channels) activations."""
        if self.norm is None:
            return y
        if not isinstance(self.norm, nn.GroupNorm):  # LayerNorm over channels, per frame
            return self.norm(y)
        b, t, _ = y.shape
        norm, (k,), (s,) = self.norm, self.conv.kernel_size, self.conv.stride
        gn = lambda z: nn.functional.group_norm(  # noqa: E731  (on a "channels last" view)
            z.transpose(1, 2)[:, :, None], norm.num_groups, norm.weight, norm.bias, norm.eps)[:, :, 0].transpose(1, 2)
        n = [t] * b if self.lengths is None else ((self.lengths - k) // s + 1).clamp(min=1, max=t).tolist()
        if min(n) == t:  # nothing padded
            return gn(y)
        out = torch.empty_like(y)
        for i in range(b):  # each utterance over its own frames: what one-by-one extraction computes
            out[i, :n[i]] = gn(y[i:i + 1, :n[i]])[0]
            out[i, n[i]:] = 0
        return out
