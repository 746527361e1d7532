"""The "filtered" test of the children's-speech literature: zero-shot Whisper decodes the test set, and
an utterance is dropped when Whisper's WER on it is above `max_wer` percent, or when its reference
has fewer than `min_words` words (both after the `whisper` normalizer), as SPAPL's MyST preparation
and ESPnet's egs2/myst/asr1/local/whisper_filter.py do with whisper-large-v2.

    kept = whisper_filter("data/local/manifest.jsonl", "openai/whisper-large-v2", "data/local/whisper_filter",
                          split="test")

The decoding is batched (on the GPUs when there are some, each a share), English, through
transformers' `generate`, as openai-whisper's `transcribe` decodes (`FALLBACK`): greedy (or a beam
search) at temperature 0, and a window whose text repeats itself (compression ratio) or whose mean
log-probability is under -1 is decoded again by sampling at temperature 0.2, 0.4, ... 1.0 until it
passes. Without the fallback, greedy decoding of children's speech loops on repetitions, and a
beam of 5 loops more (MyST test: 47.4% and 64.8% WER, against 29.2% with the fallback in
faster-whisper), which filters the wrong utterances out. An utterance longer than Whisper's 30 s
window is decoded as consecutive 30 s windows whose texts are joined. It is resumable (asrkit/shards.py): every batch's hypotheses
are appended to a part in `hyp.tsv.partial/`, merged into `hyp.tsv` at the end, and a rerun decodes
only what neither holds. An utterance that cannot be read or decoded is reported and not kept;
when most fail, the run stops with the first one's cause (asrkit.failures).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asrkit.audio import SAMPLE_RATE, load_audio
from asrkit.device import process_device
from asrkit.errors import DataError
from asrkit.failures import batch_or_one_by_one, check_failures
from asrkit.fileio import atomic_open, open_for_append, read_jsonl, resolve_audio_path, write_json
from asrkit.normalize import get_normalizer
from asrkit.scoring import score_utt
from asrkit.shards import run_sharded

log = logging.getLogger("asrkit.whisper_filter")
WINDOW = 30 * SAMPLE_RATE
# openai-whisper transcribe's fallback, in transformers' terms: its compression ratio is of the
# token ids' bytes, on which 1.35 is the counterpart of openai's 2.4 on the text (transformers'
# documentation); no_speech_threshold leaves a window empty that is most likely silence
FALLBACK = dict(temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), compression_ratio_threshold=1.35, logprob_threshold=-1.0,
                no_speech_threshold=0.6)


def read_hyps(path: Path) -> dict[str, tuple[str, str]]:
    """{utt_id: (hypothesis, error)} of the complete lines of a hyp.tsv (or of a part of one)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.count("\t") == 2:  # a line cut by a kill is decoded again
            utt, hyp, err = line.rstrip("\n").split("\t")
            out[utt] = (hyp, err)
    return out


def decoding_of(num_beams: int, fallback: bool) -> dict:
    """The decoding options, as recorded beside hyp.tsv (<hyp.tsv>.decoding.json) and in filter.json."""
    return {"num_beams": num_beams, **({k: list(v) if isinstance(v, tuple) else v for k, v in FALLBACK.items()}
                                      if fallback else {"temperature": 0.0})}


def transcribe(records: list[dict], model: str, hyp_tsv: Path, batch_size: int = 16,
               device: str | None = None, progress: bool = True, num_beams: int = 1,
               fallback: bool = True) -> dict[str, tuple[str, str]]:
    """Zero-shot hypotheses {utt_id: (text, error)} of `records` (greedy, or a beam search of
    `num_beams`, at temperature 0 and, with `fallback`, as openai-whisper falls back; see the module
    docstring), kept in hyp_tsv: what it holds is not decoded again, except failures, unless it was
    decoded otherwise (<hyp_tsv>.decoding.json). The rest is shared (asrkit/shards.py) among the
    GPUs (or the ranks of a torchrun launch), each appending batch by batch to its part in
    <hyp_tsv>.partial/, merged into hyp_tsv at the end. Under torchrun the ranks other than 0 return None."""
    options, recorded = decoding_of(num_beams, fallback), Path(f"{hyp_tsv}.decoding.json")
    if hyp_tsv.is_file() and recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8")) != options:
        log.info("%s was decoded with other options: decoding afresh", hyp_tsv)
        hyp_tsv.unlink()
    write_json(recorded, options)
    done = read_hyps(hyp_tsv)
    todo = sorted((r for r in records if done.get(r["utt_id"], ("", "failed"))[1]),
                  key=lambda r: -float(r.get("duration") or 0))
    if not todo:
        return done
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    job = _ZeroShot(model=model, hyp_tsv=hyp_tsv, batch_size=batch_size, gpus=gpus, progress=progress,
                    num_beams=num_beams, planned=len(todo), fallback=fallback)
    return run_sharded(job, todo, lambda r: r["utt_id"], Path(f"{hyp_tsv}.partial"),
                       {"model": str(model), **options}, ".tsv", processes=max(1, gpus))


@dataclass
class _ZeroShot:
    """Whisper's zero-shot decoding as a sharded job: each part is lines of hyp.tsv."""
    model: str
    hyp_tsv: Path
    batch_size: int
    gpus: int  # 0: the CPU
    progress: bool
    num_beams: int
    planned: int
    fallback: bool = True

    def held(self, part: Path) -> set[str]:
        return {u for u, (_, err) in read_hyps(part).items() if not err}  # (a failure is tried again)

    def work(self, records: list[dict], part: Path, rank: int) -> list[tuple[str, str]]:
        from asrkit.ssl import load_whisper, load_whisper_processor

        device = process_device(self.gpus, rank)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        processor = load_whisper_processor(self.model)
        whisper = load_whisper(self.model, dtype).to(device).eval()
        options = {"num_beams": self.num_beams, **(FALLBACK if self.fallback else {})}
        if getattr(whisper.generation_config, "is_multilingual", True):  # (an English-only *.en model has
            options.update(language="en", task="transcribe")            # no language or task tokens)

        def generate(audio: dict[str, list], utts: list[str]) -> list[str]:
            """The text of each utterance, all their windows in one batch."""
            windows = [(u, w) for u in utts for w in audio[u]]
            if not windows:  # (empty audio)
                return [""] * len(utts)
            feats = processor.feature_extractor([w for _, w in windows], sampling_rate=SAMPLE_RATE,
                                                return_tensors="pt", return_attention_mask=True)
            torch.manual_seed(0)  # (the fallback samples: the same batch decodes alike on a rerun)
            with torch.inference_mode():
                ids = whisper.generate(feats.input_features.to(device, dtype),
                                       attention_mask=feats.attention_mask.to(device), **options)
            texts = processor.batch_decode(ids, skip_special_tokens=True)
            return [" ".join(t.strip() for (o, _), t in zip(windows, texts) if o == u) for u in utts]

        failed: list[tuple[str, str]] = []
        with open_for_append(part) as out, tqdm(total=len(records), unit="utt", desc="Whisper zero-shot",
                                                disable=not (self.progress and rank == 0)) as bar:
            for i in range(0, len(records), self.batch_size):
                batch = records[i:i + self.batch_size]
                audio, errors = {}, {}  # utterance -> its 30 s windows, or why it has none
                for r in batch:
                    try:
                        wav = load_audio(r["audio"], r.get("start"), r.get("end"))
                        audio[r["utt_id"]] = [wav[start:start + WINDOW] for start in range(0, len(wav), WINDOW)]
                    except DataError as e:
                        errors[r["utt_id"]] = str(e)
                alone_failed: list[tuple[str, str]] = []
                texts = dict(zip(audio, batch_or_one_by_one(lambda us: generate(audio, us), list(audio), str,
                                                            alone_failed, "decoding failed", (RuntimeError,))
                                 if audio else []))
                errors.update(alone_failed)
                for r in batch:
                    u = r["utt_id"]
                    hyp, err = " ".join((texts.get(u) or "").split()), " ".join(errors.get(u, "").split())
                    out.write(f"{u}\t{hyp}\t{err}\n")
                out.flush()
                bar.update(len(batch))
                failed += [(u, errors[u]) for u in (r["utt_id"] for r in batch) if u in errors]
                check_failures(i + len(batch), failed, "Whisper's zero-shot decoding", str(self.hyp_tsv))
        return failed

    def merge(self, parts: list[Path], skipped: list[tuple[str, str]], resumed: set[str]) -> dict:
        check_failures(self.planned, skipped, "Whisper's zero-shot decoding", str(self.hyp_tsv), final=True)
        hyps = read_hyps(self.hyp_tsv)
        for part in parts:
            for u, (hyp, err) in read_hyps(part).items():
                if not (err and u in hyps and not hyps[u][1]):  # a success is not undone by a failure
                    hyps[u] = (hyp, err)
        with atomic_open(self.hyp_tsv) as f:
            f.writelines(f"{u}\t{hyp}\t{err}\n" for u, (hyp, err) in hyps.items())
        return hyps


def apply_rule(records: list[dict], hyps: dict[str, tuple[str, str]], max_wer: float = 50.0,
               min_words: int = 3, normalizer: str = "whisper") -> list[dict]:
    """One row per record: utt_id, ref_words, wer (percent, None when not decoded), kept, reason."""
    normalize = get_normalizer(normalizer)
    rows = []
    for r in records:
        hyp, err = hyps.get(r["utt_id"], ("", "not decoded"))
        ref = normalize(r["text"])
        n = len(ref.split())
        wer = None if err else score_utt(r["utt_id"], ref, normalize(hyp), {}).word.rate
        if err:
            reason = f"not decoded: {err}"
        elif n < min_words:
            reason = f"fewer than {min_words} reference words"
        elif wer > max_wer:
            reason = f"Whisper WER above {max_wer:g}%"
        else:
            reason = ""
        rows.append(dict(utt_id=r["utt_id"], ref_words=n, wer=wer, kept=not reason, reason=reason, hyp=hyp))
    return rows


def whisper_filter(data: str | os.PathLike, model: str, out_dir: str | os.PathLike, split: str | None = "test",
                   max_wer: float = 50.0, min_words: int = 3, normalizer: str = "whisper", batch_size: int = 16,
                   device: str | None = None, progress: bool = True) -> list[str]:
    """Decode the records of `data` (those of `split`, if the list has a split field), apply the rule,
    and write out_dir/{hyp.tsv, filter.tsv, filter.json, test_filtered.ids}; returns the kept ids."""
    out_dir = Path(out_dir)
    records = []
    for lineno, r in read_jsonl(data):
        if "utt_id" not in r or "audio" not in r or "text" not in r:
            raise DataError("record needs utt_id, audio and text", f"{data}:{lineno}")
        if split is None or r.get("split", split) == split:
            records.append(dict(r, audio=resolve_audio_path(r["audio"], data)))
    if not records:
        raise DataError(f"no record of split {split!r}", str(data), "check --split (or pass a list of that split)")
    hyps = transcribe(records, model, out_dir / "hyp.tsv", batch_size, device, progress)
    rows = apply_rule(records, hyps, max_wer, min_words, normalizer)
    with atomic_open(out_dir / "filter.tsv") as f:
        f.write("utt_id\tref_words\twer\tkept\treason\thyp\n")
        for x in rows:
            wer = "" if x["wer"] is None else f"{x['wer']:.1f}"
            f.write(f"{x['utt_id']}\t{x['ref_words']}\t{wer}\t{int(x['kept'])}\t{x['reason']}\t{x['hyp']}\n")
    kept = [x["utt_id"] for x in rows if x["kept"]]
    counts = {"utterances": len(rows), "kept": len(kept)}
    for x in rows:
        if x["reason"]:
            key = "dropped: " + x["reason"].split(":")[0]
            counts[key] = counts.get(key, 0) + 1
    write_json(out_dir / "filter.json", dict(
        rule=f"drop when the reference has fewer than {min_words} words or zero-shot Whisper's WER is above "
             f"{max_wer:g}% (both after the {normalizer} normalizer)",
        model=str(model), max_wer=max_wer, min_words=min_words, normalizer=normalizer,
        decoding=dict(decoding_of(1, True), language="en", task="transcribe"),
        data=str(Path(data).resolve()), split=split, counts=counts))
    with atomic_open(out_dir / "test_filtered.ids") as f:
        f.writelines(u + "\n" for u in kept)
    log.info("Whisper filter: kept %d of %d utterances (%s)", len(kept), len(rows), out_dir / "test_filtered.ids")
    return kept
