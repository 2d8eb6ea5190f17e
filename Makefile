# Entry points: `make lab-demo` (root) runs the main job on the emulated lab,
# `make demo` runs the system as local processes, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench bench-failover lab-deps lab-demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.ops: pyproject.toml $(VENV)/.base
	$(BIN)/pip install -q -e '.[test,ops]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/python -m app.demo

test: $(VENV)/.ops
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: $(VENV)/.base
	$(BIN)/python -m pytest -p no:cacheprovider -m "not lab and not slow" --ignore=tests/deploy

# Full speed on the mixed files, then returns/renewals at full speed and paced.
bench: $(VENV)/.base
	$(BIN)/python loadtests/bench_chain.py
	$(BIN)/python loadtests/bench_chain.py --mix published --window 4
	$(BIN)/python loadtests/bench_chain.py --mix published --rate 1000,3000,5000,6000

bench-failover: $(VENV)/.base
	$(BIN)/python loadtests/bench_failover.py

lab-deps:
	bash app/lab/deps.sh

# The main job on the emulated lab (root): up, deploy, a run with the primary GA
# stopped half way, collect, report, check, down. LAB_DEMO_ARGS="--hosts 3 --keep".
lab-demo: $(VENV)/.ops
	bash app/lab/deps.sh
	$(BIN)/python -m app.lab demo $(LAB_DEMO_ARGS)

clean:
	rm -rf runs results wheelhouse .pytest_cache
