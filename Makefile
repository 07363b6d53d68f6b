# Two commands set up everything on a fresh machine (Python 3.10+, Java 17, Maven):
#   make demo   train, export, start Kafka and a worker pool, stream events, report
#   make test   the whole test suite, the one .ci/run calls
# Other targets: install, broker-start, broker-stop, lint, and bench (the four scripts of
# docs/benchmarks.md at their default sizes, several minutes; tables go to $(BENCH_DIR)/*.md).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-k statestore".
PYTEST_ARGS ?=
# The demo's data: DATA=path/to/log FORMAT=movielens|taobao|csv|... (empty: synthetic data).
DATA ?=
FORMAT ?= auto
# More data flags for DATA, e.g. DATA_ARGS="--user-col customer_id --item-col sku --time-unit ms".
# The recipe reads it from the environment, so that quotes in it reach the demo as typed.
DATA_ARGS ?=
export DATA_ARGS
# Extra flags of the demo, e.g. DEMO_ARGS="--metrics-port 9200 --rate 500" (python -m ops.demo -h).
DEMO_ARGS ?=
# Where `make bench` writes its tables and keeps the stream benchmark's bundle, state and logs.
BENCH_DIR ?= .local/bench

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
	$(BIN)/python -m ops.demo $(if $(DATA),--data "$(DATA)" --format "$(FORMAT)") --data-args="$$DATA_ARGS" $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check hiertcn export statestore stream ops tests bench

broker-start: system-deps
	bash ops/kafka/kafka.sh fetch
	bash ops/kafka/kafka.sh start

broker-stop:
	bash ops/kafka/kafka.sh stop

# bench/stream.py starts and stops its own broker and exports the random bundle that
# bench/statestore.py then times; a second run reuses that bundle. Progress goes to stderr.
bench: install system-deps
	bash ops/kafka/kafka.sh fetch
	mkdir -p $(BENCH_DIR)
	$(BIN)/python bench/stream.py --work-dir $(BENCH_DIR)/stream > $(BENCH_DIR)/stream.md
	$(BIN)/python bench/statestore.py --bundle $(BENCH_DIR)/stream/bundle > $(BENCH_DIR)/statestore.md
	$(BIN)/python bench/inference.py > $(BENCH_DIR)/inference.md
	$(BIN)/python bench/train_speed.py > $(BENCH_DIR)/train_speed.md
	$(BIN)/python bench/read_speed.py > $(BENCH_DIR)/read_speed.md
	cat $(BENCH_DIR)/stream.md $(BENCH_DIR)/statestore.md $(BENCH_DIR)/inference.md \
		$(BENCH_DIR)/train_speed.md $(BENCH_DIR)/read_speed.md
