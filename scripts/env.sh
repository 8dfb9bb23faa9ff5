# Sourced by the other scripts: create or reuse the project's venv and install the repo into it.
#   M2S_EXTRAS  extras to install (default set by the caller), e.g. "dev,training"
#   M2S_VENV    venv directory (default: .venv in the repo root)
#   PYTHON      interpreter used to create the venv (default: python3, must be >= 3.10)
#   M2S_CONSTRAINTS  pip constraints file (e.g. constraints/jetpack6.txt), M2S_PINS extra requirements
# Re-installs only when pyproject.toml, the extras or the constraints change (a stamp file in the venv).
set -euo pipefail

M2S_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
M2S_VENV="${M2S_VENV:-$M2S_ROOT/.venv}"
M2S_EXTRAS="${M2S_EXTRAS:-dev}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: $PYTHON is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
  exit 1
fi
if [ ! -x "$M2S_VENV/bin/python" ]; then
  echo "[m2s] creating venv $M2S_VENV" >&2
  "$PYTHON" -m venv "$M2S_VENV"
fi
stamp="$M2S_VENV/.m2s-install-stamp"
M2S_CONSTRAINTS="${M2S_CONSTRAINTS:-}"
M2S_PINS="${M2S_PINS:-}"
constraint_args=()
if [ -n "$M2S_CONSTRAINTS" ]; then constraint_args=(-c "$M2S_ROOT/$M2S_CONSTRAINTS"); fi
want="$(cat "$M2S_ROOT/pyproject.toml" ${M2S_CONSTRAINTS:+"$M2S_ROOT/$M2S_CONSTRAINTS"} | sha256sum | cut -d' ' -f1) extras=$M2S_EXTRAS pins=$M2S_PINS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[m2s] installing mono2stereo[$M2S_EXTRAS] ${M2S_CONSTRAINTS:+(constraints $M2S_CONSTRAINTS) }into $M2S_VENV" >&2
  # shellcheck disable=SC2086  # M2S_PINS is a list of requirement specifiers
  "$M2S_VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${constraint_args[@]+"${constraint_args[@]}"} \
    -e "$M2S_ROOT[$M2S_EXTRAS]" $M2S_PINS
  echo "$want" > "$stamp"
fi
# Real example data (Debian opencv-doc); optional: tests that need it skip where it cannot be had.
if [ "$(id -u)" = "0" ]; then apt_update="--apt-update"; else apt_update=""; fi
"$M2S_VENV/bin/python" -m calib.example_data fetch --optional $apt_update >/dev/null
export PATH="$M2S_VENV/bin:$PATH"
