# fedhive server image: Flower's SuperLink with fedhive installed, so the ServerApp process it starts for each run
# (subprocess isolation) runs fedhive's orchestrator; the same image runs the register and submit steps.
#   docker build -f docker/server.Dockerfile -t fedhive/server:0.1.0 .
#   docker/build-images.sh     # the same, offline-capable, with podman or docker (make images)
# BASE: any Debian-like image with python3 (3.11, and its venv module): the official python image by default.
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

COPY fedhive/flower_app /app/flower_app
RUN mkdir -p /state && chown fedhive /state
USER fedhive
WORKDIR /home/fedhive
ENV FLWR_HOME=/home/fedhive/.flwr
VOLUME ["/state"]
# 8000: the SuperLink's one port (Fleet, control and runtime APIs); 9400: fedhive's metrics (run config).
EXPOSE 8000 9400
# /health over TLS when the SuperLink has its certificate mounted (compose's default), else plain HTTP.
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
    CMD python -c "import os, ssl, urllib.request as u; tls = os.path.exists('/certs/ca.crt'); u.urlopen(('https' if tls else 'http') + '://localhost:8000/health', timeout=2, context=ssl.create_default_context(cafile='/certs/ca.crt') if tls else None)"
ENTRYPOINT ["flower-superlink"]
# Compose passes TLS and node authentication; this default (no certificates in the image) is plain text.
CMD ["--insecure", "--host", "0.0.0.0", "--port", "8000", "--database", "/state/state.db"]
