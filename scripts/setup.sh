#!/usr/bin/env bash
# Install what is missing into .venv (idempotent: a stamp of pyproject.toml + constraints.txt skips a done install).
# CPU path: torch is pinned by constraints.txt (an unpinned resolver pulls the CUDA build and ~18 nvidia packages);
# torchvision is never installed. For GPU clusters see README "Install on a GPU cluster".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.aloevision-install-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into .venv (first run takes ~2 minutes)" >&2
  export DS_BUILD_OPS=0  # DeepSpeed: no CUDA op builds at install time
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
