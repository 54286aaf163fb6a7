#!/usr/bin/env bash
# Train a model-zoo network on one device (model_zoo/train.py); extra --<field> VALUE pairs
# override the config (e.g. --epochs 1 --optimizer momentum --data-path DIR).
# Usage: scripts/run_standalone_train.sh --device CPU|GPU|Ascend --config FILE [--output DIR] [--resume [CKPT]] [--<field> VALUE ...]
set -euo pipefail

usage() {
  echo "Usage: $0 --device CPU|GPU|Ascend --config FILE [--output DIR] [--resume [CKPT]] [--<field> VALUE ...]" >&2
  exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
device=""
config=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) [[ $# -ge 2 ]] || usage; device="$2"; shift 2 ;;
    --config) [[ $# -ge 2 ]] || usage; config="$2"; shift 2 ;;
    --output) [[ $# -ge 2 ]] || usage; args+=(--output "$2"); shift 2 ;;
    -h|--help) usage ;;
    --*) args+=("$1"); shift ;;      # a config override or --resume: train.py checks it
    *) [[ ${#args[@]} -gt 0 ]] || usage; args+=("$1"); shift ;;  # the value of the option before
  esac
done
[[ "$device" =~ ^(CPU|GPU|Ascend)$ ]] || usage
[[ -f "$config" ]] || { echo "config file not found: '$config'" >&2; usage; }
[[ -x "$venv/bin/python" ]] || { echo "no Python in $venv: run 'bash scripts/setup_env.sh' first" >&2; exit 2; }

# Before MindSpore loads: keep oneDNN on its fast AVX2 kernels (docs/performance.md); quiet logs.
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
"$venv/bin/python" "$root/model_zoo/train.py" --device "$device" --config "$config" "${args[@]}"
