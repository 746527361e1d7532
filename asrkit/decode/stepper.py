"""The decoder's side of the beam search: the bookkeeping of rows around the model's decoder steps.

Rows are (utterance, beam slot), K consecutive rows per utterance. `step(ys (N, L), live=None)` gives
log-probs (M, V) of the token after each prefix (every prefix one longer than at the last step), for
the rows `live` (M,) only when given: rows of dead hypotheses (score -inf: a finished hypothesis's
slot, the K-1 empty slots at the start) are not computed, and their caches are not kept.
`reorder(index)`: row r of the next step continues row index[r] of this one (beam reordering, and
dropping the rows of finished utterances); a dead row must only be continued by dead rows.
`keep(utts)`: only these utterances (indices into the current ones) go on. Reorders are applied
lazily, composed, at the next step.

The model provides the steps (see docs/INTERNALS.md): `decoder_init(enc, enc_lens, K) -> state`,
`decoder_step(tokens (M,), state) -> (logp (M, V), state)`, and the state's `at_rows(live)` (the
rows the next step computes: the only place the live rows reach the model), `select(index)` (its
per-row caches) and `keep(utts)` (its per-utterance memory).
"""
from __future__ import annotations

import torch


class RowMap:
    """Which cache row holds each row's state: reorders compose until the next step gathers once."""

    def __init__(self):
        self.index: torch.Tensor | None = None  # pending: row r continues row index[r] of the last step
        self.slot: torch.Tensor | None = None  # last step's row -> its row in the cache (None: identity)

    def reorder(self, index: torch.Tensor) -> None:
        self.index = index if self.index is None else self.index[index]

    def gather(self, live: torch.Tensor | None, n_rows: int, device) -> torch.Tensor | None:
        """Cache rows to take for this step's rows `live` (all if None); None: the cache as it is."""
        index, self.index = self.index, None
        if live is not None:
            index = live if index is None else index[live]
        if self.slot is not None:
            index = self.slot if index is None else self.slot[index]
        if live is None:
            self.slot = None
        else:  # dead rows point at row 0: only dead rows continue them
            self.slot = torch.zeros(n_rows, dtype=torch.long, device=device)
            self.slot[live] = torch.arange(len(live), device=device)
        return index


class Stepper:
    def __init__(self, model, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int, **state_options):
        self.model = model
        self.state = model.decoder_init(enc, enc_lens, beam, **state_options)
        self.rows, self.length = RowMap(), 0

    def step(self, ys: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        if ys.size(1) != self.length + 1:
            raise ValueError(f"the decoder steps one position at a time from <sos>: got prefixes of "
                             f"length {ys.size(1)} after {self.length} steps")
        index = self.rows.gather(live, ys.size(0), ys.device)
        if index is not None and self.length:
            self.state = self.state.select(index)
        self.length += 1
        logp, self.state = self.model.decoder_step(ys[:, -1] if live is None else ys[live, -1],
                                                   self.state.at_rows(live))
        return logp

    def reorder(self, index: torch.Tensor) -> None:
        self.rows.reorder(index)

    def keep(self, utts: torch.Tensor) -> None:
        self.state = self.state.keep(utts)
