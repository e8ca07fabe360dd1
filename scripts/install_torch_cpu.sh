#!/usr/bin/env bash
# Install torch's CPU build (never the multi-GB CUDA wheels) into the active Python environment.
# Training and export need torch; scoring does not. Uses a local wheel directory when the machine
# has one (PIP_FIND_LINKS or /opt/wheels holding torch 2.13.0+cpu), else PyTorch's CPU index.
set -euo pipefail
PY=${PYTHON:-python}
VERSION=${TORCH_VERSION:-2.13.0}
if "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$VERSION') else 1)" 2>/dev/null; then
  echo "torch $VERSION already installed"; exit 0
fi
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
  if ls "$dir"/torch-"$VERSION"+cpu-*.whl >/dev/null 2>&1; then
    exec "$PY" -m pip install "torch==$VERSION" --find-links "$dir"
  fi
done
exec "$PY" -m pip install "torch==$VERSION" --index-url https://download.pytorch.org/whl/cpu
