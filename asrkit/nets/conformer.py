"""Conformer encoder (Gulati et al. 2020) as ESPnet/WeNet build it, pre-norm throughout.

Block: x + 1/2 FFN -> x + RelPosMHSA -> x + Conv -> x + 1/2 FFN -> LayerNorm (macaron style).
Option names follow ESPnet's encoder_conf for the Conformer.
"""
from __future__ import annotations

import torch
from torch import nn

from asrkit.nets.attention import RelPositionalEncoding, RelPositionMultiHeadAttention, length_mask

ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout_rate: float, activation: type = nn.SiLU):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), activation(), nn.Dropout(dropout_rate),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """pointwise conv -> GLU -> depthwise conv -> BatchNorm/LayerNorm -> swish -> pointwise conv."""

    def __init__(self, dim: int, kernel_size: int = 31, norm: str = "batch_norm", activation: type = nn.SiLU):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"cnn_module_kernel must be odd (a symmetric context), got {kernel_size}")
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        if norm not in ("batch_norm", "layer_norm"):
            raise ValueError(f"cnn_module_norm must be batch_norm or layer_norm, not {norm!r}")
        self.norm = nn.BatchNorm1d(dim) if norm == "batch_norm" else nn.LayerNorm(dim)
        self.activation = activation()
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); pad (B, 1, T) True on padding, zeroed so it does not enter the depthwise conv."""
        x = self.pointwise_conv1(x.transpose(1, 2).masked_fill(pad, 0.0))
        # GLU turns zeros into nonzero (the conv bias): mask again before mixing over time
        x = self.depthwise_conv(nn.functional.glu(x, dim=1).masked_fill(pad, 0.0))
        if isinstance(self.norm, nn.LayerNorm):
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        x = self.pointwise_conv2(self.activation(x))
        return x.masked_fill(pad, 0.0).transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, linear_units: int, dropout_rate: float,
                 attention_dropout_rate: float, macaron_style: bool, use_cnn_module: bool,
                 cnn_module_kernel: int, cnn_module_norm: str, activation: type):
        super().__init__()
        self.ff_scale = 0.5 if macaron_style else 1.0
        self.norm_ff_macaron = nn.LayerNorm(dim) if macaron_style else None
        self.feed_forward_macaron = (FeedForward(dim, linear_units, dropout_rate, activation)
                                     if macaron_style else None)
        self.norm_mha = nn.LayerNorm(dim)
        self.self_attn = RelPositionMultiHeadAttention(heads, dim, attention_dropout_rate)
        self.norm_conv = nn.LayerNorm(dim) if use_cnn_module else None
        self.conv_module = (ConvolutionModule(dim, cnn_module_kernel, cnn_module_norm, activation)
                            if use_cnn_module else None)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, linear_units, dropout_rate, activation)
        self.norm_final = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x, pos_emb, mask, pad):
        if self.feed_forward_macaron is not None:
            x = x + self.ff_scale * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos_emb, mask))
        if self.conv_module is not None:
            x = x + self.dropout(self.conv_module(self.norm_conv(x), pad))
        x = x + self.ff_scale * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    def __init__(self, input_size: int, output_size: int = 256, attention_heads: int = 4,
                 linear_units: int = 1024, num_blocks: int = 12, dropout_rate: float = 0.1,
                 positional_dropout_rate: float = 0.1, attention_dropout_rate: float = 0.0,
                 macaron_style: bool = True, use_cnn_module: bool = True, cnn_module_kernel: int = 31,
                 cnn_module_norm: str = "batch_norm", activation_type: str = "swish",
                 pos_enc_layer_type: str = "rel_pos", selfattn_layer_type: str = "rel_selfattn"):
        super().__init__()
        if pos_enc_layer_type != "rel_pos" or selfattn_layer_type != "rel_selfattn":
            raise ValueError("the Conformer here uses relative positions only: set pos_enc_layer_type: "
                             "rel_pos and selfattn_layer_type: rel_selfattn (or leave them out)")
        if activation_type not in ACTIVATIONS:
            raise ValueError(f"activation_type must be one of {sorted(ACTIVATIONS)}, not {activation_type!r}")
        # the frontend usually outputs output_size already (ESPnet's conv2d input layer); else a linear map
        self.input_proj = nn.Linear(input_size, output_size) if input_size != output_size else None
        self.pos_enc = RelPositionalEncoding(output_size, positional_dropout_rate)
        self.blocks = nn.ModuleList(
            ConformerBlock(output_size, attention_heads, linear_units, dropout_rate, attention_dropout_rate,
                           macaron_style, use_cnn_module, cnn_module_kernel, cnn_module_norm,
                           ACTIVATIONS[activation_type])
            for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(output_size)
        self.output_size = output_size

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_proj is not None:
            x = self.input_proj(x)
        x, pos_emb = self.pos_enc(x)
        valid = length_mask(lens, x.size(1))
        mask, pad = valid[:, None, :], ~valid[:, None, :]
        for block in self.blocks:
            x = block(x, pos_emb, mask, pad)
        return self.after_norm(x), lens
