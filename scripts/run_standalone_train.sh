#!/usr/bin/env bash
# Train a model-zoo network on one device: `python -m model_zoo.train` in the project's
# environment (.venv, or $TKFAC_VENV), with every option passed on unchanged. Relative paths are
# taken from the current directory. --help lists every option and config field with its help,
# default and choices (with --config FILE: that file's values as the defaults).
# Usage: scripts/run_standalone_train.sh --config FILE [--device CPU|GPU|Ascend] [--output DIR] [--<field> VALUE ...]
#        scripts/run_standalone_train.sh --output DIR --resume [CKPT|DIR] [--<field> VALUE ...]
set -euo pipefail

usage="Usage: $0 --config FILE [--device CPU|GPU|Ascend] [--output DIR] [--<field> VALUE ...]
       $0 --output DIR --resume [CKPT|DIR] [--<field> VALUE ...]"
die() { echo "error: $* (see $0 --help)" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
help=0
config=0
resume=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) help=1 ;;
    -c|--config|--config=*) config=1 ;;
    --resume|--resume=*) resume=1 ;;
  esac
done
[[ -x "$venv/bin/python" ]] || die "no Python in $venv: run 'bash scripts/setup_env.sh' first"
# Before MindSpore loads: keep oneDNN on its fast AVX2 kernels (docs/performance.md); quiet logs.
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
if [[ $help -eq 1 ]]; then
  printf '%s\n\nThe options of model_zoo/train.py, all accepted here:\n\n' "$usage"
  exec "$venv/bin/python" "$root/model_zoo/train.py" "$@"
fi
[[ $config -eq 1 || $resume -eq 1 ]] || die "--config FILE is required (or --resume to continue a run)"
exec "$venv/bin/python" "$root/model_zoo/train.py" "$@"
