#!/usr/bin/env bash
# Create .venv with the CPU build of torch and causalclip (editable, with the test tools and the offline demo's
# packages). Idempotent.
# Extra arguments are extras to add, e.g. `bash scripts/install.sh extract`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Pin torch first: a bare `torch` requirement would pull a multi-GB CUDA build. On a GPU machine install the
# torch build you need before running this script; it is kept.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
extras="dev,demo"  # demo: `causalclip demo`, the README's first command
for e in "$@"; do extras="$extras,$e"; done
.venv/bin/pip install -q -e ".[${extras}]"
echo "installed: $(.venv/bin/causalclip --version) in $(pwd)/.venv"
