# The two commands of a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project on first use. The tests compare the direct
# .tflite writer with the TensorFlow converter, so the venv has the `train` extra
# (TensorFlow) too; `make demo` itself needs no TensorFlow.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LUT := luts/host.sqlite
REPORT := reports/host

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

install: $(STAMP)

# Host demo: measure every op of the mnasfpn space on this CPU (resumable), check the
# table against end-to-end runs, then predict the paper's architecture with its breakdown.
demo: $(STAMP)
	$(BIN)/mnasfpn describe --arch paper-mnasfpn
	$(BIN)/mnasfpn-lut build --device host --space mnasfpn --out $(LUT)
	$(BIN)/mnasfpn-lut validate --lut $(LUT) --report $(REPORT)
	$(BIN)/mnasfpn-lut predict --lut $(LUT) --arch paper-mnasfpn
	@echo "report: $(REPORT)/report.md"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/host_timing_spread.py
	$(BIN)/python benchmarks/lut_build_time.py
	$(BIN)/python benchmarks/lut_predict_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
