#!/usr/bin/env bash
# On the lent GPU machine, in one call: install the carried wheels offline, then bench/gpu_check.py
# (figures and gpu_check.json under $OUT). Prepare here first with bench/gpu_wheels.sh.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit
export PYTHONPATH="/tmp/site:$PWD" ASRKIT_FSDD="$PWD/.gpu/fsdd" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/gpu_check.py --out "${OUT:-gpu_check_out}" "$@" 2>&1 | tee "${OUT:-.}/gpu_check.log"
