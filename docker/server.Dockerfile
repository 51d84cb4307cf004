# fedhive server image: Flower's SuperLink with fedhive installed, so the ServerApp process it starts for each run
# (subprocess isolation) runs fedhive's orchestrator. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t fedhive/server:0.1.0 .
FROM python:3.11.11-slim-bookworm

ARG TORCH=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_HOME=/home/fedhive/.flwr

# torch's CPU wheel first, so pip never pulls a CUDA build.
RUN pip install "${TORCH}" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md /src/
COPY fedhive /src/fedhive
RUN pip install /src && cp -r /src/fedhive/flower_app /app && rm -rf /src

RUN useradd --create-home --uid 10001 fedhive && mkdir -p /state && chown fedhive /state
USER fedhive
WORKDIR /home/fedhive
VOLUME ["/state"]
# 8000: the SuperLink's one port (Fleet, control and runtime APIs); 9400: fedhive's metrics (run config).
EXPOSE 8000 9400
# /health over TLS when the SuperLink has its certificate mounted (compose's default), else plain HTTP.
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
    CMD python -c "import os, ssl, urllib.request as u; tls = os.path.exists('/certs/ca.crt'); u.urlopen(('https' if tls else 'http') + '://localhost:8000/health', timeout=2, context=ssl.create_default_context(cafile='/certs/ca.crt') if tls else None)"
ENTRYPOINT ["flower-superlink"]
# Compose passes TLS and node authentication; this default (no certificates in the image) is plain text.
CMD ["--insecure", "--host", "0.0.0.0", "--port", "8000", "--database", "/state/state.db"]
