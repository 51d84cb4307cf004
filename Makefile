# Two commands on a fresh machine: `make demo` (the local demo cluster) and `make test`.
# Both create and reuse .venv. torch is installed first from its CPU wheel so that pip
# never resolves a multi-gigabyte CUDA build; users with GPUs install their own torch first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean system-packages images

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

# System packages the tests run for real: Debian's prometheus (the dashboard test scrapes it), nginx (the fleet
# gateway test), and podman with its parts and debootstrap (tests/containers/ builds the images and brings the compose
# cluster up). Installed here when missing (as root, with apt); otherwise one line says what to run.
SYSTEM_PACKAGES := prometheus:prometheus nginx:nginx-light podman:podman buildah:buildah runc:runc \
	podman-compose:podman-compose debootstrap:debootstrap ssh-keygen:openssh-client

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (apt-get)"; \
			apt-get install -y -q $$missing >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1; } \
			|| { echo "make test: apt-get could not install$$missing; run: apt-get update && apt-get install$$missing"; exit 1; }; \
		else echo "make test: the tests need$$missing; run: sudo apt-get install$$missing (then make test again)"; exit 1; fi; \
	fi

# The images (fedhive/server, fedhive/agent), offline-capable: a Debian base built here with debootstrap, then podman
# (or docker) builds; see docker/build-images.sh for --base official and --arch arm64.
images:
	bash docker/build-images.sh

# Two pytest workers: most of the suite's time is real clusters waiting on Flower's polls, not CPU. Each test file
# runs whole on one worker (--dist loadfile: module-scoped fixtures such as the shared cluster are made once). Not
# loadgroup: pytest-xdist 3.8's xdist_group does nothing under pytest 9 (it sets a node id field pytest 9 no longer
# reads). The container tests run after, alone: their image build and six-agent compose cluster use both cores, and
# beside them the timing checks of other cluster tests failed (a frozen node's peers delivering 3 updates, not 4).
test: $(STAMP) system-packages
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20 --ignore=tests/containers
	$(PY) -m pytest -q --durations=5 tests/containers

clean:
	rm -rf $(VENV) build *.egg-info
