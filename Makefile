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

# The demo: a real local Flower cluster (SuperLink + 6 emulated devices), FedCompass on mnist1d, ~5 minutes.
demo: $(STAMP)
	$(VENV)/bin/fedhive up

# The dashboard test scrapes a real Prometheus: Debian's package, installed here when missing.
test: $(STAMP)
	command -v prometheus >/dev/null 2>&1 || apt-get install -y -q prometheus >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; }
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
