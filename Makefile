# The README's two commands: `make demo` (set up everything, run the live pipeline) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHART  := src/market_anomaly/dashboard/static/vendor/lightweight-charts.standalone.production.js

.PHONY: demo test test-fast test-faults setup vendor-chart bench clean

demo: setup
	$(BIN)/market-anomaly up

# Everything: the unit and integration tests, then the fault suite (below). Many integration tests wait (outages,
# markets in real time) while others compute, so TEST_WORKERS processes run them side by side, a test file each
# (its module fixtures stay in one process); each process starts its own broker and Spark session.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest --ignore=tests/faults -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-faults

# The unit tests alone (pure logic, no broker or Spark): under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

# Virtual environment + Python packages + Maven jars (Kafka broker, Spark's Kafka connector); cached after the first run.
setup: $(STAMP) | $(CHART)
	$(BIN)/market-anomaly setup

# The dashboard's chart library (TradingView Lightweight Charts, from npm) is committed with its licence;
# setup vendors it only where it is missing; `make vendor-chart` refreshes it (scripts/vendor-chart.sh pins the version).
$(CHART):
	scripts/vendor-chart.sh
vendor-chart:
	scripts/vendor-chart.sh

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

# The fault suite (issue 13): real processes under kill -9, broker, database and webhook outages, poison records.
# FAULT_OUTAGE_SECONDS: how long a database or webhook receiver stays away (default: the issue's 2 minutes).
# The cases mostly wait (outages, a market replayed in real time), so FAULT_WORKERS of them run side by side,
# each with its own broker, pipeline and database.
FAULT_OUTAGE_SECONDS ?= 120
FAULT_WORKERS ?= 3
test-faults: setup
	FAULT_SUITE=1 FAULT_OUTAGE_SECONDS=$(FAULT_OUTAGE_SECONDS) $(BIN)/python -m pytest tests/faults -v \
	    -n $(FAULT_WORKERS) -rA --durations=0 $(PYTEST_ARGS)
