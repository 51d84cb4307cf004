# fedhive agent image for linux/amd64 and linux/arm64 (Raspberry Pi OS 64-bit class boards):
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/agent.Dockerfile -t fedhive/agent:0.1.0 .
# The agent runs Flower's SuperNode and keeps the warm training worker; devices never need Ray.
FROM python:3.11.11-slim-bookworm

ARG TORCH=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

# The CPU wheel index has both x86_64 and aarch64 wheels.
RUN pip install "${TORCH}" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md /src/
COPY fedhive /src/fedhive
RUN pip install /src && rm -rf /src

RUN useradd --create-home --uid 10001 fedhive && mkdir -p /data /home/fedhive/state \
    && chown fedhive /data /home/fedhive/state
USER fedhive
WORKDIR /home/fedhive
VOLUME ["/data"]
# Healthy once the warm worker listens (the agent starts it before the SuperNode).
HEALTHCHECK --interval=10s --timeout=3s --retries=12 CMD test -S /home/fedhive/state/worker.sock
ENTRYPOINT ["fedhive", "agent", "--state-dir", "/home/fedhive/state", "--data-dir", "/data"]
