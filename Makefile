# The two commands a fresh machine needs: `make demo` (the CPU main job) and `make test`.
# Both build .venv first (scripts/install.sh; idempotent).
VENV ?= .venv
BIN := $(VENV)/bin
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install install-gpu demo test test-fast test-unit test-integration test-acceptance bench bench-gpu bench-peers clean

install:
	VENV=$(VENV) bash scripts/install.sh cpu

install-gpu:
	VENV=$(VENV) bash scripts/install.sh gpu

demo: install
	$(BIN)/rlm-rig demo

# Test tiers (folders): unit (no server, seconds), integration (real vLLM-CPU server, sandbox, nnsight on
# tiny models), acceptance (SmolLM2, full CLI runs, the browser). `make test` runs all three.
test: install
	$(BIN)/python -m pytest -q -rs --durations=25 tests/unit tests/integration tests/acceptance

test-fast test-unit: install
	$(BIN)/python -m pytest -q -rs tests/unit

test-integration: install
	$(BIN)/python -m pytest -q -rs tests/integration

test-acceptance: install
	$(BIN)/python -m pytest -q -rs tests/acceptance

bench: install
	$(BIN)/python bench/bench_repl.py
	$(BIN)/python bench/bench_worker.py
	$(BIN)/python bench/bench_harness.py
	$(BIN)/python bench/bench_interp.py
	$(BIN)/python bench/bench_counting.py
	$(BIN)/python bench/bench_harness.py --profile cpu-small
	$(BIN)/python bench/bench_served_controller.py
	$(BIN)/python bench/bench_plan_interp.py

# The rig against rlms and dspy.RLM (bench/peers/): the peers get their own environment, never the rig's.
PEERS_VENV := bench/peers/.venv
$(PEERS_VENV)/.installed: bench/peers/requirements.txt | install
	$(BIN)/python -m venv --clear $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q -r bench/peers/requirements.txt
	touch $@

bench-peers: install $(PEERS_VENV)/.installed
	$(BIN)/python bench/peers/bench_peers.py --peers-python $(PEERS_VENV)/bin/python
	$(BIN)/python bench/peers/bench_memory.py

bench-gpu: install-gpu   # on the GPU box: real-size random-weight shapes, NF4 controller and FP16 worker
	$(BIN)/python bench/bench_gpu.py --arch qwen2.5-coder-14b --quant nf4 --device cuda:0 --out docs/gpu-bench.jsonl
	$(BIN)/python bench/bench_gpu.py --arch qwen2.5-7b --quant none --dtype float16 --device cuda:0 --out docs/gpu-bench.jsonl
	$(BIN)/python bench/bench_plan_interp.py --gpu cuda:0 --out docs/gpu-bench.jsonl

clean:
	rm -rf $(VENV) $(PEERS_VENV) runs .pytest_cache
