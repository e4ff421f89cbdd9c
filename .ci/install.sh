#!/usr/bin/env bash
# Create a virtual environment and install neulig[dev] into it, as fast as this machine allows.
# uv is used when it can be had (about 1 min cold); pip is the fallback (about 4 min).
# Local wheel folders and indexes from pip's config are passed on to uv, so the
# torch 2.14.1 + torchvision 0.29.1 pair is taken from local disk where it lies. Bytecode is compiled
# at install time: with PYTHONDONTWRITEBYTECODE set (as on our machines) every process would
# otherwise recompile ~4,300 modules, about 14 s per start.
set -euo pipefail
venv="${1:-.venv}"
if python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv >/dev/null 2>&1; then
  [ -x "$venv/bin/python" ] || python3 -m uv venv -q -p python3 "$venv"
  UV_FIND_LINKS="$(pip config get global.find-links 2>/dev/null || true)" \
  UV_EXTRA_INDEX_URL="$(pip config get global.extra-index-url 2>/dev/null || true)" \
    python3 -m uv pip install -q --compile-bytecode --python "$venv/bin/python" -e '.[dev]'
  # the Optuna sweeper pins optuna<3: let uv pick it from whichever index has it (optional extra)
  UV_FIND_LINKS="$(pip config get global.find-links 2>/dev/null || true)" \
  UV_EXTRA_INDEX_URL="$(pip config get global.extra-index-url 2>/dev/null || true)" \
    python3 -m uv pip install -q --compile-bytecode --index-strategy unsafe-best-match \
      --python "$venv/bin/python" -e '.[dev,optuna]' || echo "optional: Optuna sweeper not installed"
else
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$venv/bin/python" -m ensurepip -q  # a venv uv made has no pip
  "$venv/bin/python" -m pip install -q -e '.[dev]'
  "$venv/bin/python" -m pip install -q -e '.[dev,optuna]' || echo "optional: Optuna sweeper not installed"
fi
"$venv/bin/python" -c "import torch, torchvision, open_clip, lightning, hydra, mlflow; print('installed: torch', torch.__version__, 'open_clip', open_clip.__version__)"
