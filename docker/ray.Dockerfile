# fedhive on a Ray cluster, CPU nodes (the KubeRay head and CPU workers; deploy/ray/kuberay.yaml):
#   docker build -f docker/ray.Dockerfile -t fedhive/ray:0.1.0 .
# Ray's own image, so the Ray version is the one fedhive pins (pyproject.toml: ray==2.55.1).
FROM rayproject/ray:2.55.1-py311-cpu

ARG TORCH=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    RAY_USAGE_STATS_ENABLED=0
RUN pip install "${TORCH}" --index-url https://download.pytorch.org/whl/cpu
COPY --chown=ray:users pyproject.toml README.md /tmp/fedhive-src/
COPY --chown=ray:users fedhive /tmp/fedhive-src/fedhive
RUN pip install "/tmp/fedhive-src[ray]" && rm -rf /tmp/fedhive-src
USER ray
# KubeRay probes the Ray containers itself (its readiness and liveness probes ask the raylet and the GCS).
HEALTHCHECK NONE
