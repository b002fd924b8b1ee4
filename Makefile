# Each target sets itself up from nothing: a .venv with CPU torch (on a machine without an NVIDIA GPU),
# the package in editable mode with its C++ extension, and the tools the target needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On a machine without nvidia-smi the CPU build of torch is enough; override TORCH_SPEC to choose another.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

.PHONY: demo test bench native clean kernel-report

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=77" wheel "pybind11>=2.12" "cmake>=3.18"
	RETAILSIM_REQUIRE_NATIVE=1 $(PIP) install -q --no-build-isolation -e ".[test,bench,report]"
	touch $@

setup: $(VENV)/.installed

# Rebuild the C++ extension after editing kernels/ (the editable install does not watch them).
native: $(VENV)/.installed
	RETAILSIM_REQUIRE_NATIVE=1 $(PY) setup.py -q build_ext --inplace

test: native
	$(PY) -m pytest tests -q $(PYTEST_ARGS)
	RETAILSIM_NATIVE=0 $(PY) -m pytest tests -q -m native_parity $(PYTEST_ARGS)

bench: native
	mkdir -p benchmarks/results
	$(PY) -m pytest benchmarks -q --device cpu --benchmark-json benchmarks/results/cpu-latest.json
	$(PY) benchmarks/report.py benchmarks/results/cpu-latest.json --out benchmarks/results/cpu-latest.md

# Every Triton kernel compiled offline for sm_80 and sm_90 (no GPU needed); times in it are estimates.
kernel-report: native
	env -u TRITON_INTERPRET $(PY) benchmarks/kernel_report.py --out benchmarks/results

# generate -> prepare-samples -> prepare-tensor-cache -> train -> evaluate -> report, under runs/demo/.
demo: native
	$(VENV)/bin/retailsim demo --out $(DEMO_OUT)

clean:
	rm -rf build $(VENV) retailsim/_native*.so .pytest_cache .benchmarks
