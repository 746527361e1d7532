# Sourced by run.sh and every recipe: puts asrkit's Python environment (tools/venv) on PATH,
# creating it on first use with tools/install.sh.
asrkit_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$asrkit_root/tools/install.sh" || { echo "path.sh: installing asrkit's environment failed (see above)" >&2; return 1; }
# shellcheck source=/dev/null
. "${ASRKIT_VENV:-$asrkit_root/tools/venv}/bin/activate"
export PYTHONUNBUFFERED=1
export PYTHONIOENCODING=UTF-8
