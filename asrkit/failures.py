"""Telling a bad utterance from a broken run.

A long job (the feature dump, the decoding, the Whisper filter) skips and lists an utterance that
fails, and goes on: one unreadable file must not cost a night's work. But when every utterance
fails (a model that cannot run on this device, a wrong audio root), skipping them all and exiting
0 hides the cause and lets the next stage start on nothing. `check_failures` is called as the job
goes: it stops the job, with the first failure's cause, once failures are systematic.
`batch_or_one_by_one` is how the jobs run a batch: when the batch fails (out of memory, one bad
utterance), each of its items is tried alone, and only the ones that fail alone are skipped.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

from asrkit.errors import DataError

log = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")

FIRST = 10       # the first this many utterances all failed: nothing works
MAX_SHARE = 0.5  # or more than this share of the utterances tried, once FIRST were tried


class SystematicFailure(DataError):
    """Too many utterances failed for them to be bad utterances: the setup is wrong."""


def check_failures(tried: int, skipped: list[tuple[str, str]], what: str, where: str, final: bool = False,
                   first: int = FIRST, max_share: float = MAX_SHARE) -> None:
    """Raise SystematicFailure when the `tried` utterances so far (skipped ones included) show a
    failure that is not one utterance's: the first `first` all failed, or over `max_share` of them
    after `first`; with `final` (the job is over), also when every one failed, however few.
    `skipped`: (utterance, reason) in the order they failed; `what`: the job ("feature extraction")."""
    failed = len(skipped)
    if not failed:
        return
    all_failed = failed >= tried
    if (all_failed and (tried >= first or final)) or (tried >= first and failed > max_share * tried):
        utt, reason = skipped[0]
        raise SystematicFailure(
            f"{what} failed for {failed} of the {tried} utterances tried; the first, {utt}: {reason}",
            where, "this is not a bad utterance but something every one meets (the model, its dtype, the "
                   "device, the audio paths or format): fix that cause and run the same command again; "
                   "what was done is kept")


def batch_or_one_by_one(run: Callable[[list[T]], Sequence[R]], items: list[T], name: Callable[[T], str],
                        skipped: list[tuple[str, str]], what: str,
                        errors: tuple[type[BaseException], ...] = (Exception,),
                        after_failure: Callable[[], None] | None = None) -> list[R | None]:
    """run(items): one result per item. When it raises one of `errors`, each item is run alone; an
    item that fails alone gets None and (name(item), "<what>: <error>") in `skipped`.
    `after_failure` runs after each failed call (e.g. freeing the GPU's cache)."""
    try:
        return list(run(items))
    except errors as e:
        if after_failure is not None:
            after_failure()
        cause = str(e).splitlines()[0] if str(e).strip() else repr(e)
        if len(items) == 1:
            log.warning("%s: %s: %s", name(items[0]), what, cause)
            skipped.append((name(items[0]), f"{what}: {cause}"))
            return [None]
        log.warning("a batch failed (%s): its %d items one by one", cause, len(items))
        return [r for it in items
                for r in batch_or_one_by_one(run, [it], name, skipped, what, errors, after_failure)]
