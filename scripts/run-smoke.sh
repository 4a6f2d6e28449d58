#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the main job at the smoke scale.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/install.sh
export HF_HUB_OFFLINE=1
# targets and options first: --config takes every word after it
exec .venv/bin/snakemake --cores "${CORES:-2}" "$@" --config scale=smoke
