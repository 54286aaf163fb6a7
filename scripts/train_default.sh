#!/usr/bin/env bash
# The README's main command: set up (or reuse) the environment, then train ResNet-20 with
# TKFAC_new on the built-in digits data (scikit-learn's real handwritten digits, no download),
# a couple of minutes on a laptop CPU. It ends by printing where the checkpoint, the metrics
# and the plot went. Extra --<field> VALUE pairs override model_zoo/config/digits_resnet20_tkfac_new.yaml.
# Usage: scripts/train_default.sh [--device CPU|GPU|Ascend] [--output DIR] [--<field> VALUE ...]
set -euo pipefail

usage() {
  echo "Usage: $0 [--device CPU|GPU|Ascend] [--output DIR] [--<field> VALUE ...]" >&2
  exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
device=CPU
output="$root/outputs/digits_resnet20_tkfac_new"
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) [[ $# -ge 2 ]] || usage; device="$2"; shift 2 ;;
    --output) [[ $# -ge 2 ]] || usage; output="$2"; shift 2 ;;
    -h|--help) usage ;;
    --*) args+=("$1"); shift ;;      # a config override: train.py checks it
    *) [[ ${#args[@]} -gt 0 ]] || usage; args+=("$1"); shift ;;  # the value of the option before
  esac
done
[[ "$device" =~ ^(CPU|GPU|Ascend)$ ]] || usage

bash "$root/scripts/setup_env.sh" --venv "$venv"
TKFAC_VENV="$venv" bash "$root/scripts/run_standalone_train.sh" --device "$device" --config "$root/model_zoo/config/digits_resnet20_tkfac_new.yaml" --output "$output" "${args[@]}"
