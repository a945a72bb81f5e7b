# The README's two commands: `make demo` (set up everything, run the live pipeline) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast setup bench clean

demo: setup
	$(BIN)/market-anomaly up

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests alone (pure logic, no broker or Spark): under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

# Virtual environment + Python packages + Maven jars (Kafka broker, Spark's Kafka connector); cached after the first run.
setup: $(STAMP)
	$(BIN)/market-anomaly setup

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11+ or run make PYTHON=python3"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

bench: setup
	$(BIN)/python bench/pipeline_throughput.py

clean:
	rm -rf var .pytest_cache
