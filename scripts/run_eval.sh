#!/usr/bin/env bash
# Evaluate a model_zoo/train.py checkpoint (a .ckpt file, or a training output folder for its
# newest one) on the test split: `python -m model_zoo.eval` in the project's environment, with
# every option passed on unchanged. The run's config.yaml is used unless --config is given;
# relative paths are taken from the current directory. --help lists every option.
# Usage: scripts/run_eval.sh --checkpoint CKPT|RUN_DIR [--device CPU|GPU|Ascend] [--config FILE] [--json FILE] [--<field> VALUE ...]
set -euo pipefail

usage="Usage: $0 --checkpoint CKPT|RUN_DIR [--device CPU|GPU|Ascend] [--config FILE] [--json FILE] [--<field> VALUE ...]"
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
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"
export GLOG_v="${GLOG_v:-3}"
if [[ $help -eq 1 ]]; then
  printf '%s\n\nThe options of model_zoo/eval.py, all accepted here:\n\n' "$usage"
fi
exec "$venv/bin/python" "$root/model_zoo/eval.py" "$@"
