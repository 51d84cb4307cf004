# fedhive agent with CUDA (x86_64 GPU servers): torch comes from the pinned PyTorch CUDA runtime image.
#   docker build -f docker/agent-cuda.Dockerfile -t fedhive/agent-cuda:0.1.0 .
# Run with the NVIDIA container toolkit (--gpus all); the agent profiles the GPU and joins as device class "gpu".
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
COPY pyproject.toml README.md /src/
COPY fedhive /src/fedhive
# torch is already in the image and satisfies fedhive's "torch>=2.2", so pip keeps the CUDA build.
RUN pip install /src && rm -rf /src

RUN useradd --create-home --uid 10001 fedhive && mkdir -p /data /home/fedhive/state \
    && chown fedhive /data /home/fedhive/state
USER fedhive
WORKDIR /home/fedhive
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --retries=12 CMD test -S /home/fedhive/state/worker.sock
ENTRYPOINT ["fedhive", "agent", "--state-dir", "/home/fedhive/state", "--data-dir", "/data"]
