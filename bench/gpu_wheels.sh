#!/usr/bin/env bash
# Here, before a GPU check: put what the device machine lacks into .gpu/ (git-ignored), to carry.
# The machine has torch/torchaudio 2.11, transformers, h5py, sentencepiece, numpy, tqdm, pyyaml and
# pytest, Python 3.12 and no network: jiwer (+ rapidfuzz), configargparse and soundfile (+ cffi,
# pycparser) travel as wheels, at the versions of tools/requirements.lock; FSDD travels as files.
#   bash bench/gpu_wheels.sh      then, with the device tool: carry [".gpu"], bash bench/gpu_check.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$root/.gpu"
fsdd=${ASRKIT_FSDD:-$root/../shared/data/fsdd}
rm -rf "$out/whl" && mkdir -p "$out/whl"
pins=()
for name in jiwer rapidfuzz configargparse soundfile cffi pycparser; do
    pins+=("$(grep -i "^$name==" "$root/tools/requirements.lock")")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$out/whl" "${pins[@]}"
rm -rf "$out/fsdd" && cp -r "$fsdd" "$out/fsdd"
du -sh "$out"
