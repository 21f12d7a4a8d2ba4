# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install octbatch, classify a sample archive on the CPU
#   make test   create .venv, install octbatch with test extras, run the test suite
# and two checks (.ci/run runs them after the tests when CI_CHECKS names them):
#   make lint       ruff check + ruff format --check
#   make typecheck  mypy (configured in pyproject.toml)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# torch + torchvision for the training tests and the torch/nvjpeg path's CPU tests (issue 14). Pinned
# as a pair: torchvision 0.29.1 is built against torch 2.14.1 (PyPI's torchvision does not import beside
# the local torch 2.13.0+cpu wheel). Measured install and suite times: benchmarks/BENCHMARKS.md.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
SHARED_DATA ?= ../shared/data/oct2017
DEMO_OUT ?= demo-out

LINT_PATHS ?= octbatch tests benchmarks

.PHONY: demo test lint typecheck install install-test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test,dali,cluster,bench,report,dicom,s3]' $(TORCH)
	touch $@

# The HTML report's extra (matplotlib, jinja2), for `make demo`.
$(VENV)/.installed-report: $(VENV)/.installed
	$(PIP) install -q -e '.[report]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed-report
	@mkdir -p $(DEMO_OUT)
	@if [ -d "$(SHARED_DATA)" ]; then \
	  echo "demo: classifying the real OCT2017 sample in $(SHARED_DATA)"; archive="$(SHARED_DATA)"; \
	else \
	  echo "demo: $(SHARED_DATA) not found; generating a synthetic archive of 500 OCT-like scans (+3 broken files) in $(DEMO_OUT)/archive (cartoons: the shipped model was trained on real scans, so its predictions here mean nothing)"; \
	  [ -d $(DEMO_OUT)/archive ] || $(BIN)/octbatch synth $(DEMO_OUT)/archive --n 500; archive="$(DEMO_OUT)/archive"; \
	fi; \
	$(BIN)/octbatch run "$$archive" --out $(DEMO_OUT)/results.parquet --overwrite -v; rc=$$?; \
	[ $$rc -eq 0 ] || [ $$rc -eq 3 ] || exit $$rc; \
	$(BIN)/octbatch report $(DEMO_OUT)/results.parquet --html $(DEMO_OUT)/report.html --referrals $(DEMO_OUT)/referrals.csv

# The one command: lint, types, then the tests (CI runs exactly this). The tests run on TEST_WORKERS
# pytest-xdist processes, one test file per worker (--dist loadfile: a file's fixtures such as a Ray
# cluster or the S3 server start once); on 2 cores this takes 174 s instead of 259 s.
TEST_WORKERS ?= 2
test: lint typecheck
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install-test
	$(BIN)/python -m ruff check $(LINT_PATHS)
	$(BIN)/python -m ruff format --check $(LINT_PATHS)

typecheck: install-test
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
