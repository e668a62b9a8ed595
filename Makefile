# The two commands of the README's quick start: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB ?= .run/demo.db
PORT ?= 8080

.PHONY: run test lint bench install clean screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,service]'
	touch $(STAMP)

install: $(STAMP)

# The main job: replay the bundled stream of a small Kubernetes cluster's alerts through the
# counter on the embedded SQLite store, printing escalations as they happen and the top table;
# then serve the dashboard and the HTTP API on 127.0.0.1:$(PORT) with a token for the demo
# project (Ctrl-C stops).
run: $(STAMP)
	mkdir -p $(dir $(DEMO_DB)) && rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	$(BIN)/anomaly-counter --store sqlite:///$(DEMO_DB) --project demo replay --bundled
	ANOMALY_COUNTER_SPOOL_DIR=$(dir $(DEMO_DB))spool $(BIN)/anomaly-counter --store sqlite:///$(DEMO_DB) --project demo serve --port $(PORT) --demo-token

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q

# The dashboard's pages as PNGs, from the test browser (headless chromium), for the README.
screenshots: $(STAMP)
	$(BIN)/pytest -q tests/test_dashboard.py --screenshots docs/screenshots

bench: $(STAMP)
	$(BIN)/python bench/bench_record.py
	$(BIN)/python bench/bench_service.py
	$(BIN)/python bench/bench_spool.py
	$(BIN)/python bench/bench_cluster.py
	$(BIN)/python bench/bench_web.py --cluster

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
