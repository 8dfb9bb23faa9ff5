#!/usr/bin/env bash
# The main job on the embedded default: creates/reuses .venv, installs the repo, fetches the
# real example data and runs scripts/quickstart.py (arguments are passed on; see --help).
set -euo pipefail
M2S_EXTRAS="${M2S_EXTRAS:-dev,training,export,ros}"
source "$(dirname "$0")/env.sh"
cd "$M2S_ROOT"
exec "$M2S_VENV/bin/python" "$M2S_ROOT/scripts/quickstart.py" "$@"
