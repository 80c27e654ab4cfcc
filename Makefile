# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   # trains the tiny SpecVQGAN codebook on embedded synthetic data, resumes, decodes
#   make test   # the whole test suite (8 fake CPU devices)
# and one on a machine with a GPU (or TPU: ACCEL=tpu):
#   make bench-accel   # installs jax for it, runs every benchmark (< 8 min), prints a table
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := workdirs/demo_specvqgan_tiny

.PHONY: demo test test-fast lint format venv clean bench bench-accel

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	@echo "== 1/3 train 20 steps (checkpoints at 10 and 20)"
	$(PY) launch/train.py --config configs/specvqgan_vggsound.py:tiny --workdir $(DEMO)
	@echo "== 2/3 resume from step 20 and continue to 40"
	$(PY) launch/train.py --config configs/specvqgan_vggsound.py:tiny --workdir $(DEMO) \
	    --config.train.num_steps=40
	@echo "== 3/3 encode a clip to codes and decode it back (wav + png)"
	$(PY) launch/codec.py --workdir $(DEMO) --out $(DEMO)/codec \
	    --input $$($(PY) -c 'from data_pipelines.inputs import demo_clip; print(demo_clip())')
	@echo "demo run: $(DEMO) (tensorboard --logdir $(DEMO)/tensorboard)"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

# The developer loop: everything but the tests marked slow (long CLI and sharded runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The CPU set at small sizes, each benchmark time-bounded; JSON + table under BENCH_OUT.
BENCH_OUT ?= benchmarks/results/run_cpu
bench: $(STAMP)
	$(PY) benchmarks/run_all.py --out $(BENCH_OUT)

# The accelerator set in one command from a fresh copy of the tree. The interpreter is
# ACCEL_PY if given, else the first of .venv-accel, .venv and python3 that has avjax's
# dependencies and whose JAX sees a GPU / TPU; without one, it creates .venv-accel with the
# `ACCEL` extra (cuda12, cuda13 or tpu). Results under ACCEL_OUT (one JSON per benchmark,
# the device named in each) and a printed table.
ACCEL ?= cuda12
ACCEL_VENV := .venv-accel
ACCEL_OUT ?= benchmarks/results/run_accel
SEES_ACCEL := -c 'import flax, optax, ml_collections, jax, sys; sys.exit(jax.default_backend() == "cpu")'
bench-accel:
	@py="$(ACCEL_PY)"; for p in $(if $(ACCEL_PY),,$(ACCEL_VENV)/bin/python $(PY) python3); do \
	    if [ -x "$$(command -v $$p)" ] && $$p $(SEES_ACCEL) 2>/dev/null; then py=$$p; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	    echo "== installing jax[$(ACCEL)] into $(ACCEL_VENV)"; \
	    test -x $(ACCEL_VENV)/bin/python || $(PYTHON) -m venv $(ACCEL_VENV) || exit 1; \
	    $(ACCEL_VENV)/bin/python -m pip install -q --upgrade pip && \
	    $(ACCEL_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[$(ACCEL)]' || exit 1; \
	    py=$(ACCEL_VENV)/bin/python; \
	fi; \
	echo "== $$py: $$($$py -c 'import jax; print(jax.devices()[0].device_kind)')"; \
	$$py benchmarks/run_all.py --accel --out $(ACCEL_OUT)

clean:
	rm -rf $(VENV) $(ACCEL_VENV) workdirs
