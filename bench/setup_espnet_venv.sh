#!/usr/bin/env bash
# A separate environment with ESPnet for bench/bench_decode.py's comparison (never tools/venv).
# ESPnet's own dependency pins would pull another multi-GB torch; its search code only needs torch,
# so this venv installs espnet without dependencies and reads torch from tools/venv (a .pth entry,
# appended after its own site-packages), plus the few modules the search imports.
#   bench/setup_espnet_venv.sh [VENV_DIR]      (default: tools/espnet-venv, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-tools/espnet-venv}
base=tools/venv/bin/python
site=$("$base" -c 'import site; print(site.getsitepackages()[0])')
"$base" -m venv "$venv"
vsite=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
echo "$(cd "$site" && pwd)" > "$vsite/zz_asrkit_torch.pth"
"$venv/bin/pip" install --no-deps espnet typeguard
"$venv/bin/python" -c "from espnet.nets.batch_beam_search import BatchBeamSearch; from espnet2.asr.ctc import CTC; print('espnet ready:', '$venv/bin/python')"
