"""Atomic writes and line-oriented text formats (jsonl) with errors that name file and line."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from asrkit.errors import DataError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    A crash or an exception leaves the previous `path` (if any) untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files (and a writer may make its own): the
        os.replace(tmp, path)            # usual permissions, so that a shared model dir can be read
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a file for writing that appears at `path` only when the block ends without error."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock (flock) on the file `path` for the block: the one writer of `what`. While
    another process holds it, a DataError naming it and its holder; nothing is touched. The lock dies
    with its process (a kill frees it); the file is removed when the block ends well.

    (fcntl rather than the filelock package: version 4 falls back to lock files that a kill leaves
    behind on filesystems without flock, which would refuse every later run.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise DataError(f"{what} is being written by another process ({holder})", str(path),
                            "wait until it ends, or stop it; two writers would spoil each other's work") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
        path.unlink(missing_ok=True)  # (still held: a process that opened it meanwhile was refused)
    finally:
        os.close(fd)


def open_for_append(path: str | os.PathLike):
    """Open a file of lines for appending; a last line that a kill cut short is dropped first, so
    that the next line starts on its own."""
    path = Path(path)
    if path.is_file():
        text = path.read_bytes()
        if text and not text.endswith(b"\n"):  # the repaired file is written beside it, then renamed
            with atomic_open(path, "wb") as f:  # over it: a kill now loses no finished line
                f.write(text[:text.rfind(b"\n") + 1])
    return open(path, "a", encoding="utf-8")


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (a model's weights: what a resumed job must have been made with)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_version(path: str | os.PathLike) -> str:
    """Size and modification time of a file: a cheap stand-in for its content (audio files, stores)."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_lines(path: str | os.PathLike,
               on_error: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 text file, without the newline.

    A line that is not UTF-8 raises DataError naming it, or, with `on_error`, is passed to it
    and skipped, so that one bad line does not lose the others.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", str(path), "check the path")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                err = DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", f"{path}:{lineno}",
                                "re-save the file as UTF-8")
                if on_error is None:
                    raise err from None
                on_error(err)
                continue
            yield lineno, line.rstrip("\r\n")


def read_jsonl(path: str | os.PathLike,
               on_error: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each non-empty line; a bad line raises DataError naming it,
    or, with `on_error`, is passed to it and skipped."""
    for lineno, line in read_lines(path, on_error):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise DataError("a line must be a JSON object {...}", where)
        except (json.JSONDecodeError, DataError) as e:
            err = e if isinstance(e, DataError) else DataError(
                f"not valid JSON: {e.msg} at column {e.colno}", where, "each line must be one JSON object")
            if on_error is None:
                raise err from None
            on_error(err)
            continue
        yield lineno, record


def load_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a jsonl file."""
    return [record for _, record in read_jsonl(path)]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically, one JSON object a line; returns how many were written."""
    n = 0
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically, indented for people to read."""
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def escape_key(key: str) -> str:
    """An utterance key as a field of a line-oriented list: '%' (the escape) and every unprintable
    character but the space (tab, each kind of line break, control characters) percent-escaped, so
    that any key comes back whole (unescape_key)."""
    return "".join(urllib.parse.quote(c) if c == "%" or (c != " " and not c.isprintable()) else c for c in key)


def unescape_key(field: str) -> str:
    return urllib.parse.unquote(field)


def one_line(text: str) -> str:
    """Free text (a reason, a place) as a TSV field: tabs and line breaks become spaces."""
    return " ".join(text.replace("\t", " ").splitlines())


def write_skipped(path: str | os.PathLike, skipped: Iterable[tuple[str, str]]) -> None:
    """The (utterance, reason) lines of what a job skipped, as TSV (the key escaped), atomically."""
    with atomic_open(path) as f:
        f.writelines(f"{escape_key(u)}\t{one_line(why)}\n" for u, why in skipped)


def read_skipped(path: str | os.PathLike) -> list[tuple[str, str]]:
    """What write_skipped wrote."""
    return [(unescape_key(k), why) for k, _, why in
            (line.partition("\t") for line in Path(path).read_text(encoding="utf-8").split("\n") if line)]


def resolve_audio_path(audio: str, list_file: str | os.PathLike) -> str:
    """An utterance's `audio` as an absolute path: relative paths are relative to its list file."""
    p = Path(audio).expanduser()
    if not p.is_absolute():
        p = Path(list_file).resolve().parent / p
    return str(p)
