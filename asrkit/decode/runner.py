"""Decoding many utterances: longest first in padded batches, a failed batch retried one by one, and
(stage 4) a whole split decoded into hyp.jsonl, resumable, by one or several processes.

    from asrkit.decode.runner import decode_split
    decode_split("exp/<tag>", "data/test.jsonl", "dump/<feats_tag>/test.h5", "exp/<tag>/decode_test",
                 DecodeOptions(beam=10, ctc_weight=0.3))

The utterances are shared among processes by asrkit/shards.py: each appends its finished batches to
its part in <out>/.partial/, so an interrupted run resumes where it stopped if the options, the
weights (by content) and the inputs are the same, else it starts afresh; hyp.jsonl appears
atomically at the end. Utterances missing from the store, too short for the model, or failing to
decode are skipped and listed in <out>/skipped.txt.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterator, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import asrkit
from asrkit.cli import setup_logging
from asrkit.data import pad_feats
from asrkit.decode.beam import Hyp
from asrkit.decode.search import DecodeOptions, check_model, decode_batch, hyp_record
from asrkit.decode_info import DecodeInfo
from asrkit.device import process_device
from asrkit.distributed import launch
from asrkit.errors import DataError
from asrkit.failures import batch_or_one_by_one, check_failures
from asrkit.features.store import FeatureReader, check_compatible
from asrkit.fileio import file_digest, file_version, open_for_append, read_jsonl, write_jsonl, write_skipped
from asrkit.model_io import AVERAGE, WEIGHTS_SUFFIX, average_from_log, load_model, weights_path
from asrkit.shards import run_sharded

log = logging.getLogger("asrkit.decode")


class Utterance(NamedTuple):
    utt_id: Hashable  # a split list's id; transcribe decodes the pieces of files as themselves

    frames: int
    seconds: float


def longest_first(utts: list, batch_size: int, frames: Callable = lambda u: u.frames) -> list[list]:
    """Batches of up to batch_size, longest utterances first (little padding within a batch)."""
    order = sorted(utts, key=lambda u: -frames(u))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def decode_utterances(model, utts: list[Utterance], load: Callable[[str], np.ndarray], opts: DecodeOptions,
                      batch_size: int, device: torch.device, skipped: list, progress: bool = True,
                      where: str = "", encoded: dict | None = None) -> Iterator[tuple[Utterance, list[Hyp], float]]:
    """(utterance, n-best, seconds of its batch's search) per utterance, batch by batch, longest first.
    `load(utt_id)` gives its features (T, D) or (L, T, D). A batch that fails is decoded again one
    utterance at a time; one that fails alone is skipped: (utt_id, reason) appended to `skipped`.
    Failures that hit most utterances stop the run (failures.check_failures). `encoded`: a dict that
    gets each decoded utterance's encoder output (T', D'), for word timings."""
    tried, first_skipped = 0, len(skipped)
    for batch in tqdm(longest_first(utts, batch_size), desc="decode", unit="batch", dynamic_ncols=True,
                      disable=not progress):
        t0 = time.perf_counter()
        nbests = batch_or_one_by_one(lambda us: _decode(model, us, load, opts, device, encoded), batch,
                                     lambda u: u.utt_id, skipped, "decoding failed")
        seconds = (time.perf_counter() - t0) / len(batch)  # (a failed batch's time included)
        yield from ((u, nbest, seconds) for u, nbest in zip(batch, nbests) if nbest is not None)
        tried += len(batch)
        check_failures(tried, skipped[first_skipped:], "decoding", where)


def _decode(model, batch: list[Utterance], load, opts, device, encoded: dict | None = None) -> list[list[Hyp]]:
    """The n-best of each utterance of one batch (and its encoder output into `encoded`)."""
    feats, lens = pad_feats([load(u.utt_id) for u in batch])
    kept = [] if encoded is not None else None
    nbests = decode_batch(model, feats.to(device).float(), lens.to(device), opts, kept)
    if device.type == "cuda":
        torch.cuda.synchronize()  # (for the timing)
    if kept:
        rows = [enc[i, : int(enc_lens[i])] for enc, enc_lens in kept for i in range(enc.size(0))]
        encoded.update((u.utt_id, row) for u, row in zip(batch, rows))
    return nbests


def plan(data: str, reader, min_frames: int) -> tuple[list[Utterance], list[tuple[str, str]]]:
    """Utterances of a split list to decode, longest first, and (utt_id, reason) of those that cannot be."""
    frame_rate = float(reader.attrs.get("frame_rate", 50.0))
    todo, skipped = [], []
    for lineno, rec in read_jsonl(data):
        utt = rec.get("utt_id")
        if not utt:
            raise DataError("no utt_id", f"{data}:{lineno}", "every line needs an utt_id")
        if utt not in reader:
            skipped.append((utt, "not in the feature store (skipped or failed at stage 1)"))
        elif reader.num_frames(utt) < min_frames:
            skipped.append((utt, f"{reader.num_frames(utt)} frames: too short for the model (< {min_frames})"))
        else:
            frames = reader.num_frames(utt)
            todo.append(Utterance(utt, frames, rec.get("duration") or frames / frame_rate))
    return sorted(todo, key=lambda u: -u.frames), skipped


def read_records(part: Path) -> dict[str, dict]:
    """The hyp.jsonl records of a part, by utterance: its complete lines (a line cut by a kill is not
    one: that utterance is decoded again)."""
    done = {}
    for line in part.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            done[rec["utt_id"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return done


def decode_into(part: Path, model, tokenizer, reader, todo: list[Utterance], opts: DecodeOptions,
                batch_size: int, device: torch.device, progress: bool = True) -> list[tuple[str, str]]:
    """Decode `todo`, appending hyp.jsonl records to `part`; returns the utterances skipped."""
    skipped = []
    with open_for_append(part) as out:
        for u, nbest, _ in decode_utterances(model, todo, reader.__getitem__, opts, batch_size, device, skipped,
                                             progress, where=str(part.parent.parent)):
            out.write(json.dumps(hyp_record(u.utt_id, nbest, tokenizer), ensure_ascii=False) + "\n")
            out.flush()
    return skipped


@dataclass
class _Decoding:
    """Stage 4 as a sharded job (asrkit/shards.py): each part is a file of hyp.jsonl records."""
    model_dir: Path
    checkpoint: str
    data: str
    feats: str
    out: Path
    opts: DecodeOptions
    batch_size: int
    ngpu: int
    threads: int  # torch threads in all (shared by spawned processes)
    processes: int
    verbose: bool
    planned: list[Utterance]
    plan_skipped: list[tuple[str, str]]
    device: torch.device
    loaded: tuple | None = None  # (model, tokenizer) here; None in a spawned process, which loads its own
    started: float = field(default_factory=time.perf_counter)

    def __getstate__(self):
        return {**self.__dict__, "loaded": None}

    def held(self, part: Path) -> set[str]:
        return set(read_records(part))

    def work(self, items: list[Utterance], part: Path, rank: int) -> list[tuple[str, str]]:
        device = self.device
        if self.loaded is None:
            setup_logging(None, self.verbose, rank=rank)
            torch.set_num_threads(max(1, self.threads // self.processes))
            device = process_device(self.ngpu, rank)
            self.loaded = load_model(self.model_dir, self.checkpoint, device)[:2]
        return decode_into(part, *self.loaded, FeatureReader(self.feats), items, self.opts, self.batch_size, device,
                           progress=rank == 0)

    def merge(self, parts: list[Path], skipped: list[tuple[str, str]], resumed: set[str]) -> DecodeInfo:
        spent = time.perf_counter() - self.started
        skipped = self.plan_skipped + skipped
        check_failures(len(self.planned) + len(self.plan_skipped), skipped, "decoding", str(self.out), final=True)
        by_id = {k: r for part in parts for k, r in read_records(part).items()}
        records = [by_id[u.utt_id] for u in sorted(self.planned, key=lambda u: u.utt_id) if u.utt_id in by_id]
        write_jsonl(self.out / "hyp.jsonl", records)
        write_skipped(self.out / "skipped.txt", skipped)
        now = [u for u in self.planned if u.utt_id in by_id and u.utt_id not in resumed]
        audio_s = sum(u.seconds for u in now)
        info = DecodeInfo(search=asdict(self.opts), checkpoint=self.checkpoint, model_dir=str(self.model_dir),
                          data=str(self.data), feats=str(self.feats), utterances=len(records), decoded_now=len(now),
                          skipped=len(skipped), rtf=spent / audio_s if audio_s else 0.0, decode_seconds=spent,
                          audio_seconds=audio_s, device=str(self.device), nj=self.processes, threads=self.threads,
                          batch_size=self.batch_size,
                          versions={"asrkit": asrkit.__version__, "torch": torch.__version__,
                                    "python": platform.python_version()})
        info.write(self.out)
        if skipped:
            log.warning("%d utterance(s) skipped, listed in %s", len(skipped), self.out / "skipped.txt")
        return info


def decode_split(model_dir, data, feats, out, opts: DecodeOptions, checkpoint: str = AVERAGE,
                 batch_size: int = 16, ngpu: int = 0, nj: int = 0, average_nbest: int = 0,
                 verbose: bool = False) -> DecodeInfo:
    """Decode a split list's stored features into <out>/hyp.jsonl, skipped.txt, decode_info.json
    (returned). The utterances are shared (asrkit/shards.py) among the ranks of a torchrun/srun
    launch (on one node or many), or among nj processes spawned here (0: one per GPU, or 1 on CPU);
    under torchrun/srun the ranks other than 0 return None. average_nbest: first average the best k
    epochs into model.avg<k>.safetensors and decode that."""
    device = process_device(ngpu)
    world = launch()[1]
    processes = world if world > 1 else nj or max(1, ngpu)
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if average_nbest:  # (under torchrun every rank writes the same average, atomically)
        checkpoint = average_from_log(model_dir, average_nbest, f"model.avg{average_nbest}{WEIGHTS_SUFFIX}").name
    model, tokenizer, _, feats_attrs = load_model(model_dir, checkpoint, device)
    opts = check_model(model, opts, str(model_dir))
    reader = FeatureReader(feats)
    check_compatible(reader.attrs, feats_attrs, str(feats))
    todo, plan_skipped = plan(data, reader, model.min_frames)
    log.info("decoding %d utterances (%d skipped) on %s with %d process(es): %s", len(todo), len(plan_skipped),
             device, processes, asdict(opts))
    spawned = world == 1 and processes > 1
    job = _Decoding(model_dir=model_dir, checkpoint=checkpoint, data=str(data), feats=str(feats), out=out,
                    opts=opts, batch_size=batch_size, ngpu=ngpu, threads=torch.get_num_threads(),
                    processes=processes, verbose=verbose, planned=todo, plan_skipped=plan_skipped, device=device,
                    loaded=None if spawned else (model, tokenizer))
    if spawned:
        del model
    # what a resumed run's hypotheses must have come from: the same weights (by content: another model
    # dir, or retrained weights under the same name, start afresh), search, list and store
    stamp = {"search": asdict(opts), "weights": file_digest(weights_path(model_dir, checkpoint)),
             "data": str(Path(data).resolve()), "feats": str(Path(feats).resolve()), "store": file_version(feats)}
    return run_sharded(job, todo, lambda u: u.utt_id, out / ".partial", stamp, ".jsonl", processes)
