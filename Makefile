# The two commands a fresh machine needs: `make demo` (the CPU main job) and `make test`.
# Both build .venv first (scripts/install.sh; idempotent).
VENV ?= .venv
BIN := $(VENV)/bin
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install install-gpu demo test test-fast bench clean

install:
	VENV=$(VENV) bash scripts/install.sh cpu

install-gpu:
	VENV=$(VENV) bash scripts/install.sh gpu

demo: install
	$(BIN)/rlm-rig demo

test: install
	$(BIN)/python -m pytest -q -rs

test-fast: install
	$(BIN)/python -m pytest -q -m "not vllm and not slow and not smollm"

bench: install
	$(BIN)/python bench/bench_repl.py
	$(BIN)/python bench/bench_worker.py
	$(BIN)/python bench/bench_harness.py
	$(BIN)/python bench/bench_interp.py

clean:
	rm -rf $(VENV) runs .pytest_cache
