"""Transcribe new audio with an experiment dir: the feature extractor the model was trained on (from
its feats_attrs.json), then the decoder; optional word timings from CTC forced alignment (a model
without a CTC head gives one span for the whole file).

    from asrkit.transcribe import Transcriber
    asr = Transcriber("exp/<tag>")                      # joint CTC/attention, beam 10, on CPU
    asr.transcribe(["a.flac", "b.wav"], timings=True)   # [{"file", "text", "score", "words": [...]}]
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from asrkit.audio import SAMPLE_RATE, load_audio
from asrkit.decode.search import DecodeOptions, check_model
from asrkit.errors import DataError

log = logging.getLogger(__name__)
LONG_SAMPLES = 30 * SAMPLE_RATE  # longer files are extracted in overlapping windows


def extractor_from_attrs(attrs: dict, device: str | torch.device = "cpu"):
    """Rebuild the stage-1 extractor that a model's features came from, and check it is the same."""
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.features.store import check_compatible

    ext = ExtractorSpec.from_attrs(attrs).build(device)
    check_compatible(ext.attrs, attrs, "feature extractor of the model dir")
    return ext


def word_timings(ctc_logp: torch.Tensor, token_ids: list[int], token_strs: list[str], token_type: str,
                 frame_s: float, blank: int = 0) -> list[dict]:
    """Words with start/end seconds and mean log-prob from the CTC forced alignment of the tokens."""
    import torchaudio.functional as AF

    if not token_ids or ctc_logp.size(0) < len(token_ids):
        return []
    path, scores = AF.forced_align(ctc_logp[None].float().cpu(), torch.tensor([token_ids]), blank=blank)
    spans = AF.merge_tokens(path[0], scores[0].exp())
    words: list[dict] = []
    for tok, span in zip(token_strs, spans):
        new_word = token_type == "word" or not words or (token_type == "bpe" and tok.startswith("\u2581"))
        if token_type == "char" and tok == "<space>":
            words.append(None)  # boundary marker, removed below
            continue
        piece = tok.lstrip("\u2581") if token_type == "bpe" else tok
        if new_word or words[-1] is None:
            words.append({"word": piece, "start": span.start * frame_s, "end": span.end * frame_s,
                          "_p": [span.score]})
        else:
            w = words[-1]
            w["word"] += ("" if token_type != "word" else " ") + piece
            w["end"] = span.end * frame_s
            w["_p"].append(span.score)
    out = []
    for w in filter(None, words):
        p = w.pop("_p")
        out.append({**w, "start": round(w["start"], 3), "end": round(w["end"], 3),
                    "confidence": round(float(np.mean(p)), 4)})
    return out


class Transcriber:
    """A model dir ready to transcribe files; search options: asrkit.decode.DecodeOptions' fields."""

    def __init__(self, model_dir, checkpoint: str = "model.avg.pth", device: str = "cpu", **search):
        from asrkit.model_io import load_model

        self.device = torch.device(device)
        self.model, self.tokenizer, self.config, self.attrs = load_model(model_dir, checkpoint, self.device)
        self.extractor = extractor_from_attrs(self.attrs, self.device)
        self.opts = check_model(self.model, DecodeOptions(**search), str(model_dir))
        self.frame_s = self.model.subsampling / float(self.attrs["frame_rate"])

    def features(self, path: str) -> np.ndarray:
        audio = load_audio(path, sample_rate=SAMPLE_RATE)
        # the length check is on the samples: `prepare` returns what the extractor's batch step takes,
        # which for fbank is already frames
        if self.extractor.num_frames(len(audio)) < self.model.min_frames:
            raise DataError(f"too short ({len(audio) / SAMPLE_RATE:.2f} s) for this model", str(path))
        wav = self.extractor.prepare(audio)
        if len(audio) > LONG_SAMPLES and hasattr(self.extractor, "extract_long"):
            feats = self.extractor.extract_long(wav, LONG_SAMPLES)
        else:
            feats = self.extractor([wav])[0]
        return np.asarray(feats, dtype=np.float32)

    @torch.no_grad()
    def transcribe(self, paths, timings: bool = False, batch_size: int = 8) -> list[dict]:
        """One record per file, in order; a file that cannot be read or decoded gets {"file", "error"}
        instead of text. Files are decoded `batch_size` at a time (the search batches utterances x beams)."""
        from asrkit.decode.runner import Utterance, decode_utterances

        paths = [str(p) for p in paths]
        feats: dict[str, np.ndarray] = {}
        out: dict[str, dict] = {}
        for path in paths:
            try:
                feats[path] = self.features(path)
            except DataError as e:
                log.warning("%s", e)
                out[path] = {"file": path, "error": str(e)}
        utts = [Utterance(p, feats[p].shape[-2], 0.0) for p in paths if p in feats]
        failed: list[tuple[str, str]] = []
        for u, nbest, _ in decode_utterances(self.model, utts, feats.__getitem__, self.opts, batch_size,
                                             self.device, failed, progress=False):
            h = nbest[0] if nbest else None
            rec = {"file": u.utt_id, "text": self.tokenizer.decode(h.tokens) if h else "",
                   "score": h.score if h else None}
            if timings and h and self.model.ctc is None:  # (decoder whisper): no alignment, one span
                rec["words"] = [{"word": rec["text"], "start": 0.0, "end": round(u.frames * self.frame_s, 3),
                                 "confidence": None}] if rec["text"] else []
            elif timings and h:
                x = torch.from_numpy(feats[u.utt_id][None]).to(self.device)
                enc, enc_lens = self.model.encode(x, torch.tensor([u.frames], device=self.device))
                logp = self.model.ctc_log_probs(enc)[0, : int(enc_lens[0])]
                strs = [self.tokenizer.tokens[t] for t in h.tokens]
                rec["words"] = word_timings(logp, h.tokens, strs, self.tokenizer.token_type, self.frame_s,
                                            self.model.blank)
            out[u.utt_id] = rec
        out.update({p: {"file": p, "error": why} for p, why in failed})
        return [out[p] for p in paths]
