#!/usr/bin/env bash
# The arm64 agent image, built once through qemu (issue 18; BENCHMARK.md §5). Not run in CI: it takes minutes.
#
# Sets up qemu-user-static for aarch64 (binfmt_misc), then `docker/build-images.sh --arch arm64 --agent-only`: an arm64
# Debian base built here with debootstrap, and docker/agent.Dockerfile built for linux/arm64 (torch from PyTorch's
# CPU index by default; where that is unreachable, FEDHIVE_TORCH=torch==2.9.1 FEDHIVE_TORCH_PIP= takes PyPI's 2.9.1,
# a CPU build on aarch64; PyPI's 2.13.0 for aarch64 is a CUDA build of 5.5 GB that crashed on import under qemu). Prints the build time, the image size, and what the image reports when run
# (emulated): its machine, torch's version, and `fedhive agent --print-profile`.
#   sudo benchmarks/arm64_image.sh [--keep]     (--keep: leave the images; default removes what it built)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
KEEP=0; [ "${1:-}" = --keep ] && KEEP=1
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v qemu-aarch64-static >/dev/null && command -v podman >/dev/null && command -v debootstrap >/dev/null \
    || apt-get install -y -q qemu-user-static binfmt-support podman buildah runc debootstrap >/dev/null
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 is not registered in binfmt_misc" >&2; exit 1; }
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/docker/podman/containers.conf}"
export CONTAINERS_STORAGE_CONF="${CONTAINERS_STORAGE_CONF:-$REPO/docker/podman/storage.conf}"
IMAGE=fedhive/agent:0.1.0-arm64 BASE=localhost/fedhive-base:bookworm-arm64
had_base=0; podman image exists "$BASE" && had_base=1
t0=$(date +%s)
bash docker/build-images.sh --arch arm64 --agent-only
t1=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
arch=$(podman image inspect --format '{{.Architecture}}' "$IMAGE")
echo "arm64 agent image: built in $((t1 - t0)) s (base included: $([ $had_base = 1 ] && echo no || echo yes)), $(awk -v s="$size" 'BEGIN{printf "%.0f MB", s/1e6}') uncompressed, architecture $arch"
podman run --rm --platform linux/arm64 --entrypoint python "$IMAGE" -c \
    "import platform, time; t = time.time(); import torch, fedhive.client.worker; print('machine', platform.machine(), 'torch', torch.__version__, 'import', round(time.time() - t, 1), 's')"
podman run --rm --platform linux/arm64 "$IMAGE" --print-profile
echo "reproduce: sudo benchmarks/arm64_image.sh"
if [ "$KEEP" = 0 ]; then
  podman rmi -f "$IMAGE" >/dev/null
  [ $had_base = 1 ] || podman rmi -f "$BASE" >/dev/null
  podman image prune -f >/dev/null
fi
