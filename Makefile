# Two entry points for a fresh clone (see README.md, "Quick start"); each one creates the
# local virtual environment .venv on first use and refreshes it when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo selftest test test-random lint clean

$(STAMP): pyproject.toml
	@echo "Installing sipcert and its tools into $(VENV)/ (about a minute, the first time only)..."
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sipcert demo

selftest: $(STAMP)
	$(VENV)/bin/sipcert selftest

test: $(STAMP)
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest --cov --cov-report=term

# Only the Hypothesis tests, with a fresh random seed and more examples each run (the
# "random" profile in tests/conftest.py); `make test` stays derandomized.
test-random: $(STAMP)
	HYPOTHESIS_PROFILE=random $(VENV)/bin/pytest -m hypothesis -p no:cacheprovider -q

lint: $(STAMP)
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
