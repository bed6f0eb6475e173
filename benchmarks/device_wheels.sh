#!/usr/bin/env bash
# Wheels the GPU runs need that the lent GPU machine's image lacks (it has torch, numpy,
# transformers, httpx, pyyaml, prometheus-client, uvloop, matplotlib, tqdm; no internet).
# Downloads them, without their dependencies, into .whl/ (git-ignored) for its Python
# (PYVER, default 3.12). On the machine, before `make test-gpu`:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
PIP=${PIP:-.venv/bin/pip}
mkdir -p .whl
WHEELS=(
  megatron-core==0.19.2                         # trainer.backend: megatron
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  fastapi==0.165.0 starlette==1.10.0 annotated-doc opentelemetry-api importlib-metadata
  uvicorn==0.54.0 httptools==0.9.0              # the engine's and the buffer's HTTP server
  sglang-router==0.3.2 setproctitle==1.3.8 orjson==3.13.0   # the router `rlpost run` starts
)
for w in "${WHEELS[@]}"; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
done
du -sh .whl
