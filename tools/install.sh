#!/usr/bin/env bash
# Create tools/venv with the exact versions of tools/requirements.lock, then asrkit on top (editable,
# with its test, plot and demo extras), and check that the environment equals the lock.
# Usage: tools/install.sh             idempotent: done again only when the lock or setup.py changed
#        PYTHON=python3.11 tools/install.sh
#        tools/install.sh --relock    maintainers: resolve the newest releases that setup.py admits in
#                                     a new environment, run the whole suite there, and only if it
#                                     passes rewrite the lock and replace tools/venv with it
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lock=${ASRKIT_LOCK:-$root/tools/requirements.lock}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "asrkit needs Python >= 3.9; set PYTHON=/path/to/python3 and rerun $0" >&2
    exit 1
fi

check_imports() {  # torchaudio's compiled part must load with this torch (the failure of 2.11.1 + 2.11.0)
    "$1/bin/python" -c 'import torch, torchaudio, torchaudio.compliance.kaldi, transformers, h5py, jiwer, sentencepiece, soundfile, configargparse' \
        || { echo "install check failed: an import above did not work in $1; see the pip output" >&2; exit 1; }
}

if [ "${1:-}" = --relock ]; then
    new="$root/tools/venv.relock"
    rm -rf "$new"
    "$python" -m venv "$new"
    echo "Resolving the newest releases setup.py admits into $new ..." >&2
    "$new/bin/python" -m pip install -q --upgrade pip setuptools
    "$new/bin/python" -m pip install -q -e "$root[test,plot,demo]"
    check_imports "$new"
    "$new/bin/python" "$root/tools/lock.py" freeze "$lock.new"
    diff <(grep -v '^#' "$lock") <(grep -v '^#' "$lock.new") >&2 || true
    echo "Running the whole suite with these versions ..." >&2
    touch "$new/.asrkit-installed"
    ASRKIT_VENV="$new" ASRKIT_LOCK="$lock.new" "$root/tools/test.sh" \
        || { echo "the suite failed with the new versions: the lock is unchanged ($lock.new kept to look at)" >&2; exit 1; }
    mv "$lock.new" "$lock"
    rm -rf "$new" "$root/tools/venv"
    echo "lock rewritten: $lock; reinstalling tools/venv from it. Commit the lock, and re-measure the" \
         "benchmarks the README quotes if torch moved." >&2
    exec "$0"
fi

venv=${ASRKIT_VENV:-$root/tools/venv}  # the relock tests its new environment through this
stamp="$venv/.asrkit-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/setup.py" ] && [ "$stamp" -nt "$lock" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "Installing the locked versions into $venv (torch is a large download the first time)..." >&2
pip_version=$(sed -n 's/^pip==//p' "$lock")
"$venv/bin/python" -m pip install -q "pip==$pip_version"
# every package at its locked version, nothing resolved; then asrkit itself without dependencies
"$venv/bin/python" -m pip install -q -r "$lock"
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -m pip check >&2 || { echo "install check failed: the lock does not satisfy setup.py (above)" >&2; exit 1; }
check_imports "$venv"
"$venv/bin/python" "$root/tools/lock.py" check --allow-extra "$lock"  # tests/test_lock.py is strict
touch "$stamp"
echo "asrkit installed in $venv" >&2
