# Two commands set up everything on a fresh machine (Python 3.10+, Java 17, Maven):
#   make demo   train, export, start Kafka and a worker pool, stream events, report
#   make test   the whole test suite, the one .ci/run calls
# Other targets: install, broker-start, broker-stop, lint, bench.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-k statestore".
PYTEST_ARGS ?=
# The demo's data: DATA=path/to/log FORMAT=movielens|taobao|csv|... (empty: synthetic data).
DATA ?=
FORMAT ?= auto
# Extra flags of the demo, e.g. DEMO_ARGS="--metrics-port 9200 --rate 500" (python -m ops.demo -h).
DEMO_ARGS ?=

.PHONY: install system-deps test demo lint broker-start broker-stop bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash ops/system-deps.sh

test: install system-deps
	bash ops/kafka/kafka.sh fetch
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install system-deps
	bash ops/kafka/kafka.sh fetch
	$(BIN)/python -m ops.demo $(if $(DATA),--data "$(DATA)" --format "$(FORMAT)") $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check hiertcn export statestore stream ops tests bench

broker-start: system-deps
	bash ops/kafka/kafka.sh fetch
	bash ops/kafka/kafka.sh start

broker-stop:
	bash ops/kafka/kafka.sh stop
