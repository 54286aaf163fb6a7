#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned dependencies.
# Usage: scripts/setup_env.sh [--venv DIR]
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail

usage() { echo "Usage: $0 [--venv DIR]" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) [[ $# -ge 2 ]] || usage; venv="$2"; shift 2 ;;
    *) usage ;;
  esac
done

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup] creating virtual environment in $venv"
  "$python_bin" -m venv "$venv"
fi

stamp="$venv/.tkfac-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "[setup] installing pinned dependencies (first time: ~5-10 min, MindSpore is an 800 MB wheel)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "${root}[dev]"
  echo "$want" > "$stamp"
fi
echo "[setup] environment ready: $venv"
