#!/usr/bin/env bash
# Data-parallel training on N devices of this machine through msrun (one worker per device,
# mean gradients; TKFAC all-reduces its factor statistics too). The config's batch_size is the
# global batch: each worker takes batch_size / N. Worker logs: <output>/msrun_logs/.
# Every option but --workers and --port is passed on to model_zoo/train.py (--help lists them);
# relative paths are taken from the current directory. A new run refuses an output folder that
# holds an earlier run or that a live run holds (before msrun writes its logs there).
# Usage: scripts/run_distribute_train.sh --workers N --config FILE [--device CPU|GPU|Ascend] [--output DIR] [--port PORT] [--<field> VALUE ...]
#        scripts/run_distribute_train.sh --workers N --output DIR --resume [CKPT|DIR] [--port PORT] [--<field> VALUE ...]
set -euo pipefail

usage="Usage: $0 --workers N --config FILE [--device CPU|GPU|Ascend] [--output DIR] [--port PORT] [--<field> VALUE ...]
       $0 --workers N --output DIR --resume [CKPT|DIR] [--port PORT] [--<field> VALUE ...]"
die() { echo "error: $* (see $0 --help)" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
workers=""
config=""
output=""
port=8118
help=0
resume=0
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) [[ $# -ge 2 ]] || die "--workers needs a value"; workers="$2"; shift 2 ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
    --output) [[ $# -ge 2 ]] || die "--output needs a value"; output="$2"; shift 2 ;;
    -c|--config) [[ $# -ge 2 ]] || die "--config needs a value"; config="$2"; args+=(--config "$2"); shift 2 ;;
    --resume) resume=1; args+=("$1"); shift ;;
    -h|--help) help=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ -x "$venv/bin/python" ]] || die "no Python in $venv: run 'bash scripts/setup_env.sh' first"
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
if [[ $help -eq 1 ]]; then
  printf '%s\n\n--workers N: msrun workers (one per device); --port PORT: msrun scheduler port (default 8118).\nThe options of model_zoo/train.py, all accepted here:\n\n' "$usage"
  exec "$venv/bin/python" "$root/model_zoo/train.py" "${args[@]}" --help
fi
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$workers'"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a port number, got '$port'"
[[ -n "$config" || $resume -eq 1 ]] || die "--config FILE is required (or --resume to continue a run)"
if [[ -z "$output" ]]; then
  [[ -n "$config" ]] || die "--resume needs the run's folder: --output DIR"
  output="outputs/$(basename "$config" .yaml)"
fi
# msrun writes its logs into the folder before train.py checks it: check first.
if [[ -e "$output/.lock" ]] && ! flock -n "$output/.lock" true 2>/dev/null; then
  die "$output is in use by another run ($(tr '\n' ' ' < "$output/.lock")); wait for it to end, or choose another folder with --output"
fi
if [[ $resume -eq 0 ]]; then
  for f in "$output"/checkpoints/epoch_*.ckpt "$output"/metrics.csv "$output"/metrics.json; do
    [[ -e "$f" ]] && die "$output already holds a run ($f); nothing was changed. Continue it with --resume, or start a new run with --output NEW_FOLDER"
  done
fi
mkdir -p "$output" 2>/dev/null || die "cannot create the output folder $output"

# msrun starts the workers with the first 'python' on PATH: the project's.
export PATH="$venv/bin:$PATH"
echo "[distribute] $workers workers; logs in $output/msrun_logs/worker_<rank>.log (rank 0 shown)"
exec msrun --worker_num="$workers" --local_worker_num="$workers" --master_port="$port" --join=True --tail_worker_log=0 --log_dir="$output/msrun_logs" "$root/model_zoo/train.py" --output "$output" "${args[@]}"
