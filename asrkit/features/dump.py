"""The batched, resumable feature dumper behind `asrkit.bin.dump_feats`.

Utterances (and their speed-perturbed copies) are sorted by length and cut into batches of at
most `batch_samples` padded samples. DataLoader workers read, resample and perturb the audio; on
CPU they also run the extractor (`nj` jobs in parallel, one torch thread each), on GPU the main
process does. The main process appends each batch to a partial shard (store.FeatureWriter). With
several GPUs, batch i goes to GPU i % ngpu, each with its own shard.
A rerun skips what the shards already hold; the finished store is renamed (or merged) into place.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch
from tqdm import tqdm

from asrkit.audio import SAMPLE_RATE, audio_info, load_audio, resample
from asrkit.device import process_device
from asrkit.distributed import launch
from asrkit.errors import DataError
from asrkit.failures import batch_or_one_by_one, check_failures
from asrkit.features.codecs import CODECS
from asrkit.features.extractors import ExtractorSpec
from asrkit.features.store import (FeatureReader, FeatureWriter, check_compatible, finalize_store, read_done,
                                   speed_key)
from asrkit.fileio import file_version, read_jsonl, resolve_audio_path, write_skipped
from asrkit.shards import run_sharded

log = logging.getLogger("asrkit.dump")


@dataclass
class Item:
    key: str
    audio: str
    start: float | None
    end: float | None
    speed: float
    samples: int  # expected model input length (16 kHz, after speed perturbation)


def plan_items(data: str | os.PathLike, speeds: list[float]) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items to extract for a split list (one per utterance and speed), and records that are unusable."""
    items, bad, seen = [], [], set()
    for lineno, rec in read_jsonl(data):
        utt = rec.get("utt_id")
        if not utt or "audio" not in rec:
            raise DataError("record has no utt_id or no audio", f"{data}:{lineno}",
                            "every line needs at least utt_id and audio")
        if utt in seen:
            raise DataError(f"utt_id {utt!r} appears twice", f"{data}:{lineno}", "utt_ids must be unique")
        seen.add(utt)
        path = resolve_audio_path(rec["audio"], data)
        start, end = rec.get("start"), rec.get("end")
        if start is not None and end is not None:
            seconds = float(end) - float(start)
        elif rec.get("duration") is not None:
            seconds = float(rec["duration"])
        else:  # the length only sorts batches: the header is enough
            try:
                sr, frames, _ = audio_info(path)
            except DataError as e:
                bad.append((utt, str(e)))
                continue
            seconds = frames / sr - float(start or 0)
        for speed in speeds:
            items.append(Item(speed_key(utt, speed), path, start, end, speed,
                              max(0, int(seconds * SAMPLE_RATE / speed))))
    return items, bad


def plan_digest(items: list[Item]) -> str:
    """What a resumed dump's parts must have been made from: each item's audio (path, size and time of
    the file, segment, speed). A list that points elsewhere, or audio replaced since, starts afresh."""
    h = hashlib.sha1()
    versions = {}
    for it in items:
        if it.audio not in versions:
            try:
                versions[it.audio] = file_version(it.audio)
            except OSError:
                versions[it.audio] = "missing"
        h.update(f"{it.key}\t{it.audio}\t{versions[it.audio]}\t{it.start}\t{it.end}\t{it.speed}\n".encode())
    return h.hexdigest()


def make_batches(items: list[Item], batch_samples: int, max_padding: float = 0.1) -> list[list[Item]]:
    """Longest first (an out-of-memory shows at once), each batch at most batch_samples padded, and no
    utterance padded by more than `max_padding` of the batch's length: where the lengths thin out,
    padding would cost more compute than batching saves (on CPU batching saves little on long inputs)."""
    batches, cur = [], []
    for item in sorted(items, key=lambda it: (-it.samples, it.key)):
        if cur and ((len(cur) + 1) * cur[0].samples > batch_samples
                    or item.samples < (1 - max_padding) * cur[0].samples):
            batches.append(cur)
            cur = []
        cur.append(item)
    return batches + [cur] if cur else batches


class _BatchAudio(torch.utils.data.Dataset):
    """Batch i: [(key, prepared array or None, input samples, error reason)]; never raises.
    With `extract_max_samples`, batch i extracted instead: see _features."""

    def __init__(self, batches: list[list[Item]], extractor, extract_max_samples: int | None = None):
        self.batches, self.extractor, self.extract_max_samples = batches, extractor, extract_max_samples

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        if self.extract_max_samples is not None:
            return _features(self.extractor, self.read(i), self.extract_max_samples)
        return self.read(i)

    def read(self, i):
        return read_batch(self.batches[i], self.extractor)


def read_batch(batch: list[Item], extractor) -> list[tuple[str, object, int, str]]:
    """Each item's (key, its audio prepared for `extractor` or None, input samples, why it is None):
    read, resampled, speed-perturbed. Never raises: an unreadable file is a reason."""
    out = []
    for it in batch:
        try:
            wav = load_audio(it.audio, it.start, it.end)
            if it.speed != 1.0:  # sox-style speed: resample as if recorded at sr * speed
                wav = resample(wav, int(round(SAMPLE_RATE * it.speed)), SAMPLE_RATE)
            if extractor.num_frames(len(wav)) < 1:
                raise DataError(f"too short: {len(wav) / SAMPLE_RATE * 1000:.1f} ms gives no frame", it.audio)
            out.append((it.key, extractor.prepare(wav), len(wav), ""))
        except Exception as e:  # any unreadable file is reported, never fatal
            out.append((it.key, None, 0, str(e) if isinstance(e, DataError) else f"{it.audio}: {e!r}"))
    return out


def extract_shard(extractor, batches: list[list[Item]], shard: Path, nj: int,
                  max_samples: int, progress: bool = True, attrs: dict | None = None,
                  store: str = "") -> list[tuple[str, str]]:
    """Extract `batches` into a partial shard of `store`; returns (key, reason) of the skipped
    utterances, and raises failures.SystematicFailure when most fail.

    On CPU with nj > 0, nj DataLoader workers each read and extract whole batches with one torch
    thread (forked: they share the model's weights; one thread, since libgomp hangs a forked child
    that uses more). Unlike one process's threads, the jobs never wait for each other between ops,
    which counts on a loaded machine or on many cores. With nj = 0 the main process does everything
    with torch's threads. On GPU the workers read and the main process runs the model."""
    writer = FeatureWriter(shard, attrs or extractor.attrs)
    skipped = []
    in_workers = nj > 0 and getattr(extractor, "device", torch.device("cpu")).type == "cpu"
    dataset = _BatchAudio(batches, extractor, max_samples if in_workers else None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=nj,
                                         collate_fn=lambda b: b, prefetch_factor=4 if nj > 0 else None)
    seconds = sum(it.samples for b in batches for it in b) / SAMPLE_RATE
    bar = tqdm(total=round(seconds), unit="s audio", disable=not progress, dynamic_ncols=True)
    tried = 0
    try:
        for batch in loader:
            feats, bad, samples = batch if in_workers else _features(extractor, batch, max_samples)
            for key, reason in bad:
                log.warning("skipped %s: %s", key, reason)
            skipped += bad
            writer.write(feats)
            bar.update(round(samples / SAMPLE_RATE))
            tried += len(feats) + len(bad)
            check_failures(tried, skipped, "feature extraction", store or str(shard))
    finally:
        bar.close()
        writer.close()
    return skipped


def _features(extractor, batch, max_samples):
    """A read batch's ([(key, features)], [(key, reason) skipped], input samples extracted)."""
    skipped = [(key, reason) for key, arr, _, reason in batch if arr is None]
    ok = [(key, arr, n) for key, arr, n, _ in batch if arr is not None]
    return _extract(extractor, ok, max_samples, skipped), skipped, sum(n for _, _, n in ok)


def _extract(extractor, ok, max_samples, skipped):
    """Features of one batch; a batch that fails (out of memory) is retried one utterance at a time."""
    if not ok:
        return []
    if hasattr(extractor, "extract_long") and any(n > max_samples for _, _, n in ok):
        return [(k, extractor.extract_long(a, max_samples)) for k, a, n in ok if n > max_samples] + \
            _extract(extractor, [x for x in ok if x[2] <= max_samples], max_samples, skipped)
    feats = batch_or_one_by_one(lambda xs: extractor([a for _, a, _ in xs]), ok, lambda x: x[0], skipped,
                                "extraction failed", (RuntimeError, MemoryError),
                                torch.cuda.empty_cache if torch.cuda.is_available() else None)
    for (key, _, n), f in zip(ok, feats):
        assert f is None or f.shape[-2] == extractor.num_frames(n), (key, f.shape, n)
    return [(key, f) for (key, _, _), f in zip(ok, feats) if f is not None]


def verify_store(out: Path, attrs: dict, items: list[Item], extractor) -> str:
    """'' if the finished store at `out` holds every item from the same extractor, else why not."""
    try:
        reader = FeatureReader(out)
        check_compatible(reader.attrs, attrs)
    except DataError as e:
        return str(e)
    if reader.attrs.get("dtype") != attrs["dtype"]:
        return f"its dtype is {reader.attrs.get('dtype')}, not {attrs['dtype']}"
    if reader.codec != attrs.get("store_codec", "none"):
        return f"its store codec is {reader.codec}, not {attrs.get('store_codec', 'none')}"
    skipped = {k for k, _ in reader.skipped}
    for it in items:
        if it.key in skipped:
            continue
        if it.key not in reader:
            return f"utterance {it.key} is missing"
        expected = extractor.num_frames(it.samples)
        if abs(reader.num_frames(it.key) - expected) > 2:  # `samples` comes from the listed duration
            return f"utterance {it.key} has {reader.num_frames(it.key)} frames, its duration gives {expected}"
    return ""


def dump(data: str, out: str, spec: ExtractorSpec = ExtractorSpec(), speed_perturb: str = "", nj: int = 2,
         ngpu: int = 0, batch_seconds: float = 0.0, max_seconds: float = 60.0, force: bool = False,
         progress: bool = True, process_per_gpu: bool | None = None, extractor=None,
         store_codec: str = "none") -> dict:
    """Dump the features of split list `data` into the store `out` with the extractor `spec` describes;
    returns the store's statistics. The work is shared (asrkit/shards.py) among the ranks of a
    torchrun/srun launch, or on GPUs with `process_per_gpu` (default: with more than one GPU) among
    processes spawned here, one per GPU; each writes its own partial store, merged at the end.
    `extractor`: one already built from `spec` (several splits in one process load the model once).
    `store_codec`: how the store keeps the arrays (features/codecs.py)."""
    out = Path(out)
    speeds = [float(s) for s in speed_perturb.replace(",", " ").split()] or [1.0]
    if any(s <= 0 for s in speeds):
        raise DataError(f"speed factors must be positive, got {speed_perturb!r}", "--speed_perturb")
    if store_codec not in CODECS:
        raise DataError(f"unknown store codec {store_codec!r}", "--store_codec", f"choose one of {', '.join(CODECS)}")
    if process_per_gpu is None:
        process_per_gpu = ngpu > 1
    spawn = ngpu > 0 and process_per_gpu and launch()[1] == 1
    if extractor is None:
        extractor = spec.build(str(process_device(ngpu)))
    attrs = {**extractor.attrs, "store_codec": store_codec}
    items, bad = plan_items(data, speeds)
    if out.exists() and not force:
        why = verify_store(out, attrs, items, extractor)
        if not why:
            log.info("%s is complete and matches the options: nothing to do (--force to redo)", out)
            return FeatureReader(out).attrs
        log.info("redoing %s: %s", out, why)
    job = _Extraction(spec=spec, attrs=attrs, out=out, bad=bad, planned=len(items) + len(bad), nj=nj, ngpu=ngpu,
                      batch_samples=int((batch_seconds or (200.0 if ngpu > 0 else 20.0)) * SAMPLE_RATE),
                      max_samples=int(max_seconds * SAMPLE_RATE), progress=progress,
                      extractor=None if spawn else extractor)
    if spawn:  # each spawned process loads the model on its own GPU
        del extractor
        torch.cuda.empty_cache()
    stamp = {"attrs": attrs, "plan": plan_digest(items)}
    stats = run_sharded(job, items, lambda it: it.key, Path(f"{out}.partial"), stamp, ".h5",
                        processes=ngpu if spawn else 1)
    return stats if stats is not None else FeatureReader(out).attrs


@dataclass
class _Extraction:
    """The dump as a sharded job (asrkit/shards.py): each part is a partial store (store.FeatureWriter)."""
    spec: ExtractorSpec
    attrs: dict
    out: Path
    bad: list[tuple[str, str]]  # found unreadable while planning
    planned: int
    nj: int
    ngpu: int
    batch_samples: int
    max_samples: int
    progress: bool
    extractor: object = None  # None: a spawned process, which builds its own on GPU <rank>

    def held(self, part: Path) -> set[str]:
        try:
            h5py.File(part, "r").close()
        except OSError as e:  # a file another process holds open for writing is not damaged: keep it
            if isinstance(e, PermissionError) or "lock" in str(e).lower():
                raise DataError(f"cannot open a part of the unfinished store ({e})", str(part),
                                "another process has it open for writing: wait until it ends, or stop it") from None
            log.info("discarding %s: damaged (%s)", part, e)
            part.unlink()
            Path(f"{part}.done").unlink(missing_ok=True)
            return set()
        return set(read_done(part))

    def work(self, items: list[Item], part: Path, rank: int) -> list[tuple[str, str]]:
        extractor = self.extractor
        if extractor is None:
            device = process_device(self.ngpu, rank)
            torch.cuda.set_device(device)
            extractor = self.spec.build(str(device))
        log.info("process %d: %d utterances to extract", rank, len(items))
        return extract_shard(extractor, make_batches(items, self.batch_samples), part, self.nj, self.max_samples,
                             self.progress and rank == 0, self.attrs, str(self.out))

    def merge(self, parts: list[Path], skipped: list[tuple[str, str]], resumed: set[str]) -> dict:
        skipped = self.bad + skipped
        check_failures(self.planned, skipped, "feature extraction", str(self.out), final=True)
        stats = finalize_store(parts, self.out, self.attrs, skipped)
        write_skipped(f"{self.out}.skipped.tsv", skipped)
        gb, hours = self.out.stat().st_size / 1e9, stats["total_seconds"] / 3600
        log.info("wrote %s from %d part(s): %d utterances, %.2f h, %.3f GB (%.3f GB per hour of audio); %d skipped%s",
                 self.out, len(parts), stats["num_utts"], hours, gb, gb / hours if hours else math.nan,
                 len(skipped), f", listed in {self.out}.skipped.tsv" if skipped else "")
        return {**self.attrs, **stats}


def dump_lists(data: list[str], out: list[str], spec: ExtractorSpec, speed_perturb_data: list[str] | None = None,
               speed_perturb: str = "", **options) -> list[dict]:
    """dump() of several split lists into their stores with one extractor, built once (with several
    GPUs, each GPU's process builds its own); only the lists in speed_perturb_data (default: all)
    are speed-perturbed. Returns each store's statistics."""
    if len(data) != len(out):
        raise DataError(f"{len(data)} --data lists but {len(out)} --out stores", "--out", "give one store per list")
    perturbed = set(data if speed_perturb_data is None else speed_perturb_data)
    if unknown := perturbed - set(data):
        raise DataError(f"--speed_perturb_data {' '.join(sorted(unknown))}: not among the --data lists",
                        "--speed_perturb_data")
    if options.get("ngpu", 0) <= 1 and options.get("extractor") is None:
        options["extractor"] = spec.build(process_device(options.get("ngpu", 0)))
    return [dump(d, o, spec, speed_perturb=speed_perturb if d in perturbed else "", **options)
            for d, o in zip(data, out)]
