# fedhive on a Ray cluster, GPU workers (deploy/ray/kuberay.yaml's gpu group):
#   docker build -f docker/ray-cuda.Dockerfile -t fedhive/ray:0.1.0-gpu .
# Ray's CUDA image; torch comes from PyPI, whose Linux x86_64 wheels are CUDA builds.
FROM rayproject/ray:2.55.1-py311-gpu

ARG TORCH=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    RAY_USAGE_STATS_ENABLED=0
RUN pip install "${TORCH}"
COPY --chown=ray:users pyproject.toml README.md /tmp/fedhive-src/
COPY --chown=ray:users fedhive /tmp/fedhive-src/fedhive
RUN pip install "/tmp/fedhive-src[ray]" && rm -rf /tmp/fedhive-src
USER ray
# KubeRay probes the Ray containers itself (its readiness and liveness probes ask the raylet and the GCS).
HEALTHCHECK NONE
