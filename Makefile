# The two commands of a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project on first use. The tests compare the direct
# .tflite writer with the TensorFlow converter, so the venv has the `train` extra
# (TensorFlow) too; the demo's table, validation and prediction need no TensorFlow, its
# search step trains the one-shot supernet with it.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LUT := luts/host.sqlite
REPORT := reports/host
DEMO := build/demo

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

install: $(STAMP)

# Host demo: measure every op of the mnasfpn space on this CPU (resumable), check the
# table against end-to-end runs, predict the paper's architecture with its breakdown, then
# a short one-shot search on a small synthetic set: a 150-step supernet trained once, 60
# children scored from it (each step resumes; a second run reuses all).
demo: $(STAMP)
	$(BIN)/mnasfpn describe --arch paper-mnasfpn
	$(BIN)/mnasfpn-lut build --device host --space mnasfpn --out $(LUT)
	$(BIN)/mnasfpn-lut validate --lut $(LUT) --report $(REPORT)
	$(BIN)/mnasfpn-lut predict --lut $(LUT) --arch paper-mnasfpn
	test -f $(DEMO)/data/annotations/instances_val.json || \
	  $(BIN)/mnasfpn data synth --out $(DEMO)/data --train 200 --val 50 --size 128 --force
	$(BIN)/mnasfpn search --lut $(LUT) --data $(DEMO)/data --out $(DEMO)/search-oneshot \
	  --strategy evolution --trials 60 --workers 2 --seed-arch paper-mnasfpn \
	  --evaluator oneshot --oneshot-steps 150 --oneshot-val-images 50 --oneshot-bn-batches 1 \
	  --proxy-backbone-steps 100 --cache-dir $(DEMO)/proxy-cache
	$(BIN)/mnasfpn pareto $(DEMO)/search-oneshot
	@echo "report: $(REPORT)/report.md  frontier: $(DEMO)/search-oneshot/pareto.png"

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
