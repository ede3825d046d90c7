#!/usr/bin/env bash
# Wheels (Python 3.12, x86-64) of what `python -m bench gpu_check` needs beyond the device machine's
# image (torch, transformers, sentence-transformers, pyarrow, numpy, yaml, tqdm, rich are there;
# pydantic and math-verify are not). About 3 MB, into .whl/ (git-ignored), carried with the call:
#   run(carry=[".whl"], command="python3 -m pip install -q --no-index --no-deps --no-compile \
#       --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 -m bench gpu_check")
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
PY="${PYTHON:-python3}"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.15.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
ls -la .whl
