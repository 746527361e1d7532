"""Resumable work shared among processes: the one way the feature dump and the decoding run a split.

    result = run_sharded(job, items, key=lambda it: it.key, partial=Path("out.partial"),
                         stamp={"options": ...}, suffix=".h5", processes=ngpu)

A job's items (utterances) still to do are dealt out to the processes in turn (item i to process
i % world); each process appends its results to its own part, <partial>/part<rank><suffix>, and
lists what it had to skip in part<rank>.skipped. Once every process is done, one of them merges
every part into the output and removes <partial>; the others wait for it.

The processes are, whichever applies:
- the ranks that torchrun or srun started, on one node or several (they synchronise through a
  gloo group, whatever device the job uses);
- `processes` processes spawned here (e.g. one per GPU);
- this process alone.

A rerun with the same stamp (what must not change for results to be reused; the items' keys are
added to it) does only what no part holds yet, whatever the number of processes is this time. A
different stamp starts afresh. One job at a time: the process that merges holds <partial>.lock, and
a second job on the same output is refused (a DataError) before it touches anything.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, TypeVar

import torch.distributed as dist

from asrkit.distributed import barrier, init_distributed, launch
from asrkit.fileio import exclusive, read_skipped, write_json, write_skipped

log = logging.getLogger(__name__)
T = TypeVar("T")
STAMP = "stamp.json"
TIMEOUT_MIN = 24 * 60  # a process that finished its share may wait this long for the slowest


class ShardedJob(Protocol):
    """What a job does with its parts; it is pickled into spawned processes."""

    def held(self, part: Path) -> Iterable[str]:
        """The keys of the items that `part` (from an earlier run) already holds. A part too damaged
        to be continued is deleted here (it is then done again)."""

    def work(self, items: list, part: Path, rank: int) -> list[tuple[str, str]]:
        """Do `items`, appending their results to `part` (which may hold earlier ones); returns
        (key, reason) of the items skipped."""

    def merge(self, parts: list[Path], skipped: list[tuple[str, str]], resumed: set[str]) -> Any:
        """The output, made from every part and the items skipped by every process; `resumed`: the
        keys that the parts held before this run."""


def run_sharded(job: ShardedJob, items: list[T], key: Callable[[T], str], partial: Path, stamp: dict,
                suffix: str, processes: int = 1) -> Any:
    """Run `job` over `items` as the module docstring says; returns job.merge(...)'s result in the
    process that merged (under torchrun/srun: rank 0), None in the others."""
    rank, world, _ = launch()
    if world > 1:
        init_distributed(0, "gloo", timeout_min=TIMEOUT_MIN)  # for the barriers only
        processes = world
    else:
        processes = max(1, processes)
    stamp = {**stamp, "keys": hashlib.sha1("\n".join(sorted(map(key, items))).encode()).hexdigest()}
    with exclusive(f"{partial}.lock", str(partial)) if rank == 0 else contextlib.nullcontext():
        return _run(job, items, key, Path(partial), stamp, suffix, rank, world, processes)


def _run(job: ShardedJob, items: list, key: Callable, partial: Path, stamp: dict, suffix: str, rank: int,
         world: int, processes: int) -> Any:
    done = _prepare(job, partial, stamp, suffix) if rank == 0 else None
    done = _broadcast(done)
    todo = [it for it in items if key(it) not in done]
    if done and rank == 0:
        log.info("resuming %s: %d of %d done, %d to do by %d process(es)", partial, len(items) - len(todo),
                 len(items), len(todo), processes)
    shares = [todo[r::processes] for r in range(processes)]
    if world > 1:
        _do_share(rank, job, shares[rank], partial, suffix)
        barrier()
    elif processes > 1:  # (not daemonic: a share may start DataLoader workers; an error comes back as raised)
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in [pool.submit(_do_share, r, job, shares[r], partial, suffix) for r in range(processes)]:
                f.result()
    else:
        _do_share(0, job, shares[0], partial, suffix)
    result = None
    if rank == 0:
        parts = sorted(Path(partial).glob(f"part*{suffix}"), key=lambda p: p.name)
        skipped = [s for p in sorted(Path(partial).glob("part*.skipped")) for s in read_skipped(p)]
        result = job.merge(parts, skipped, done)
        shutil.rmtree(partial)
    barrier()
    return result


def _prepare(job: ShardedJob, partial: Path, stamp: dict, suffix: str) -> set[str]:
    """Keep <partial>'s parts if they were made under the same stamp, else start it afresh; the keys
    they hold. (Skipped items are tried again: their lists go.)"""
    stamp_path = partial / STAMP
    same = stamp_path.is_file() and json.loads(stamp_path.read_text(encoding="utf-8")) == json.loads(
        json.dumps(stamp))
    if partial.exists() and not same:
        log.info("discarding %s: made with other options or inputs", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(stamp_path, stamp)
    for p in partial.glob("part*.skipped"):
        p.unlink()
    return {k for part in sorted(partial.glob(f"part*{suffix}")) for k in job.held(part)}


def _broadcast(obj):
    """Rank 0's `obj`, in every rank (as it is, in one process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _do_share(rank: int, job: ShardedJob, share: list, partial: Path, suffix: str) -> None:
    skipped = job.work(share, Path(partial) / f"part{rank}{suffix}", rank)
    write_skipped(Path(partial) / f"part{rank}.skipped", skipped)
