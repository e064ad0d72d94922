# Two commands that work on a fresh machine: `make demo` and `make test`.
# Each sets up .venv itself. The CPU path pins torch==2.13.0 (a CPU build on this
# machine's disk); the package itself only requires torch>=2.11.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-stage test test-fast lint bench reproduce clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt  # the dev extras (transformers, peft, timm) keep this torch
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	@command -v dot >/dev/null || (command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "graphviz 'dot' not installed: SVG rendering will be skipped")
	touch $(STAMP)

setup: $(STAMP)

# The main demo: a LLaMA-style byte-level LM on 2 CPU ranks (torchrun, gloo) with TimelyFreeze:
# warm-up, monitoring, HiGHS plan, ramp, steady state; prints loss and tokens/s and writes the
# DAG, the planned Gantt chart and the measured-vs-predicted timeline under out/demo/.
demo: $(STAMP)
	$(BIN)/python -m torch.distributed.run --standalone --nproc-per-node 2 \
		examples/train_llama.py --steps 60 --freeze timely --warmup 8 --eval-every 20 \
		--out out/demo

# The stage compiler alone: regions, FLOPs and measured backward savings of one stage.
demo-stage: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m ruff check tfcompile tests benchmarks examples
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_backward.py
	$(BIN)/python benchmarks/bench_plan.py
	$(BIN)/python benchmarks/bench_runtime.py

# the TimelyFreeze study (fine-tuning, 4 schedules x 7 methods x 3 seeds, cap sweep): results/reproduce/
reproduce: $(STAMP)
	$(BIN)/python benchmarks/reproduce.py

lint: $(STAMP)
	$(BIN)/python -m ruff check tfcompile tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info
