#!/usr/bin/env bash
# The whole test suite: sets up the environment, then runs pytest.
# Usage: scripts/run_tests.sh [pytest args...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
bash "$root/scripts/setup_env.sh" --venv "$venv"
cd "$root"
# Before MindSpore loads: keep oneDNN off its AVX-512 reference-kernel path (see docs/performance.md).
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
"$venv/bin/python" -m pytest "$@"
