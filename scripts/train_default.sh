#!/usr/bin/env bash
# The README's main command: set up (or reuse) the environment, then train ResNet-20 with
# TKFAC_new on the built-in digits data (scikit-learn's real handwritten digits, no download),
# a couple of minutes on a laptop CPU. It ends by printing where the checkpoint, the metrics
# and the plot went. Every option is passed on to scripts/run_standalone_train.sh (and so to
# `python -m model_zoo.train`): --<field> VALUE overrides
# model_zoo/config/digits_resnet20_tkfac_new.yaml, --resume continues the run. The output folder
# defaults to outputs/digits_resnet20_tkfac_new in the repository; a folder that already holds
# a run is refused (continue it with --resume, or pass --output NEW_FOLDER).
# Usage: scripts/train_default.sh [--device CPU|GPU|Ascend] [--output DIR] [--resume] [--<field> VALUE ...]
set -euo pipefail

usage="Usage: $0 [--device CPU|GPU|Ascend] [--output DIR] [--resume] [--<field> VALUE ...]"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${TKFAC_VENV:-$root/.venv}"
config="$root/model_zoo/config/digits_resnet20_tkfac_new.yaml"
help=0
output=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) help=1 ;;
    --output|--output=*|--output-dir|--output_dir|--output-dir=*|--output_dir=*) output=1 ;;
  esac
done
defaults=(--config "$config")
[[ $output -eq 1 ]] || defaults+=(--output "$root/outputs/digits_resnet20_tkfac_new")

if [[ $help -eq 1 ]]; then
  printf '%s\n\nDefaults: --config %s --output %s\n\n' "$usage" "$config" "$root/outputs/digits_resnet20_tkfac_new"
  [[ -x "$venv/bin/python" ]] || { echo "(run 'bash scripts/setup_env.sh' to list the training options)"; exit 0; }
  TKFAC_VENV="$venv" exec bash "$root/scripts/run_standalone_train.sh" "${defaults[@]}" --help
fi
bash "$root/scripts/setup_env.sh" --venv "$venv"
TKFAC_VENV="$venv" exec bash "$root/scripts/run_standalone_train.sh" "${defaults[@]}" "$@"
