"""Typed options: each one a dataclass field with its default and help, from which the command lines
are made, so that the Python API, a command line and a config file share one definition.

    @dataclass
    class SearchOptions:
        beam: int = option(10, "beam size")
    add_options(parser, SearchOptions)                 # --beam (type int, default 10, the help)
    opts = options_from(SearchOptions, parser.parse_args())
"""
from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any, Callable, Iterable


def option(default: Any = MISSING, help: str = "", *, factory: Callable | None = None, type: Callable | None = None,
           choices: Iterable | None = None, aliases: Iterable[str] = (), group: str = ""):
    """A dataclass field that is an option: its default (or `factory`), --help text, and for its command
    line the type that parses it (default: the default's type; true/false for a bool), its choices,
    other names, and the argument group it is listed in."""
    meta = {"help": help, "type": type, "choices": tuple(choices) if choices else None, "aliases": tuple(aliases),
            "group": group}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def add_options(parser, cls, group: str = "") -> None:
    """--<field> for each field of the dataclass `cls`, listed under its group (or `group`)."""
    from asrkit.cli import str2bool

    groups: dict = {}
    for f in fields(cls):
        meta = f.metadata
        title = meta.get("group") or group
        target = groups.setdefault(title, parser.add_argument_group(title)) if title else parser
        kw: dict = {"help": meta.get("help", "")}
        if f.default is MISSING and f.default_factory is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default if f.default is not MISSING else f.default_factory()
        default = kw.get("default")
        kw["type"] = meta.get("type") or (str2bool if isinstance(default, bool) else
                                          type(default) if default is not None else str)
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        target.add_argument(f"--{f.name}", *(f"--{a}" for a in meta.get("aliases", ())), **kw)


def options_from(cls, args):
    """An instance of the dataclass `cls` from parsed arguments (a Namespace holding its fields)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
