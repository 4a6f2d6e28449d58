#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the test suite. .ci/run calls this.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -ra --durations=30 --timeout 1800 "$@"
