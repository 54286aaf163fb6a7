#!/usr/bin/env bash
# The test suite: sets up the environment, then runs pytest.
# Usage: scripts/run_tests.sh [--fast] [pytest args...]
#   (no flag)  the full suite, what CI runs (~13 min on 2 cores)
#   --fast     the fast tier, -m "not slow": every test module, without the tests marked
#              @pytest.mark.slow (graph compiles, training runs, parity cases); <= 3 min
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
args=()
for arg in "$@"; do
  if [[ "$arg" == --fast ]]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
bash "$root/scripts/setup_env.sh" --venv "$venv"
cd "$root"
# Before MindSpore loads: keep oneDNN off its AVX-512 reference-kernel path (see docs/performance.md).
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
"$venv/bin/python" -m pytest "${args[@]}"
