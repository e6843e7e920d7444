# Two entry points for a fresh clone (see README.md, "Quick start"); each one creates the
# local virtual environment .venv on first use and refreshes it when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo selftest test test-random fuzz lint clean

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
	$(VENV)/bin/ruff format --check src tests fuzz bench
	$(VENV)/bin/ruff check src tests fuzz bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest --cov --cov-report=term

# Only the Hypothesis tests, with a fresh random seed and more examples each run (the
# "random" profile in tests/conftest.py); `make test` stays derandomized.
test-random: $(STAMP)
	HYPOTHESIS_PROFILE=random $(VENV)/bin/pytest -m hypothesis -p no:cacheprovider -q

# Every atheris target of fuzz/ for FUZZ_SECONDS each (fuzz/README.md); `make test` runs
# each for a few seconds only. New inputs go to .fuzz/ (git-ignored), crashes to .fuzz/artifacts/.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS := query digest upload mime cms sip
fuzz: $(STAMP)
	@mkdir -p .fuzz/artifacts
	@for target in $(FUZZ_TARGETS); do \
		mkdir -p .fuzz/$$target; \
		echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
		$(VENV)/bin/python -m fuzz.run $$target -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=.fuzz/artifacts/ .fuzz/$$target fuzz/corpus/$$target \
			|| exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff format src tests fuzz
	$(VENV)/bin/ruff check --fix src tests fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .fuzz
