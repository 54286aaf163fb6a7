#!/usr/bin/env bash
# Cross-framework parity of tkfac_ms against reference_torch on weights shared through ONNX:
# prints one row per layer and quantity (max relative error, tolerance, pass/fail) and writes
# the table as JSON and Markdown (see docs/parity.md). Exit status 1 if any row fails.
# Usage: scripts/run_parity.sh --model mlp|small_cnn|resnet20|vgg16_bn|all --approximation tkfac_nor|tkfac_new|kfac|all [--batch N] [--steps N] [--out DIR] [--free-running] [--quiet]
set -euo pipefail

usage() {
  echo "Usage: $0 --model mlp|small_cnn|resnet20|vgg16_bn|all --approximation tkfac_nor|tkfac_new|kfac|all [--batch N] [--steps N] [--out DIR] [--free-running] [--quiet]" >&2
  exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
model=""
approximation=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) [[ $# -ge 2 ]] || usage; model="$2"; shift 2 ;;
    --approximation) [[ $# -ge 2 ]] || usage; approximation="$2"; shift 2 ;;
    --batch|--steps) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage; args+=("$1" "$2"); shift 2 ;;
    --out) [[ $# -ge 2 ]] || usage; args+=("$1" "$2"); shift 2 ;;
    --free-running|--quiet) args+=("$1"); shift ;;
    *) usage ;;
  esac
done
[[ "$model" =~ ^(mlp|small_cnn|resnet20|vgg16_bn|all)$ ]] || usage
[[ "$approximation" =~ ^(tkfac_nor|tkfac_new|kfac|all)$ ]] || usage
[[ -x "$venv/bin/python" ]] || { echo "no Python in $venv: run 'bash scripts/setup_env.sh' first" >&2; exit 2; }

cd "$root"
# Before MindSpore and torch load: oneDNN on AVX2 kernels (docs/performance.md); idle OpenMP
# threads sleep, so the two frameworks in one process do not slow each other down.
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export GLOG_v="${GLOG_v:-3}"
"$venv/bin/python" -m parity --model "$model" --approximation "$approximation" "${args[@]}"
