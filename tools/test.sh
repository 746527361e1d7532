#!/usr/bin/env bash
# Run the test suite (creating tools/venv on first use). Extra arguments go to pytest, e.g.
#   tools/test.sh -k normalize        tools/test.sh tests/test_prep.py -x
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=../path.sh
. ./path.sh
exec python -m pytest "$@"
