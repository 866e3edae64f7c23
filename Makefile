# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: venv run check test test-data test-gpu test-slurm lint clean bench bench-gpu

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[workflow,test]'
	touch $@

run: venv
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html
	@echo "report: results/report.html"

# Real images for the tests (Debian's dataset-fashion-mnist, installed when missing).
test-data:
	tests/data/fashion_mnist.sh

# Test files run on TEST_WORKERS processes (pytest-xdist), each file on one worker so
# that a file's shared workflow run is made once; the longest files first (tests/conftest.py).
TEST_WORKERS ?= 2

# The fast tier, for the inner loop: everything but the end-to-end workflow runs
# (marker `slow`), 1.7-4.2 minutes on 2 cores, by the speed of the machine that day.
check: venv
	$(BIN)/python -m pytest -m "not slow and not gpu and not slurm" -n $(TEST_WORKERS)

# Everything but the GPU and cluster tests; the 15 slowest listed at the end, where
# the time goes.
test: venv test-data
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-gpu: venv
	$(BIN)/python -m pytest -m gpu

# The workflow through profiles/slurm on a throwaway SLURM cluster on this machine
# (needs root: it installs and starts slurm-wlm and munge). The cluster is stopped
# again whatever happens; the exit status is pytest's (or the start-up's).
SLURM_CLUSTER := tests/cluster/slurm_cluster.sh
test-slurm: venv
	@trap '$(SLURM_CLUSTER) down' EXIT; trap 'exit 130' INT TERM; \
	$(SLURM_CLUSTER) up && $(BIN)/python -m pytest -m slurm tests/cluster

# Throughput benchmarks, each a ratio against a baseline measured in the same run:
# results in benchmarks/results/DEVICE.json and the DEVICE section of docs/PERFORMANCE.md.
# `bench`: CPU, small sizes (under 10 minutes on 2 cores); `bench-gpu`: CUDA, full sizes.
bench: venv
	$(BIN)/python -m benchmarks --device cpu

bench-gpu: venv
	$(BIN)/python -m benchmarks --device cuda

lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results .snakemake
