# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -> creates .venv, installs roofplan, runs the flagship what-if
#   make test   -> installs the test extras (and torch's CPU build when it is on local disk), checks the
#                  import layering (lint-imports, contracts in pyproject.toml), runs pytest (on every
#                  core with pytest-xdist)
# On a machine with a GPU (and a CUDA build of torch==2.13.0 in .venv):
#   make gpu-check -> roofplan selfcheck --device cuda --quick: microbench, calibrate, run, validate,
#                  report in $(GPU_CHECK_OUT)/ (under 8 minutes on one GPU)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

GPU_CHECK_OUT ?= selfcheck-cuda

.PHONY: demo test install bench clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,dist]'
	@# torch only from local disk (--no-index): never pull a multi-GB CUDA build from an index.
	@# Without it the executor tests skip; everything else runs.
	$(BIN)/python -m pip install -q filelock "typing-extensions>=4.10" "setuptools>=77.0.3" "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5"
	-$(BIN)/python -m pip install -q --no-index $(TORCH) || echo "note: $(TORCH) CPU wheel not on local disk; executor tests will be skipped"
	@# pytest-xdist spreads the tests over the cores (2 on CI: about half the time); without it they run on one
	-$(BIN)/python -m pip install -q pytest-xdist || echo "note: pytest-xdist not installable; the tests run on one core"
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/roofplan whatif --model llama-3.1-70b --hardware h100-sxm,a100-sxm-80gb \
	    --gpus 1,2,4,8 --phase decode --batch 16 --context 2048 --format table

test: $(VENV)/.installed-test
	$(BIN)/lint-imports
	MPLBACKEND=Agg $(BIN)/python -m pytest $$($(BIN)/python -c "import xdist" 2>/dev/null && echo --numprocesses=auto)

gpu-check: $(VENV)/.installed
	@# never installs torch: a CUDA build is the machine's to provide
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch ' + torch.__version__ + ' sees no CUDA device; install a CUDA build of torch==2.13.0 into $(VENV) on a GPU machine')"
	$(BIN)/roofplan selfcheck --device cuda --quick --out $(GPU_CHECK_OUT) --format table

bench: $(VENV)/.installed-test
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
