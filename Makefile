# Two commands on a fresh machine: `make demo` (the local demo cluster) and `make test`.
# Both create and reuse .venv. torch is installed first from its CPU wheel so that pip
# never resolves a multi-gigabyte CUDA build; users with GPUs install their own torch first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

venv: $(STAMP)

# Until the local Flower cluster (fedhive up) lands, the demo is one virtual-time run on the hetero fleet.
demo: $(STAMP)
	$(VENV)/bin/fedhive sim --strategy fedbuff --fleet hetero --budget 300 --target 0.85 --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
