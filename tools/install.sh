#!/usr/bin/env bash
# Create tools/venv and install asrkit into it (editable), with test, plot and demo extras.
# Usage: tools/install.sh            (idempotent: a finished install is not redone)
#        PYTHON=python3.11 tools/install.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/tools/venv"
python=${PYTHON:-python3}
stamp="$venv/.asrkit-installed"

# Reinstall when setup.py changed since the last install.
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/setup.py" ]; then
    exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "asrkit needs Python >= 3.9; set PYTHON=/path/to/python3 and rerun $0" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "Installing asrkit and its dependencies into $venv (torch is a large download the first time)..." >&2
"$venv/bin/python" -m pip install -q --upgrade pip
# torch and torchaudio first, as a pair: torchaudio 2.11 loads only with torch 2.11.
"$venv/bin/python" -m pip install -q "torch==2.11.*" "torchaudio==2.11.*"
"$venv/bin/python" -m pip install -q -e "$root[test,plot,demo]"
"$venv/bin/python" -c 'import torch, torchaudio, transformers, h5py, jiwer, sentencepiece, soundfile, configargparse' \
    || { echo "install check failed: an import above did not work; see the pip output" >&2; exit 1; }
touch "$stamp"
echo "asrkit installed in $venv" >&2
