"""One entry point for every decoding mode, on a padded batch of features:

    hyps = decode_batch(model, feats, feat_lens, DecodeOptions(mode="joint", beam=10, ctc_weight=0.3))

modes: ctc_greedy, ctc_prefix_beam, attention, joint (default), attention_rescoring (the CTC n-best
rescored by the decoder, as WeNet does). A batch that runs out of memory is split in two and retried.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from asrkit.decode.beam import Hyp, SearchOptions, beam_search
from asrkit.options import add_options, option, options_from
from asrkit.decode.ctc import ctc_greedy_search, ctc_prefix_beam_search_batch
from asrkit.errors import DataError

log = logging.getLogger(__name__)
MODES = ("ctc_greedy", "ctc_prefix_beam", "attention", "joint", "attention_rescoring")


@dataclass
class DecodeOptions(SearchOptions):
    mode: str = option("joint", "decoding mode: " + ", ".join(MODES), choices=MODES)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown decoding mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")
        if not 1 <= self.nbest <= self.beam:
            raise ValueError(f"nbest must be between 1 and the beam ({self.beam}), got {self.nbest}")
        if self.pre_beam_ratio < 1:
            raise ValueError(f"pre_beam_ratio must be at least 1, got {self.pre_beam_ratio}")
        if self.minlenratio < 0:
            raise ValueError(f"minlenratio cannot be negative, got {self.minlenratio}")


def add_search_options(parser) -> None:
    """--mode, --beam, ... on a command line, with DecodeOptions' defaults and help."""
    add_options(parser, DecodeOptions, group="search")


def search_options(args) -> DecodeOptions:
    """DecodeOptions from parsed arguments; a bad value is a DataError naming it."""
    try:
        return options_from(DecodeOptions, args)
    except ValueError as e:
        raise DataError(str(e), "decoding options") from None


def check_model(model, opts: DecodeOptions, where: str = "") -> DecodeOptions:
    """The options this model decodes with: joint decoding of a model without a CTC head (decoder
    whisper) is its attention search (ctc_weight 0); a clear error when the mode needs a branch (CTC
    head, decoder) that the model was built without."""
    if getattr(model, "ctc", 1) is None and opts.mode == "joint" and opts.ctc_weight > 0:
        log.info("%s has no CTC head: decoding with the attention decoder alone", where or "the model")
        opts = replace(opts, ctc_weight=0.0)
    needs_ctc = opts.mode != "attention" and not (opts.mode == "joint" and opts.ctc_weight == 0)
    if needs_ctc and getattr(model, "ctc", 1) is None:
        raise DataError(f"mode {opts.mode} needs the CTC head, which this model has not", where,
                        "use --mode attention (or --ctc_weight 0)")
    needs_att = opts.mode in ("attention", "attention_rescoring") or (opts.mode == "joint" and opts.ctc_weight < 1)
    if needs_att and getattr(model, "decoder", 1) is None:
        raise DataError(f"mode {opts.mode} needs the attention decoder, which this model has not", where,
                        "use --mode ctc_greedy or ctc_prefix_beam")
    return opts


def _trim(tokens: list[int], model) -> list[int]:
    return [t for t in tokens if t not in (model.sos, model.eos, model.blank)]


@torch.inference_mode()
def attention_rescoring(model, enc, enc_lens, ctc_logp, opts: DecodeOptions) -> list[list[Hyp]]:
    """CTC prefix beam search (all utterances at once), then every candidate scored by the decoder
    (teacher forcing), all candidates of all utterances in one decoder_forward call."""
    nbests = ctc_prefix_beam_search_batch(ctc_logp, enc_lens, beam=opts.beam, blank=model.blank)
    utt = torch.tensor([b for b, nb in enumerate(nbests) for _ in nb], device=enc.device)
    cands = [_trim(toks, model) for nb in nbests for toks, _ in nb]
    lens = torch.tensor([len(c) + 1 for c in cands], device=enc.device)
    ys_in = torch.full((len(cands), int(lens.max())), model.eos, dtype=torch.long, device=enc.device)
    ys_out = torch.full_like(ys_in, model.eos)
    for i, c in enumerate(cands):
        ys_in[i, 0] = model.sos
        ys_in[i, 1: len(c) + 1] = torch.tensor(c, dtype=torch.long)
        ys_out[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    logp = model.decoder_forward(ys_in, lens, enc[utt], enc_lens[utt]).float()
    tok_lp = logp.gather(2, ys_out[..., None]).squeeze(2)
    mask = torch.arange(ys_in.size(1), device=enc.device)[None] < lens[:, None]
    att = (tok_lp * mask).sum(1).tolist()
    out, i, w = [], 0, opts.ctc_weight
    for nb in nbests:
        hyps = []
        for toks, ctc_score in nb:
            c = cands[i]
            hyps.append(Hyp(c, (1 - w) * att[i] + w * ctc_score + opts.length_bonus * (len(c) + 1), att[i], ctc_score))
            i += 1
        out.append(sorted(hyps, key=lambda h: -h.score)[: opts.nbest])
    return out


@torch.no_grad()
def decode_encoded(model, enc, enc_lens, opts: DecodeOptions) -> list[list[Hyp]]:
    """Search from encoder output (B, T, D) with lengths (B,)."""
    if opts.mode == "attention":
        return beam_search(model, enc, enc_lens, replace(opts, ctc_weight=0.0))
    if opts.mode == "joint":
        return beam_search(model, enc, enc_lens, opts)
    ctc_logp = model.ctc_log_probs(enc).float()
    if opts.mode == "ctc_greedy":
        return [[Hyp(_trim(t, model), s, 0.0, s)] for t, s in ctc_greedy_search(ctc_logp, enc_lens, model.blank)]
    if opts.mode == "ctc_prefix_beam":
        return [[Hyp(_trim(t, model), s, 0.0, s) for t, s in nbest[: opts.nbest]]
                for nbest in ctc_prefix_beam_search_batch(ctc_logp, enc_lens, opts.beam, model.blank)]
    return attention_rescoring(model, enc, enc_lens, ctc_logp, opts)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(e)


@torch.no_grad()
def decode_batch(model, feats: torch.Tensor, feat_lens: torch.Tensor, opts: DecodeOptions,
                 keep: list | None = None) -> list[list[Hyp]]:
    """Encode and search a padded batch; on out-of-memory, split the batch in halves and retry. `keep`:
    a list that gets the encoder output (enc, enc_lens) of the batch (or of its halves, in order)."""
    try:
        enc, enc_lens = model.encode(feats, feat_lens)
        nbests = decode_encoded(model, enc, enc_lens, opts)
        if keep is not None:
            keep.append((enc, enc_lens))
        return nbests
    except (RuntimeError, MemoryError) as e:
        if not _is_oom(e) or feats.size(0) == 1:
            raise
    if feats.is_cuda:
        torch.cuda.empty_cache()
    half = feats.size(0) // 2
    log.warning("out of memory on a batch of %d utterances: retrying as %d + %d", feats.size(0), half,
                feats.size(0) - half)
    out = []
    for sl in (slice(0, half), slice(half, None)):
        lens = feat_lens[sl]
        out += decode_batch(model, feats[sl, : int(lens.max())], lens, opts, keep)
    return out


def hyp_record(utt_id: str, nbest: list[Hyp], tokenizer) -> dict:
    """One line of hyp.jsonl: the best hypothesis's text, tokens and score, and the n-best list."""
    def one(h: Hyp) -> dict:
        return {"text": tokenizer.decode(h.tokens), "tokens": [tokenizer.tokens[t] for t in h.tokens],
                "token_ids": h.tokens, "score": h.score, "att": h.att, "ctc": h.ctc}

    items = [one(h) for h in nbest]
    best = items[0] if items else {"text": "", "tokens": [], "token_ids": [], "score": None}
    return {"utt_id": utt_id, **best, "nbest": items}
