# The two commands of the README: `make demo` and `make test`. Both build .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint ui bench

venv: $(STAMP)

# torch first: `pip install torch==2.13.0` takes the CPU wheel (an unpinned torch pulls a CUDA build).
# lpips without its deps: it would pull torchvision, whose PyPI wheel does not load beside this torch;
# we only use its LPIPS head weights (minority_core/lpips_distance.py).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,text]'
	$(PY) -m pip install -q --no-deps lpips==0.1.4
	touch $(STAMP)

demo: venv
	$(VENV)/bin/minority-synth demo

lint: venv
	$(VENV)/bin/ruff check .

test: venv
	$(VENV)/bin/pytest -q --durations=30

ui: venv
	$(VENV)/bin/minority-synth server

bench: venv
	$(PY) benchmarks/sampling_cost.py
