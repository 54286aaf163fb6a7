#!/usr/bin/env bash
# Evaluate a model_zoo/train.py checkpoint (a .ckpt file, or a training output folder for its
# newest one) on the test split; the run's config.yaml is used unless --config is given.
# Usage: scripts/run_eval.sh --device CPU|GPU|Ascend --checkpoint CKPT|RUN_DIR [--config FILE] [--json FILE] [--<field> VALUE ...]
set -euo pipefail

usage() {
  echo "Usage: $0 --device CPU|GPU|Ascend --checkpoint CKPT|RUN_DIR [--config FILE] [--json FILE] [--<field> VALUE ...]" >&2
  exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
device=""
checkpoint=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) [[ $# -ge 2 ]] || usage; device="$2"; shift 2 ;;
    --checkpoint) [[ $# -ge 2 ]] || usage; checkpoint="$2"; shift 2 ;;
    -h|--help) usage ;;
    --*) args+=("$1"); shift ;;      # --config, --json or a config override: eval.py checks it
    *) [[ ${#args[@]} -gt 0 ]] || usage; args+=("$1"); shift ;;  # the value of the option before
  esac
done
[[ "$device" =~ ^(CPU|GPU|Ascend)$ ]] || usage
[[ -e "$checkpoint" ]] || { echo "checkpoint not found: '$checkpoint'" >&2; usage; }
[[ -x "$venv/bin/python" ]] || { echo "no Python in $venv: run 'bash scripts/setup_env.sh' first" >&2; exit 2; }

export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
"$venv/bin/python" "$root/model_zoo/eval.py" --device "$device" --checkpoint "$checkpoint" "${args[@]}"
