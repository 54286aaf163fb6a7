#!/usr/bin/env bash
# Cross-framework parity of tkfac_ms against reference_torch on weights shared through ONNX:
# prints one row per layer and quantity (max relative error, tolerance, pass/fail) and writes
# the table as JSON and Markdown (see docs/parity.md). Exit status 1 if any row fails.
# Runs `python -m parity` in the project's environment with every option passed on unchanged
# (--help lists them); relative paths (--out, --from-json) are taken from the current directory.
# Usage: scripts/run_parity.sh --model mlp|small_cnn|resnet20|vgg16_bn|all --approximation tkfac_nor|tkfac_new|kfac|all [--batch N] [--steps N] [--out DIR] [--free-running] [--quiet] [...]
set -euo pipefail

usage="Usage: $0 --model mlp|small_cnn|resnet20|vgg16_bn|all --approximation tkfac_nor|tkfac_new|kfac|all [--batch N] [--steps N] [--out DIR] [--free-running] [--quiet] [...]"
die() { echo "error: $* (see $0 --help)" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
help=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) help=1 ;;
  esac
done
[[ -x "$venv/bin/python" ]] || die "no Python in $venv: run 'bash scripts/setup_env.sh' first"

# The checkout's packages, wherever the command is run from (no cd: relative paths stay the
# caller's).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Before MindSpore and torch load: oneDNN on AVX2 kernels (docs/performance.md); idle OpenMP
# threads sleep, so the two frameworks in one process do not slow each other down.
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export GLOG_v="${GLOG_v:-3}"
if [[ $help -eq 1 ]]; then
  printf '%s\n\nThe options of python -m parity, all accepted here:\n\n' "$usage"
fi
exec "$venv/bin/python" -m parity "$@"
