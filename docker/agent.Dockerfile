# fedhive agent image for linux/amd64 and linux/arm64 (Raspberry Pi OS 64-bit class boards):
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/agent.Dockerfile -t fedhive/agent:0.1.0 .
#   docker/build-images.sh     # with podman or docker, offline-capable (make images)
# The agent runs Flower's SuperNode and keeps the warm training worker; devices never need Ray. PyTorch's CPU index
# has both x86_64 and aarch64 wheels (PyPI's aarch64 torch 2.13.0 is a CUDA build: keep the CPU index on arm64).
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

# torch's CPU build first, so pip never pulls a CUDA build: from PyTorch's CPU index, or (TORCH_PIP="") from a local
# wheel in docker/wheels/ that docker/build-images.sh put there, with torch's own dependencies from PyPI.
ARG TORCH=torch==2.13.0
ARG TORCH_PIP="--index-url https://download.pytorch.org/whl/cpu"
# A CA bundle for pip behind a TLS-intercepting proxy (build-images.sh passes the host's PIP_CERT); unset otherwise.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/fedhive \
    PATH=/opt/fedhive/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# A venv rather than the system Python: the same steps work on python:3.11-slim and on a plain Debian python3 base.
RUN python3 -m venv /opt/fedhive
RUN --mount=type=bind,source=docker/wheels,target=/wheels pip install --find-links /wheels ${TORCH_PIP} "${TORCH}"
COPY pyproject.toml README.md /src/
COPY fedhive /src/fedhive
RUN pip install /src && rm -rf /src && useradd --create-home --uid 10001 fedhive

RUN mkdir -p /data /home/fedhive/state && chown fedhive /data /home/fedhive/state
USER fedhive
WORKDIR /home/fedhive
VOLUME ["/data"]
# Healthy once the warm worker listens (the agent starts it before the SuperNode).
HEALTHCHECK --interval=10s --timeout=3s --retries=12 CMD test -S /home/fedhive/state/worker.sock
ENTRYPOINT ["fedhive", "agent", "--state-dir", "/home/fedhive/state", "--data-dir", "/data"]
