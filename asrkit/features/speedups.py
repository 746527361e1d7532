"""CPU speed patches of a HF speech encoder's front end and attention (WavLM, wav2vec2, HuBERT),
applied by SSLExtractor when its `speedups` switch is on (the default on CPU, where they were
measured: bench/bench_dump.py prints both). They change how the numbers are computed, not which:
tests compare the patched model with the stock one.

- the convolutional front end keeps its activations time-major: the first layer is a matmul over
  frames of the waveform (its group norm folded into it, see _ConvLayer._first_group_norm), the
  others 2-D convolutions on "channels last" tensors with the GELU fused in by oneDNN;
- WavLM's attention gets its input in the memory layout that lets its q/k/v projections fold into
  one matmul (_time_major_input);
- with a 16-bit compute dtype, the linear and convolution weights are cast once (_precast_weights).

Each utterance of a batch is normalized over its own frames here as in the stock path (see
extractors.MaskedGroupNorm), so batched output equals one-by-one output either way.
"""
from __future__ import annotations

import torch
from torch import nn

# frames per block of the fused first layer on CPU: 4 MB of float32, near the cache, and few enough
# ops per utterance (each op costs a thread rendezvous, dear on a loaded machine)
_FIRST_ROWS = 4096


def speed_up(model: nn.Module, compute_dtype: torch.dtype) -> list:
    """Patch `model` in place; returns its conv layers, whose `lengths` the caller sets per batch."""
    convs = model.feature_extractor.conv_layers
    for i, layer in enumerate(convs):
        convs[i] = _ConvLayer(layer, first=i == 0)
    for module in model.encoder.modules():
        if hasattr(module, "torch_multi_head_self_attention"):  # WavLM's attention
            module.register_forward_pre_hook(_time_major_input, with_kwargs=True)
    if compute_dtype != torch.float32:
        _precast_weights(model, compute_dtype, keep=convs[0].conv)
    return list(convs)


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
