"""The install lock: tools/requirements.lock pins the exact version of every package in tools/venv.

    python tools/lock.py check [--allow-extra] [LOCK]
                                         exit 1, naming each package, when this environment differs
                                         (--allow-extra: packages the lock does not name are fine)
    python tools/lock.py freeze [LOCK]   write this environment's versions as the lock

`tools/install.sh` installs from the lock and checks it; `tools/install.sh --relock` resolves the
newest releases setup.py admits, runs the suite with them and only then calls `freeze`.
Standard library only: it runs before anything else is installed.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent / "requirements.lock"
HEADER = """\
# tools/requirements.lock: the exact environment tools/install.sh builds in tools/venv (pip's
# requirements format; asrkit itself is installed on top, editable, without dependencies).
# Written by `tools/install.sh --relock` after the whole suite passed with these versions; edit
# only through it. Python {python}, {machine}.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} from `name==version` lines; comments and blank lines skipped."""
    pins = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise ValueError(f"{path}:{n}: expected name==version, got {line!r}")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed(skip: tuple[str, ...] = ("asrkit",)) -> dict[str, str]:
    """{canonical name: version} of every distribution in this environment but `skip`."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in skip:
            found[canonical(name)] = dist.version
    return found


def drift(pins: dict[str, str], have: dict[str, str], allow_extra: bool = False) -> list[str]:
    """What differs between a lock and an environment, one line per package; empty when they agree."""
    out = []
    for name in sorted(pins.keys() | (set() if allow_extra else have.keys())):
        want, got = pins.get(name), have.get(name)
        if want == got:
            continue
        if got is None:
            out.append(f"{name}: locked {want}, not installed")
        elif want is None:
            out.append(f"{name}: installed {got}, not in the lock")
        else:
            out.append(f"{name}: locked {want}, installed {got}")
    return out


def freeze(path: Path = LOCK) -> None:
    import platform

    lines = [f"{name}=={version}" for name, version in sorted(installed().items())]
    text = HEADER.format(python=platform.python_version(), machine=f"{platform.system()} {platform.machine()}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("check", "freeze"):
        print(__doc__, file=sys.stderr)
        return 2
    command, allow_extra = argv[0], "--allow-extra" in argv[1:]
    rest = [a for a in argv[1:] if a != "--allow-extra"]
    path = Path(rest[0]) if rest else LOCK
    if command == "freeze":
        freeze(path)
        return 0
    problems = drift(read_lock(path), installed(), allow_extra)
    for line in problems:
        print(f"{path}: {line}", file=sys.stderr)
    if problems:
        print(f"{sys.prefix} differs from the lock: rerun tools/install.sh (it reinstalls from the lock), "
              "or move the lock forward with tools/install.sh --relock", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
