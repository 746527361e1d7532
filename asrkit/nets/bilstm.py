"""Stacked bidirectional LSTM encoder over packed sequences (padding never enters the recurrence).

use_projection: false  one multi-layer nn.LSTM (cuDNN's fused kernel), then a linear projection.
use_projection: true   ESPnet's BLSTMP: a linear projection after every layer (tanh between layers).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiLSTMEncoder(nn.Module):
    def __init__(self, input_size: int, hidden_size: int = 512, num_layers: int = 4,
                 output_size: int = 512, dropout_rate: float = 0.2, use_projection: bool = False):
        super().__init__()
        self.use_projection = use_projection
        sizes = [input_size] + [output_size] * (num_layers - 1)
        if use_projection:
            self.lstms = nn.ModuleList(nn.LSTM(s, hidden_size, batch_first=True, bidirectional=True) for s in sizes)
            self.projs = nn.ModuleList(nn.Linear(2 * hidden_size, output_size) for _ in sizes)
        else:
            self.lstms = nn.ModuleList([nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                                                bidirectional=True, dropout=dropout_rate if num_layers > 1 else 0.0)])
            self.projs = nn.ModuleList([nn.Linear(2 * hidden_size, output_size)])
        self.dropout = nn.Dropout(dropout_rate)
        self.output_size = output_size

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cpu_lens = lens.cpu()
        for i, (lstm, proj) in enumerate(zip(self.lstms, self.projs)):
            packed = pack_padded_sequence(x, cpu_lens, batch_first=True, enforce_sorted=False)
            out, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.size(1))
            x = proj(self.dropout(out))
            if i < len(self.lstms) - 1:
                x = torch.tanh(x)
        return x, lens
