#!/usr/bin/env bash
# Data-parallel training on N devices of this machine through msrun (one worker per device,
# mean gradients; TKFAC all-reduces its factor statistics too). The config's batch_size is the
# global batch: each worker takes batch_size / N. Worker logs: <output>/msrun_logs/.
# Usage: scripts/run_distribute_train.sh --workers N --device CPU|GPU|Ascend --config FILE [--output DIR] [--port PORT] [--resume [CKPT]] [--<field> VALUE ...]
set -euo pipefail

usage() {
  echo "Usage: $0 --workers N --device CPU|GPU|Ascend --config FILE [--output DIR] [--port PORT] [--resume [CKPT]] [--<field> VALUE ...]" >&2
  exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
workers=""
device=""
config=""
output=""
port=8118
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) [[ $# -ge 2 ]] || usage; workers="$2"; shift 2 ;;
    --device) [[ $# -ge 2 ]] || usage; device="$2"; shift 2 ;;
    --config) [[ $# -ge 2 ]] || usage; config="$2"; shift 2 ;;
    --output) [[ $# -ge 2 ]] || usage; output="$2"; shift 2 ;;
    --port) [[ $# -ge 2 ]] || usage; port="$2"; shift 2 ;;
    -h|--help) usage ;;
    --*) args+=("$1"); shift ;;      # a config override or --resume: train.py checks it
    *) [[ ${#args[@]} -gt 0 ]] || usage; args+=("$1"); shift ;;  # the value of the option before
  esac
done
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || usage
[[ "$device" =~ ^(CPU|GPU|Ascend)$ ]] || usage
[[ "$port" =~ ^[0-9]+$ ]] || usage
[[ -f "$config" ]] || { echo "config file not found: '$config'" >&2; usage; }
[[ -x "$venv/bin/python" ]] || { echo "no Python in $venv: run 'bash scripts/setup_env.sh' first" >&2; exit 2; }
output="${output:-outputs/$(basename "$config" .yaml)}"
mkdir -p "$output"

# msrun starts the workers with the first 'python' on PATH: the project's.
export PATH="$venv/bin:$PATH"
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
echo "[distribute] $workers workers; logs in $output/msrun_logs/worker_<rank>.log (rank 0 shown)"
msrun --worker_num="$workers" --local_worker_num="$workers" --master_port="$port" --join=True --tail_worker_log=0 --log_dir="$output/msrun_logs" "$root/model_zoo/train.py" --device "$device" --config "$config" --output "$output" "${args[@]}"
