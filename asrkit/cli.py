"""Shared plumbing of the command lines under asrkit/bin: option parsing, logging, error exit."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import configargparse

from asrkit.errors import DataError

log = logging.getLogger("asrkit")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. under Slurm or taskset; else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_parser(description: str) -> configargparse.ArgumentParser:
    """A parser whose every option may also come from `--config file.yaml`; --help shows defaults."""
    parser = configargparse.ArgumentParser(
        description=description,
        config_file_parser_class=configargparse.YAMLConfigFileParser,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", is_config_file=True, help="YAML file of options (command line wins)")
    parser.add_argument("--log_file", default=None, help="also write the log to this file")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def str2bool(value: str) -> bool:
    """Parse true/false options the way shell scripts pass them."""
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise configargparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def number(kind: type = int, low: float | None = None, high: float | None = None, above: float | None = None):
    """An argparse type: a number of `kind` within [low, high] (or > above); another value is refused
    before anything runs, naming the range (argparse's message, exit 2)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise configargparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                                   f"got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high) or \
                (above is not None and value <= above):
            bounds = [f"> {above:g}"] if above is not None else []
            bounds += [f">= {low:g}"] if low is not None else []
            bounds += [f"<= {high:g}"] if high is not None else []
            raise configargparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # (argparse names the type in its messages)
    return parse


def setup_logging(log_file: str | None = None, verbose: bool = False, rank: int = 0) -> None:
    """Console logging (rank 0 only, others warn and above) and an optional log file."""
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and rank == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a command's main(); a DataError ends it with its message and exit code 2, no traceback."""
    try:
        code = main(argv)
    except DataError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def console_script() -> None:
    """The `asrkit-<name>` console scripts (setup.py): asrkit.bin.<name>'s main() through run_main, as
    `python -m asrkit.bin.<name>` runs it (a DataError is a message and exit 2, not a traceback)."""
    import importlib

    name = Path(sys.argv[0]).name.removeprefix("asrkit-").replace("-", "_")
    run_main(importlib.import_module(f"asrkit.bin.{name}").main)
