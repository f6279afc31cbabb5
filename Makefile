PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# threads of torch and numba in the executed tutorials: one is the fastest on a shared 2-core machine
DOCS_THREADS ?= 1

.PHONY: benchmark benchmark-quick test lint format clean docs docs-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# the CPU build of torch first, so that the range in pyproject installs nothing more
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,images,counts]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,images,counts,docs]"
	touch $(DOCS_STAMP)

benchmark: $(STAMP)
	$(BIN)/trvae benchmark kang

benchmark-quick: $(STAMP)
	$(BIN)/trvae benchmark kang --quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# the site in docs/_build/html, offline, warnings as errors; the tutorials are executed (results
# cached in docs/_build/.jupyter_cache: a notebook reruns when its code changes)
docs: $(DOCS_STAMP)
	rm -rf docs/generated
	cd docs && OMP_NUM_THREADS=$(DOCS_THREADS) NUMBA_NUM_THREADS=$(DOCS_THREADS) \
		../$(BIN)/sphinx-build -b html -W --keep-going . _build/html

# the built site as a reader sees it: headless Chromium renders pages; internal links resolve
docs-check: docs
	TRVAE_DOCS_REQUIRE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_docs.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
