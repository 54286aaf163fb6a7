#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned dependencies:
# the package in editable mode with its `dev` extra (everything the tests need).
# Usage: scripts/setup_env.sh [--venv DIR]
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
#
# torch: PyPI's Linux torch wheel is the CUDA build (several GB of NVIDIA libraries). On Linux,
# torch is therefore installed first, alone, from PyTorch's CPU index, which serves the same
# version with the local label `+cpu` (`2.13.0+cpu`; PEP 440 ranks it above plain `2.13.0`, so
# a configured find-links or mirror holding the `+cpu` wheel wins too). The editable install
# then finds `torch==2.13.0` satisfied. TKFAC_TORCH_INDEX overrides the index URL; set it empty
# to skip this step (e.g. for a CUDA build installed by hand).
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
py="$venv/bin/python"

stamp="$venv/.tkfac-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "[setup] installing pinned dependencies (first time: ~5-10 min, MindSpore is an 800 MB wheel)"
  "$py" -m pip install -q --upgrade pip
  torch_index="${TKFAC_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
  if [[ "$(uname -s)" == Linux && -n "$torch_index" ]]; then
    # The torch pin, read from pyproject.toml's `torch` extra (one place for the version).
    torch_req=$("$py" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
print(next(r for r in extras["torch"] if r.replace(" ", "").startswith("torch==")))
EOF
)
    # Skip when that version is installed already (any local label: +cpu here).
    if ! "$py" - "$torch_req" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    have = version("torch").split("+")[0]
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if have == sys.argv[1].split("==")[1].strip() else 1)
EOF
    then
      echo "[setup] installing $torch_req (CPU build) from $torch_index"
      "$py" -m pip install -q --no-deps --extra-index-url "$torch_index" "$torch_req"
    fi
  fi
  "$py" -m pip install -q -e "${root}[dev]"
  echo "$want" > "$stamp"
fi
echo "[setup] environment ready: $venv"
