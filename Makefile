# Set-up and the two everyday commands. `make demo` and `make test` each create .venv on first use.
#
# PyTorch: on a machine without CUDA we install the CPU build of torch first (TORCH_CPU, which pip finds as a
# local wheel on the project's machines; elsewhere set TORCH_CPU_ARGS to point pip at a CPU wheel index).
# With CUDA present, the package's plain `torch>=2.2` requirement gives the usual GPU build.
PYTHON ?= python3
VENV ?= .venv
OUT ?= hflow-demo
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_ARGS ?=
BIN := $(VENV)/bin

.PHONY: demo test install lint bench bench-evaluation clean-venv

$(BIN)/hflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing the default (GPU) PyTorch build"; \
	else \
		echo "no CUDA: installing the CPU build of PyTorch ($(TORCH_CPU))"; \
		$(BIN)/pip install --quiet $(TORCH_CPU_ARGS) "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install --quiet -e ".[eval,test]"
	@touch $@

install: $(BIN)/hflow

# The main job.
demo: $(BIN)/hflow
	$(BIN)/hflow demo --out $(OUT) --overwrite

# The test suite (what CI runs).
test: $(BIN)/hflow
	$(BIN)/python -m pytest -q

lint: $(BIN)/hflow
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(BIN)/hflow
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_volume.py

# The benchmark over seeds 0,1,2 and settings A-D (summary.json): hours on two CPU cores; --quick for a first look.
bench-evaluation: $(BIN)/hflow
	$(BIN)/python benchmarks/bench_evaluation.py --work bench-evaluation

clean-venv:
	rm -rf $(VENV)
