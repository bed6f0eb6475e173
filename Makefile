# rlpost — the two commands a user needs are `make run-example` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONUNBUFFERED := 1

.PHONY: venv system-deps cluster-bins images cluster cluster-down crds lint test test-unit test-e2e \
        test-gpu run-example bench clean chart-sync chart-lint

# Python environment with every role, the operator and the test tools.
$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@
venv: $(BIN)/.installed

# Debian packages the tests use for real (Prometheus scrapes the operator and roles).
system-deps:
	@bash e2e/system_deps.sh

# Control-plane binaries built from Go modules, cached outside the repo (see e2e/cluster).
cluster-bins:
	@bash e2e/cluster/build.sh >/dev/null

# The operator, trainer and rollout images, built with buildah from their Dockerfiles on a
# local python:3.11-slim-bookworm (debootstrap); OCI archives + manifest.json in
# ~/.cache/rlpost/images, rebuilt only when an input changes (see e2e/images).
images: venv system-deps
	$(BIN)/python -m e2e.images build

cluster: venv cluster-bins
	$(BIN)/python -m e2e.cluster up
cluster-down: venv
	$(BIN)/python -m e2e.cluster down

crds: venv
	$(BIN)/python -m rlpost.crdgen --out crds/

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

run-example: venv
	$(BIN)/rlpost run examples/copy-first-letter.yaml

# The whole suite: unit, integration and e2e against the local control plane (not GPU).
test: venv system-deps cluster-bins images
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-unit: venv
	$(BIN)/python -m pytest tests -m 'not cluster and not slow'

test-e2e: venv system-deps cluster-bins
	$(BIN)/python -m pytest e2e

# On a GPU machine only: Megatron backend, NCCL/IPC weight sync, GPU benchmarks.
# Needs megatron-core (pip install megatron-core) and, for the NCCL sync and TP/PP, 2 GPUs;
# one GPU runs the colocated (CUDA IPC) sync, release/resume and loop. A machine without
# internet: `bash benchmarks/device_wheels.sh` here, then install .whl there (its header).
GPU_ENV = PYTHONPATH=$(CURDIR):$(CURDIR)/trainer_image:$(CURDIR)/rollout_image:$$PYTHONPATH \
	NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
test-gpu:
	$(GPU_ENV) RLPOST_GPU_RESULTS=benchmarks/results $(PY) -m pytest --noconftest -m gpu \
		-o addopts='-ra' tests/gpu
	$(GPU_ENV) $(PY) benchmarks/weight_sync.py --timeline 1024 \
		--out benchmarks/results/gpu_weight_sync.json
	$(GPU_ENV) $(PY) benchmarks/gpu_loop.py --out benchmarks/results/gpu_loop.json

# Helm chart (charts/rlpost): Helm reads only files inside the chart, so it carries copies
# of the generated CRDs and of the dashboard; tests/chart checks the copies are current.
HELM = $(shell $(BIN)/python -c 'from e2e.cluster.paths import bin_dir; print(bin_dir() / "helm")')
chart-sync: crds
	$(BIN)/python dashboards/generate.py
	rm -f charts/rlpost/crds/*.yaml && cp crds/*.yaml charts/rlpost/crds/
	cp dashboards/rlpost.json charts/rlpost/dashboards/rlpost.json

chart-lint: venv cluster-bins
	$(HELM) lint --strict charts/rlpost
	$(HELM) template rlpost charts/rlpost --namespace team-a >/dev/null
	$(HELM) template rlpost charts/rlpost --namespace team-a --set watch.clusterWide=true >/dev/null
	$(BIN)/python -m pytest tests/chart -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
