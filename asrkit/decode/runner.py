"""Decoding many utterances: longest first in padded batches, a failed batch retried one by one, and
(stage 4) a whole split decoded into hyp.jsonl, resumable, by one or several processes.

    from asrkit.decode.runner import decode_split
    decode_split("exp/<tag>", "data/test.jsonl", "dump/<feats_tag>/test.h5", "exp/<tag>/decode_test",
                 DecodeOptions(beam=10, ctc_weight=0.3))

Finished batches are appended to <out>/.partial*.jsonl, so an interrupted run resumes where it stopped
(with the same options, checkpoint and inputs); hyp.jsonl appears atomically at the end. Utterances
missing from the store, too short for the model, or failing to decode are skipped and listed in
<out>/skipped.txt.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import asrkit
from asrkit.cli import setup_logging
from asrkit.data import pad_feats
from asrkit.decode.beam import Hyp
from asrkit.device import first_device
from asrkit.decode.search import DecodeOptions, check_model, decode_batch, hyp_record
from asrkit.decode_info import DecodeInfo
from asrkit.errors import DataError
from asrkit.failures import batch_or_one_by_one, check_failures
from asrkit.features.store import FeatureReader, check_compatible
from asrkit.fileio import read_jsonl, write_json, write_jsonl, write_skipped
from asrkit.model_io import average_from_log, load_model

log = logging.getLogger("asrkit.decode")


class Utterance(NamedTuple):
    utt_id: str
    frames: int
    seconds: float


def longest_first(utts: list, batch_size: int, frames: Callable = lambda u: u.frames) -> list[list]:
    """Batches of up to batch_size, longest utterances first (little padding within a batch)."""
    order = sorted(utts, key=lambda u: -frames(u))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def decode_utterances(model, utts: list[Utterance], load: Callable[[str], np.ndarray], opts: DecodeOptions,
                      batch_size: int, device: torch.device, skipped: list,
                      progress: bool = True, where: str = "") -> Iterator[tuple[Utterance, list[Hyp], float]]:
    """(utterance, n-best, seconds of its batch's search) per utterance, batch by batch, longest first.
    `load(utt_id)` gives its features (T, D) or (L, T, D). A batch that fails is decoded again one
    utterance at a time; one that fails alone is skipped: (utt_id, reason) appended to `skipped`.
    Failures that hit most utterances stop the run (failures.check_failures)."""
    tried, first_skipped = 0, len(skipped)
    for batch in tqdm(longest_first(utts, batch_size), desc="decode", unit="batch", dynamic_ncols=True,
                      disable=not progress):
        t0 = time.perf_counter()
        nbests = batch_or_one_by_one(lambda us: _decode(model, us, load, opts, device), batch,
                                     lambda u: u.utt_id, skipped, "decoding failed")
        seconds = (time.perf_counter() - t0) / len(batch)  # (a failed batch's time included)
        yield from ((u, nbest, seconds) for u, nbest in zip(batch, nbests) if nbest is not None)
        tried += len(batch)
        check_failures(tried, skipped[first_skipped:], "decoding", where)


def _decode(model, batch: list[Utterance], load, opts, device) -> list[list[Hyp]]:
    """The n-best of each utterance of one batch."""
    feats, lens = pad_feats([load(u.utt_id) for u in batch])
    nbests = decode_batch(model, feats.to(device).float(), lens.to(device), opts)
    if device.type == "cuda":
        torch.cuda.synchronize()  # (for the timing)
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


def run_stamp(opts: DecodeOptions, checkpoint: str, data, feats) -> dict:
    """What must not change for a partial decoding to be resumed."""
    return {"search": asdict(opts), "checkpoint": checkpoint,
            "data": str(Path(data).resolve()), "feats": str(Path(feats).resolve())}


def read_partials(out: Path) -> dict[str, dict]:
    """Records of earlier (possibly killed) runs: every complete line of every partial file."""
    done = {}
    for p in sorted(out.glob(".partial*.jsonl")):
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["utt_id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut by a kill: that utterance is decoded again
    return done


def decode_into(partial: Path, model, tokenizer, reader, todo: list[Utterance], opts: DecodeOptions,
                batch_size: int, device: torch.device, progress: bool = True) -> tuple[float, list]:
    """Decode `todo`, appending hyp.jsonl records to `partial`: (seconds searching, skipped)."""
    skipped, spent = [], 0.0
    with open(partial, "a", encoding="utf-8") as out:
        for u, nbest, seconds in decode_utterances(model, todo, reader.__getitem__, opts, batch_size, device,
                                                   skipped, progress, where=str(partial.parent)):
            out.write(json.dumps(hyp_record(u.utt_id, nbest, tokenizer), ensure_ascii=False) + "\n")
            out.flush()
            spent += seconds
    return spent, skipped


class Job(NamedTuple):
    """What each decoding process needs besides its share of the utterances."""
    model_dir: Path
    checkpoint: str
    feats: str
    out: Path
    opts: DecodeOptions
    batch_size: int
    nj: int
    ngpu: int
    threads: int
    verbose: bool


def _worker(rank: int, job: Job, todo: list[Utterance]) -> tuple[float, list]:
    """One of job.nj processes: decode its share into its own partial file."""
    setup_logging(None, job.verbose, rank=rank)
    torch.set_num_threads(max(1, job.threads // job.nj))
    device = torch.device(f"cuda:{rank % job.ngpu}") if job.ngpu else torch.device("cpu")
    model, tokenizer = load_model(job.model_dir, job.checkpoint, device)[:2]
    return decode_into(job.out / f".partial.{rank}.jsonl", model, tokenizer, FeatureReader(job.feats), todo,
                       job.opts, job.batch_size, device, progress=rank == 0)


def decode_split(model_dir, data, feats, out, opts: DecodeOptions, checkpoint: str = "model.avg.pth",
                 batch_size: int = 16, ngpu: int = 0, nj: int = 0, average_nbest: int = 0,
                 verbose: bool = False) -> DecodeInfo:
    """Decode a split list's stored features into <out>/hyp.jsonl, skipped.txt, decode_info.json
    (returned). nj processes (0: one per GPU, or 1 on CPU); average_nbest: first average the best
    k epochs into model.avg<k>.pth and decode that."""
    device = first_device(ngpu)
    nj = nj or max(1, ngpu)
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if average_nbest:
        checkpoint = average_from_log(model_dir, average_nbest, f"model.avg{average_nbest}.pth").name
    model, tokenizer, _, feats_attrs = load_model(model_dir, checkpoint, device)
    opts = check_model(model, opts, str(model_dir))
    reader = FeatureReader(feats)
    check_compatible(reader.attrs, feats_attrs, str(feats))
    todo, plan_skipped = plan(data, reader, model.min_frames)
    skipped = list(plan_skipped)

    # resume: keep what an earlier run with the same options already decoded
    stamp_path = out / ".partial.options.json"
    stamp = run_stamp(opts, checkpoint, data, feats)
    same = stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp
    done = read_partials(out) if same else {}
    for p in out.glob(".partial*.jsonl"):
        p.unlink()
    write_jsonl(out / ".partial.jsonl", done.values())
    write_json(stamp_path, stamp)
    if done:
        log.info("resuming: %d utterances already decoded", len(done))
    remaining = [u for u in todo if u.utt_id not in done]
    log.info("decoding %d utterances (%d skipped) on %s with %d process(es): %s", len(remaining), len(skipped),
             device, nj, stamp["search"])
    t0, threads = time.perf_counter(), torch.get_num_threads()
    if nj == 1:
        spent, failed = decode_into(out / ".partial.jsonl", model, tokenizer, reader, remaining, opts, batch_size,
                                    device)
        skipped += failed
    else:
        del model
        job = Job(model_dir, checkpoint, str(feats), out, opts, batch_size, nj, ngpu, threads, verbose)
        with torch.multiprocessing.get_context("spawn").Pool(nj) as pool:
            results = pool.starmap(_worker, [(r, job, remaining[r::nj]) for r in range(nj)])
        skipped += [s for _, failed in results for s in failed]
        spent = time.perf_counter() - t0  # wall time, the processes' start included

    check_failures(len(todo) + len(plan_skipped), skipped, "decoding", str(out), final=True)
    by_id = read_partials(out)
    records = [by_id[u.utt_id] for u in sorted(todo, key=lambda u: u.utt_id) if u.utt_id in by_id]
    write_jsonl(out / "hyp.jsonl", records)
    write_skipped(out / "skipped.txt", skipped)
    audio_s = sum(u.seconds for u in remaining if u.utt_id in by_id)
    info = DecodeInfo(search=stamp["search"], checkpoint=checkpoint, model_dir=str(model_dir), data=str(data),
                      feats=str(feats), utterances=len(records), decoded_now=len(remaining), skipped=len(skipped),
                      rtf=spent / audio_s if audio_s else 0.0, decode_seconds=spent, audio_seconds=audio_s,
                      device=str(device), nj=nj, threads=threads, batch_size=batch_size,
                      versions={"asrkit": asrkit.__version__, "torch": torch.__version__,
                                "python": platform.python_version()})
    info.write(out)
    for p in [*out.glob(".partial*.jsonl"), stamp_path]:
        p.unlink()
    if skipped:
        log.warning("%d utterance(s) skipped, listed in %s", len(skipped), out / "skipped.txt")
    return info
