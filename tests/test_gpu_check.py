"""The GPU check's CPU dry run: bench/gpu_check.py --device cpu --tiny runs every part (data, dump,
AMP-less training through torchrun with a kill and resume, bench_train, decoding) on tiny sizes and
passes its own checks, so the script is ready for the rare session that is lent a GPU."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_on_cpu(fsdd, tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=420,
                       env={**os.environ, "ASRKIT_FSDD": str(fsdd)})
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = {part for part, _, _ in result["rows"]}
    assert parts == {"data", "dump", "train", "decode"}, result["rows"]
    assert result["failed"] == 0 and not [r for r in result["rows"] if "FAIL" in r[2]]
    assert result["figures"]["naive_xrt"] > 0 and "| part" in p.stdout  # the table


def test_gpu_check_help_says_how_to_run_it_on_a_lent_machine():
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "bench/gpu_wheels.sh" in p.stdout and "gpu_check.sh" in p.stdout
