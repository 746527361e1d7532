"""tools/venv is exactly tools/requirements.lock: a drift in any package fails the suite."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("lock", REPO / "tools" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
LOCK = Path(os.environ.get("ASRKIT_LOCK", lock.LOCK))  # the relock tests its candidate lock


def test_the_environment_is_the_lock():
    venv = Path(os.environ.get("ASRKIT_VENV", REPO / "tools" / "venv")).resolve()
    if Path(sys.prefix).resolve() != venv:
        pytest.skip(f"the lock governs {venv}; this is {sys.prefix}")
    pins = lock.read_lock(LOCK)
    assert {"torch", "torchaudio", "transformers", "numpy", "pip"} <= pins.keys()
    assert lock.drift(pins, lock.installed()) == []


def test_a_drift_is_named(tmp_path):
    have = lock.installed()
    assert "torch" in have
    fake = tmp_path / "requirements.lock"
    pins = dict(have, torch=have["torch"] + ".post9", **{"not-a-package": "1.0"})
    del pins["numpy"]
    fake.write_text("# a comment\n\n" + "".join(f"{n}=={v}\n" for n, v in pins.items()))
    problems = lock.drift(lock.read_lock(fake), have)
    assert problems == ["not-a-package: locked 1.0, not installed",
                        f"numpy: installed {have['numpy']}, not in the lock",
                        f"torch: locked {have['torch']}.post9, installed {have['torch']}"]
    assert lock.drift(lock.read_lock(fake), have, allow_extra=True) == problems[::2]
    assert lock.main(["check", str(fake)]) == 1
    lock.freeze(fake)
    assert lock.read_lock(fake) == have and lock.main(["check", str(fake)]) == 0


def test_a_malformed_lock_line_names_the_line(tmp_path):
    bad = tmp_path / "requirements.lock"
    bad.write_text("torch==2.14.1\ntorchaudio>=2.11\n")
    with pytest.raises(ValueError, match=r"requirements.lock:2: expected name==version"):
        lock.read_lock(bad)
