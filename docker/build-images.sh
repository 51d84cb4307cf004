#!/usr/bin/env bash
# Builds fedhive's images, offline-capable (make images):
#   fedhive/server:TAG   docker/server.Dockerfile (SuperLink + fedhive's server app; also the register/submit steps)
#   fedhive/agent:TAG    docker/agent.Dockerfile  (the device agent)
# and, with --prometheus, a stand-in Prometheus from Debian's package (fedhive-standin/prometheus:debian) for
# machines that cannot pull prom/prometheus (tests/containers/ uses it).
#
#   docker/build-images.sh [--base debian|official] [--arch amd64|arm64] [--tag 0.1.0] [--prometheus] [--agent-only]
#
# --base debian (default): a stand-in base image built here from Debian's packages (debootstrap bookworm minbase with
#   python3 and its venv module, then `import`), for machines that reach Debian's and PyPI's package servers but no
#   image registry. Needs root and debootstrap (apt-get install debootstrap). Built once, then reused.
# --base official: python:3.11.11-slim-bookworm from Docker Hub (what `docker compose up --build` uses).
# --arch arm64: builds the agent for linux/arm64 through qemu-user-static (binfmt_misc must be mounted and
#   qemu-user-static + binfmt-support installed); tags fedhive/agent:TAG-arm64.
# torch: a local CPU wheel of torch==2.13.0 for the target (found by `pip download`, e.g. from a pip find-links
#   folder) is put in docker/wheels/ and installed from there; otherwise the Dockerfiles take it from PyTorch's CPU
#   index (x86_64 and aarch64). Not from PyPI on aarch64: PyPI's aarch64 torch 2.13.0 is a CUDA build (measured: 2.9
#   GB of nvidia-* wheels, a 5.5 GB image). FEDHIVE_TORCH / FEDHIVE_TORCH_PIP choose another torch and index.
# A CA bundle in PIP_CERT or SSL_CERT_FILE (a TLS-intercepting proxy) is mounted into the build steps (podman).
# Engine: podman when installed (with docker/podman/*.conf unless CONTAINERS_CONF / CONTAINERS_STORAGE_CONF are
#   set: runc, cgroupfs, overlay storage in /var/lib/fedhive-containers), else docker.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_KIND=debian ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64) TAG=0.1.0 PROMETHEUS=0 AGENT_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE_KIND=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --prometheus) PROMETHEUS=1; shift ;;
    --agent-only) AGENT_ONLY=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown option $1 (accepted: --base debian|official, --arch amd64|arm64, --tag T, --prometheus, --agent-only)" >&2; exit 2 ;;
  esac
done
case "$BASE_KIND" in debian|official) ;; *) echo "build-images.sh: --base must be debian or official, not $BASE_KIND" >&2; exit 2 ;; esac
case "$ARCH" in amd64|arm64) ;; *) echo "build-images.sh: --arch must be amd64 or arm64, not $ARCH" >&2; exit 2 ;; esac

if command -v podman >/dev/null; then
  ENGINE=podman
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/podman/containers.conf}"
  export CONTAINERS_STORAGE_CONF="${CONTAINERS_STORAGE_CONF:-$PWD/docker/podman/storage.conf}"
elif command -v docker >/dev/null; then
  ENGINE=docker
else
  echo "build-images.sh: needs podman (apt-get install podman buildah runc) or docker" >&2; exit 1
fi
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
SUFFIX=""; [ "$ARCH" = "$HOST_ARCH" ] || SUFFIX="-$ARCH"
PLATFORM=(--platform "linux/$ARCH")
t0=$(date +%s)

# The base image.
if [ "$BASE_KIND" = official ]; then
  BASE=python:3.11.11-slim-bookworm
else
  BASE="localhost/fedhive-base:bookworm-$ARCH"
  if ! $ENGINE image inspect "$BASE" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "build-images.sh: --base debian needs root for debootstrap (or use --base official)" >&2; exit 1; }
    command -v debootstrap >/dev/null || { echo "build-images.sh: apt-get install debootstrap (or use --base official)" >&2; exit 1; }
    tree=$(mktemp -d /var/tmp/fedhive-base.XXXXXX) && chmod 755 "$tree"  # the image root: mktemp makes it 700
    trap 'rm -rf "$tree"' EXIT
    echo "base: debootstrap bookworm ($ARCH) into $tree"
    debootstrap --variant=minbase --arch="$ARCH" --include=python3,python3-venv,ca-certificates \
      bookworm "$tree" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$tree.log" 2>&1 \
      || { tail -20 "$tree.log" >&2; echo "build-images.sh: debootstrap failed (log above)" >&2; exit 1; }
    rm -f "$tree.log"; rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    tar -C "$tree" -c . | $ENGINE import --arch "$ARCH" --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$tree"; trap - EXIT
    echo "base: $BASE imported ($(( $(date +%s) - t0 )) s)"
  fi
fi

# torch: a local CPU wheel when pip can find one for the target, else the Dockerfiles' index.
TORCH_ARGS=()
rm -f docker/wheels/torch-*.whl
trap 'rm -f docker/wheels/torch-*.whl' EXIT  # also when a build fails
py_platform=manylinux_2_28_x86_64; [ "$ARCH" = arm64 ] && py_platform=manylinux_2_28_aarch64
if python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform "$py_platform" \
     --dest docker/wheels "torch==2.13.0+cpu" >/dev/null 2>&1; then
  TORCH_ARGS=(--build-arg "TORCH=torch==2.13.0+cpu" --build-arg "TORCH_PIP=")
  echo "torch: local wheel $(ls docker/wheels/torch-*.whl | xargs -n1 basename)"
elif [ -n "${FEDHIVE_TORCH:-}" ]; then  # e.g. FEDHIVE_TORCH=torch==2.9.1 FEDHIVE_TORCH_PIP= (PyPI's aarch64 2.9.1 is a CPU build)
  TORCH_ARGS=(--build-arg "TORCH=$FEDHIVE_TORCH" --build-arg "TORCH_PIP=${FEDHIVE_TORCH_PIP-}")
  echo "torch: $FEDHIVE_TORCH ${FEDHIVE_TORCH_PIP:-from PyPI}"
else
  echo "torch: from https://download.pytorch.org/whl/cpu"
fi

# Behind a TLS-intercepting proxy pip needs the host's CA bundle (PIP_CERT, else SSL_CERT_FILE): podman mounts it
# into the RUN steps only, so it is in no layer.
CA_ARGS=()
ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
if [ -n "$ca" ] && [ -f "$ca" ] && [ "$ENGINE" = podman ]; then
  CA_ARGS=(--volume "$ca:/run/fedhive-build-ca.crt:ro" --build-arg PIP_CERT=/run/fedhive-build-ca.crt)
fi

# podman: docker format (OCI has no HEALTHCHECK); layers cached, so the server reuses the agent's torch and fedhive
# layers (their Dockerfiles share those steps). With vfs storage, where each layer is a full copy, set
# FEDHIVE_PODMAN_LAYERS=false: one commit per image is then faster.
ENGINE_ARGS=(); [ "$ENGINE" = podman ] && ENGINE_ARGS=(--format docker "--layers=${FEDHIVE_PODMAN_LAYERS:-true}")

build() {  # build DOCKERFILE IMAGE [extra args]
  local file=$1 image=$2; shift 2
  local s; s=$(date +%s)
  echo "build: $image from $file"
  $ENGINE build --quiet "${ENGINE_ARGS[@]}" "${PLATFORM[@]}" --build-arg "BASE=$BASE" "${TORCH_ARGS[@]}" "${CA_ARGS[@]}" "$@" -f "$file" -t "$image" . >/dev/null
  echo "build: $image done ($(( $(date +%s) - s )) s, $($ENGINE image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}
build docker/agent.Dockerfile "fedhive/agent:$TAG$SUFFIX"
[ "$AGENT_ONLY" = 1 ] || build docker/server.Dockerfile "fedhive/server:$TAG$SUFFIX"
if [ "$PROMETHEUS" = 1 ]; then
  s=$(date +%s)
  $ENGINE build --quiet "${ENGINE_ARGS[@]}" "${PLATFORM[@]}" --build-arg "BASE=$BASE" -f docker/prometheus-standin.Dockerfile \
    -t "fedhive-standin/prometheus:debian$SUFFIX" docker >/dev/null
  echo "build: fedhive-standin/prometheus:debian$SUFFIX done ($(( $(date +%s) - s )) s)"
fi
rm -f docker/wheels/torch-*.whl
echo "images built in $(( $(date +%s) - t0 )) s with $ENGINE"
