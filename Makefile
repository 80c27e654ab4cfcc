# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   # tiny models on embedded clips, ending with a video whose sound avjax generated
#   make test   # the whole test suite (8 fake CPU devices)
#   make notebook; make app   # notebooks/quickstart executed, then the web app on its runs
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := workdirs/demo
QUICKSTART := workdirs/quickstart
PORT ?= 7860

.PHONY: demo test test-fast lint format venv clean bench notebook app browser

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
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

bench: $(STAMP)
	$(PY) benchmarks/specvqgan_codebook.py --out benchmarks/results
	$(PY) benchmarks/specvqgan_sampling.py --out benchmarks/results
	$(PY) benchmarks/melgan_vocoder.py --out benchmarks/results
	$(PY) benchmarks/sound2sight.py --out benchmarks/results

clean:
	rm -rf $(VENV) workdirs
