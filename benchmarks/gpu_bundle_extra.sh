#!/usr/bin/env bash
# Adds to the .gpu/ bundle (made by ../shared/tools/gpu-bundle.sh) the py3.12 wheels textclf's issue-26 parts need
# on the GPU machine and the bundle lacks: fastText (the cascade's student), skops (scikit-learn objects in model
# directories), catalogue, psutil and prettytable. .gpu/setup.sh installs every wheel in .gpu/whl, so nothing else
# changes. Run from the project root after gpu-bundle.sh; then `du -sh .gpu` must stay under 64 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -d .gpu/whl ] || { echo "no .gpu/whl: run bash ../shared/tools/gpu-bundle.sh first" >&2; exit 2; }
pin() { grep -io "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"'; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform any \
  -d .gpu/whl "$(pin fasttext-community)" "$(pin skops)" "$(pin catalogue)" "$(pin psutil)" prettytable==3.17.0 wcwidth==0.2.14 \
  2>&1 | grep -v "is ignored" || true
ls .gpu/whl; du -sh .gpu
