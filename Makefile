# Two entry points: `make demo` and `make test`. Each creates .venv from pyproject.toml if needed
# (the `dev` extra: no torch; `make bench` adds the `bench` extra for its peer).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
BENCH   = $(VENV)/.installed-bench

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
# JAX's persistent compilation cache: a program compiled once (e.g. the UDE's training step)
# is not compiled again by later processes.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 1

.PHONY: demo test test-deps lint format server deploy worker bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sciml pipeline data/lotka_volterra/lotka_volterra.csv \
	    --model data/lotka_volterra/model.toml --out runs/demo --engines sindy,operon,pysr

# System packages the tests need (headless Chromium for the report, PostgreSQL for the server).
test-deps:
	@if [ "$$(id -u)" = 0 ] && { ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql >/dev/null; \
	fi

test: $(STAMP) test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# Two worker processes (pytest-xdist), one test file at a time each, so a file's module
	# fixtures (a trained UDE, a finished run) are made once; the longest files first
	# (tests/conftest.py's LONGEST_FIRST, kept by --no-loadscope-reorder) so that both workers
	# end together. tests/conftest.py drops JAX's compiled programs after each file: each keeps
	# memory mappings, and a long-lived process reached vm.max_map_count, where XLA's compiler
	# aborts. One BLAS thread per process, as XLA's (tests/conftest.py): two workers and the
	# commands they start share two cores. Every compiled program goes into JAX's persistent
	# cache, not only those over a second: many tests start commands that build the same small
	# programs again (measured: two runs at once, then one alone, 46.5 -> 41.8 s of CPU).
	PREFECT_LOGGING_LEVEL=WARNING OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	    $(BIN)/python -m pytest -n 2 --dist loadfile \
	    --no-loadscope-reorder --durations=25 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A Prefect server on PostgreSQL (project-local cluster in .pg/), the set-up a team shares.
# Foreground; Ctrl-C stops the server and PostgreSQL. Basic authentication on the API (the auth
# string is generated into .secrets/prefect-auth, mode 0600), scram-sha-256 on PostgreSQL;
# PREFECT_SERVER_API_HOST=0.0.0.0 serves the network (never without auth). docs/orchestration.md
server: $(STAMP)
	PREFECT_LOGGING_LEVEL=INFO scripts/prefect-server.sh

# The deployments of prefect.yaml (work pools created first) on the server at PREFECT_API_URL,
# and a worker for the CPU pool. docs/orchestration.md
deploy: $(STAMP)
	$(BIN)/sciml deploy

worker: $(STAMP)
	$(BIN)/prefect worker start --pool sciml-cpu --type process

$(BENCH): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH)

bench: $(BENCH)
	$(BIN)/python bench/ude_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
