"""The hybrid CTC/attention model: frontend -> [SpecAugment] -> encoder -> CTC head + decoder.

loss = ctc_weight * CTC + (1 - ctc_weight) * label-smoothed attention loss (ESPnet's ESPnetASRModel).
Label tensors are padded with ignore_id (-1); <blank> is 0 and <sos/eos> the last id.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.nets.frontend import Frontend
from asrkit.nets.specaug import SpecAugment

IGNORE_ID = -1


class LabelSmoothingLoss(nn.Module):
    """KL(smoothed one-hot || p) summed over tokens, divided by #tokens or by the batch size."""

    def __init__(self, size: int, smoothing: float, normalize_length: bool = False,
                 ignore_id: int = IGNORE_ID):
        super().__init__()
        self.size, self.smoothing, self.normalize_length, self.ignore_id = size, smoothing, normalize_length, ignore_id

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = logits.size(0)
        logits, target = logits.reshape(-1, self.size).float(), target.reshape(-1)
        ignore = target == self.ignore_id
        target = target.masked_fill(ignore, 0)
        true_dist = torch.full_like(logits, self.smoothing / (self.size - 1))
        true_dist.scatter_(1, target[:, None], 1.0 - self.smoothing)
        kl = F.kl_div(logits.log_softmax(-1), true_dist, reduction="none").sum(-1)
        denom = (~ignore).sum() if self.normalize_length else batch
        return kl.masked_fill(ignore, 0.0).sum() / denom


class IdentityEncoder(nn.Module):
    """encoder: identity. The frontend's output goes to the CTC head and the decoder as it is (for a
    decoder that reads the pretrained encoder's own states: decoder whisper)."""

    def __init__(self, input_size: int):
        super().__init__()
        self.output_size = input_size

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, lens


def add_sos_eos(ys: torch.Tensor, sos: int, eos: int, ignore_id: int = IGNORE_ID):
    """ys (B, L) padded with ignore_id -> decoder input [sos, y] (padded with eos), target [y, eos]."""
    b = ys.size(0)
    lens = (ys != ignore_id).sum(1)
    pad = ys.new_full((b, 1), ignore_id)
    ys_out = torch.cat([ys, pad], 1).scatter(1, lens[:, None], eos)
    ys_in = torch.cat([ys.new_full((b, 1), sos), ys.masked_fill(ys == ignore_id, eos)], 1)
    return ys_in, ys_out, lens + 1


CTC_FLOOR = -1e4  # the log-probability of a token that a CTC head of ctc_vocab N does not score


class ASRModel(nn.Module):
    def __init__(self, frontend: Frontend, specaug: SpecAugment | None, encoder: nn.Module,
                 decoder: nn.Module | None, vocab_size: int, ctc_weight: float = 0.3,
                 lsm_weight: float = 0.1, length_normalized_loss: bool = False, ctc_dropout_rate: float = 0.0,
                 ctc_lr_scale: float = 1.0, ctc_detach: bool = False, ctc_vocab: int | str = "all",
                 ssl_top: nn.Module | None = None):
        super().__init__()
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"model_conf.ctc_weight must be in [0, 1], got {ctc_weight}")
        if decoder is None and ctc_weight < 1.0:
            raise ValueError("without a decoder the model is CTC only: set model_conf.ctc_weight: 1.0")
        self.vocab_size, self.ctc_weight = vocab_size, ctc_weight
        self.blank, self.sos, self.eos, self.ignore_id = 0, vocab_size - 1, vocab_size - 1, IGNORE_ID
        self.frontend, self.specaug, self.encoder, self.decoder = frontend, specaug, encoder, decoder
        self.ssl_top = ssl_top  # the pretrained encoder's top layers, before the frontend (or None)
        self.subsampling = frontend.subsampling
        self.min_frames = frontend.min_frames
        self.ctc_dropout = nn.Dropout(ctc_dropout_rate)
        # like ESPnet, a branch with weight 0 is not built (DDP would see unused parameters)
        if ctc_vocab != "all" and not (isinstance(ctc_vocab, int) and 2 < ctc_vocab <= vocab_size):
            raise ValueError(f"model_conf.ctc_vocab must be all or a number of tokens (train: resolved to one by "
                             f"training, asrkit.train.experiment), got {ctc_vocab!r}")
        # ctc_vocab N: the head scores N tokens only, those of the training text (set_ctc_tokens; their ids
        # in the buffer ctc_token_ids): a linear layer onto Whisper's 50,260 tokens at 50 frames/s costs
        # more than the rest of the model
        n_ctc = vocab_size if ctc_vocab == "all" else ctc_vocab
        self.ctc = nn.Linear(encoder.output_size, n_ctc) if ctc_weight > 0 else None
        self.register_buffer("ctc_token_ids", torch.arange(n_ctc) if self.ctc is not None and n_ctc < vocab_size
                             else None)
        if self.ctc is not None and ctc_lr_scale != 1.0:  # (a new head beside pretrained layers learns faster)
            self.ctc.lr_scale = ctc_lr_scale
        # the CTC loss trains the head alone, the encoder learning from the attention loss only: a new
        # head's large early gradients would otherwise undo a pretrained encoder (Whisper's)
        self.ctc_detach = ctc_detach
        self.criterion_att = LabelSmoothingLoss(vocab_size, lsm_weight, length_normalized_loss)

    @property
    def max_tokens(self) -> int | None:
        """The longest hypothesis the decoder has positions for (decoder whisper: 444); None: no limit."""
        return getattr(self.decoder, "max_tokens", None)

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, D) or (B, L, T, D) -> (enc (B, T', D'), enc_lens (B,)). SpecAugment masks the
        stored features, before the pretrained top layers (ssl_top) where there are some."""
        if int(feat_lens.min()) < self.min_frames:
            raise ValueError(f"an utterance of {int(feat_lens.min())} frames is too short for the "
                             f"model's subsampling: skip those under {self.min_frames} frames")
        augment = self.specaug is not None and self.training
        if self.ssl_top is not None:
            x = feats.float()
            x = self.frontend.combine(self.ssl_top(self.specaug(x, feat_lens) if augment else x, feat_lens))
        else:
            x = self.frontend.combine(feats)
            x = self.specaug(x, feat_lens) if augment else x
        x, lens = self.frontend.subsample(x, feat_lens)
        return self.encoder(x, lens)

    def set_ctc_tokens(self, token_ids) -> None:
        """The tokens a head of ctc_vocab N scores: <blank>, <unk> and the training text's (N in all)."""
        ids = sorted({self.blank, 1, *map(int, token_ids)})
        if self.ctc_token_ids is None or len(ids) != self.ctc_token_ids.numel():
            raise ValueError(f"the CTC head scores {self.ctc.out_features} tokens, not {len(ids)}")
        self.ctc_token_ids.copy_(torch.tensor(ids))

    def ctc_log_probs(self, enc: torch.Tensor, full: bool = True) -> torch.Tensor:
        """(B, T, vocab) CTC log-probabilities; a head of ctc_vocab N gives the tokens it does not
        score CTC_FLOOR (or, not `full`, its N columns alone)."""
        if self.ctc is None:
            raise ValueError("this model has no CTC head (model_conf.ctc_weight: 0)")
        logp = self.ctc(self.ctc_dropout(enc)).float().log_softmax(-1)
        if self.ctc_token_ids is None or not full:
            return logp
        out = logp.new_full((*logp.shape[:-1], self.vocab_size), CTC_FLOOR)
        return out.index_copy_(-1, self.ctc_token_ids, logp)

    def ctc_loss(self, enc, enc_lens, ys, ys_lens) -> torch.Tensor:
        """The CTC loss of the head on encoder output enc (B, T, D), summed over tokens, per utterance."""
        logp = self.ctc_log_probs(enc, full=False).transpose(0, 1)  # (T, B, V)
        ys = ys[:, : int(ys_lens.max())]
        targets = ys.masked_fill(ys == self.ignore_id, 0)
        if self.ctc_token_ids is not None:  # our ids -> the head's columns; a token it lacks: <unk>
            column = torch.full((self.vocab_size,), 1, dtype=torch.long, device=ys.device)
            column[self.ctc_token_ids] = torch.arange(self.ctc_token_ids.numel(), device=ys.device)
            targets = column[targets]
        return F.ctc_loss(logp, targets, enc_lens, ys_lens, blank=self.blank, reduction="sum",
                          zero_infinity=True) / ys.size(0)

    def forward(self, feats, feat_lens, ys, ys_lens, return_encoder: bool = False) -> dict[str, torch.Tensor]:
        """The losses and attention accuracy of a batch; with return_encoder also its `enc`, `enc_lens`."""
        enc, enc_lens = self.encode(feats, feat_lens)
        ys = ys[:, : int(ys_lens.max())]
        zero = enc.new_zeros((), dtype=torch.float32)
        loss_ctc = loss_att = acc = zero
        if self.ctc is not None:
            loss_ctc = self.ctc_loss(enc.detach() if self.ctc_detach else enc, enc_lens, ys, ys_lens)
        if self.decoder is not None:
            ys_in, ys_out, ys_in_lens = add_sos_eos(ys, self.sos, self.eos, self.ignore_id)
            logits = self.decoder(ys_in, ys_in_lens, enc, enc_lens)
            loss_att = self.criterion_att(logits, ys_out)
            mask = ys_out != self.ignore_id
            acc = ((logits.argmax(-1) == ys_out) & mask).sum().float() / mask.sum().clamp(min=1)
        loss = self.ctc_weight * loss_ctc + (1.0 - self.ctc_weight) * loss_att
        out = {"loss": loss, "loss_ctc": loss_ctc.detach(), "loss_att": loss_att.detach(), "acc": acc.detach()}
        return {**out, "enc": enc, "enc_lens": enc_lens} if return_encoder else out

    def _need_decoder(self):
        if self.decoder is None:
            raise ValueError("this model has no attention decoder (model_conf.ctc_weight: 1.0); use CTC decoding")

    def decoder_forward(self, ys_in, ys_lens, memory, memory_lens) -> torch.Tensor:
        """Teacher forcing: log-probabilities (N, L, V) of the token after each prefix position."""
        self._need_decoder()
        return self.decoder(ys_in, ys_lens, memory, memory_lens).float().log_softmax(-1)

    def decoder_init(self, enc, enc_lens, rows_per_utt: int, **options):
        """The decoder's state before the first step of a search over rows_per_utt rows (hypotheses)
        per utterance of enc (B, T, D); see TransformerDecoder.init_state."""
        self._need_decoder()
        return self.decoder.init_state(enc, enc_lens, rows_per_utt, **options)

    def decoder_step(self, tokens, state):
        """Log-probabilities (M, V) of the token after each row's prefix, given its newest token (M,),
        for the rows the state is at (DecoderState.at_rows), and the next state (see TransformerDecoder.step)."""
        logits, state = self.decoder.step(tokens, state)
        return logits.float().log_softmax(-1), state
