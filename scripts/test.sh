#!/usr/bin/env bash
# The test suite: creates/reuses .venv, installs the repo with its test extras, fetches the
# example data, runs pytest. Extra arguments go to pytest (e.g. -k calib -x).
set -euo pipefail
M2S_EXTRAS="${M2S_EXTRAS:-dev,training,export,ros}"
source "$(dirname "$0")/env.sh"
cd "$M2S_ROOT"
exec "$M2S_VENV/bin/python" -m pytest "$@"
