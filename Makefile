# The two commands of the README's quick start: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB ?= .run/demo.db
PORT ?= 8080

.PHONY: run test lint bench install clean screenshots newest

# pyproject.toml gives ranges; constraints.txt the exact versions installed here and in CI.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,service]'
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

# The Redis stores' tests against the newest redis and hiredis that pyproject.toml admits (the
# rest as constraints.txt pins them), in a second venv: a new redis-py release that breaks the
# stores shows here before a user meets it. (CI runs it after `make test`.)
NEWEST := $(VENV)/newest
REDIS_TESTS := tests/test_contract.py tests/test_redis_budget.py tests/test_faults.py \
	tests/test_reconnect.py tests/test_sentinel.py tests/test_cluster.py tests/test_redis_link.py \
	tests/test_store_errors.py

newest:
	test -x $(NEWEST)/bin/python || $(PY) -m venv $(NEWEST)
	grep -viE '^(redis|hiredis)==' constraints.txt > $(NEWEST)/constraints.txt
	$(NEWEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(NEWEST)/constraints.txt -e '.[dev,service]'
	$(NEWEST)/bin/python -c 'import redis, hiredis; print("redis", redis.__version__, "hiredis", hiredis.__version__)'
	$(NEWEST)/bin/pytest -q -p no:cacheprovider $(REDIS_TESTS) -k 'not sqlite'

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
