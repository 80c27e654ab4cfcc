# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   # tiny models on embedded clips, ending with a video whose sound avjax generated
#   make test   # the whole test suite (8 fake CPU devices)
#   make notebook; make app   # notebooks/quickstart executed, then the web app on its runs
# and one on a machine with a GPU (or TPU: ACCEL=tpu):
#   make bench-accel   # installs jax for it, runs every benchmark (< 8 min), prints a table
#   make accel-wheels  # here, for an accelerator machine with no network: wheels into .whl/
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := workdirs/demo
QUICKSTART := workdirs/quickstart
PORT ?= 7860

.PHONY: demo test test-fast lint format venv clean bench bench-accel accel-wheels notebook app browser

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# uv installs the same pinned set as pip, byte-compiled as pip does (where
	# PYTHONDONTWRITEBYTECODE is set, every process would compile every import): ~19 s
	# against ~49 s in a fresh venv. pip is the fallback where uv cannot be had.
	( $(PY) -m pip install -q -c constraints.txt uv && \
	  $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -c constraints.txt -e '.[test]' ) || \
	  $(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Every stage prints its command first (launch/demo.py); the last lines name the files to open.
demo: $(STAMP)
	$(PY) launch/demo.py --workdir $(DEMO)

# notebooks/quickstart.py run top to bottom (tiny runs in $(QUICKSTART)/, a few minutes on
# CPU), saved with its outputs (pictures, audio and video players) as $(QUICKSTART)/quickstart.ipynb.
notebook: $(STAMP)
	mkdir -p $(QUICKSTART)
	$(VENV)/bin/jupytext --to ipynb -q -o $(QUICKSTART)/quickstart.ipynb notebooks/quickstart.py
	AVJAX_QUICKSTART_RUNS=$(abspath $(QUICKSTART)) $(VENV)/bin/jupyter-execute --inplace \
	    --timeout=1800 $(QUICKSTART)/quickstart.ipynb
	@echo "executed notebook: $(QUICKSTART)/quickstart.ipynb (files in $(QUICKSTART)/outputs)"

# The web app (launch/app.py) on the quickstart's runs: http://127.0.0.1:$(PORT)/
app: $(STAMP)
	test -f $(QUICKSTART)/transformer/config.json || $(MAKE) notebook
	$(PY) launch/app.py --workdir $(QUICKSTART)/transformer \
	    --s2s_workdir $(QUICKSTART)/sound2sight --port $(PORT)

# Headless Chromium (Debian's package) for the browser test; needs root or sudo.
browser:
	bash scripts/install_chromium.sh

# compileall: the suite starts ~200 Python processes; where PYTHONDONTWRITEBYTECODE is set,
# each would compile avjax's sources again.
test: $(STAMP)
	$(PY) -m compileall -q avjax launch data_pipelines configs tests > /dev/null
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

# The accelerator set in one command from a fresh copy of the tree (scripts/bench_accel.sh:
# the first interpreter whose JAX sees a GPU / TPU, with .whl/'s wheels where the machine
# has no network, else a new .venv-accel with the ACCEL extra: cuda12, cuda13 or tpu).
# Results under ACCEL_OUT (one JSON per benchmark, the device named in each) and a table.
ACCEL ?= cuda12
ACCEL_OUT ?= benchmarks/results/run_accel
bench-accel:
	ACCEL=$(ACCEL) ACCEL_OUT=$(ACCEL_OUT) bash scripts/bench_accel.sh

# Wheels for an accelerator machine with no network, fetched here (pip needs an index): the
# packages the benchmarks import that a JAX GPU / TPU image may lack, at the versions of
# constraints.txt, for that machine's Python (ACCEL_PYVER). Copy .whl/ with the tree.
ACCEL_PYVER ?= 3.12
ACCEL_WHEEL_PKGS := flax optax ml_collections librosa audioread decorator pooch platformdirs \
    soxr soundfile cffi pycparser
accel-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
	    --python-version $(ACCEL_PYVER) $(foreach n,17 27 28,--platform manylinux_2_$(n)_x86_64) \
	    --platform manylinux2014_x86_64 -c constraints.txt -d .whl $(ACCEL_WHEEL_PKGS)

clean:
	rm -rf $(VENV) .venv-accel .accel-site workdirs
