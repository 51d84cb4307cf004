#!/usr/bin/env bash
# Does the fedhive agent run on an ARM userland? (BENCHMARK.md §5; issue: agent on a Pi.)
#
# Builds a Debian bookworm arm64 tree with debootstrap, runs it through qemu-user-static (binfmt_misc), installs
# torch's aarch64 CPU wheel and fedhive in a venv inside it, then prints `fedhive agent --print-profile` and the time
# and peak memory of one mnist1d training task (20 steps, batch 32) under emulation. Emulated times are far slower
# than a real Pi; the point is that the aarch64 build works, and the memory figure is real.
#   sudo benchmarks/arm64_agent.sh [TREE]            (default TREE: /var/tmp/fedhive-arm64; reused when present)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TREE="${1:-/var/tmp/fedhive-arm64}"
TORCH="${TORCH:-torch==2.13.0}"
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null \
    || apt-get install -y -q debootstrap qemu-user-static binfmt-support >/dev/null
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
if [ ! -x "$TREE/usr/bin/python3" ]; then
    echo "debootstrap arm64 bookworm into $TREE ..."
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$TREE" \
        http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$TREE/etc/resolv.conf"
# The host's CA bundle (for TLS-intercepting proxies in front of PyPI) goes into the tree too.
cp /etc/ssl/certs/ca-certificates.crt "$TREE/etc/ssl/certs/host-ca-certificates.crt"
mkdir -p "$TREE/src"
mount --bind "$REPO" "$TREE/src"
mount -t proc proc "$TREE/proc"
mount -t sysfs sysfs "$TREE/sys"
trap 'umount "$TREE/sys" "$TREE/proc" "$TREE/src" 2>/dev/null || true' EXIT
chroot "$TREE" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /bin/bash -euo pipefail -c "
    uname -m
    [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
    /opt/venv/bin/pip install -q --upgrade pip
    # PyPI's aarch64 torch wheels are CPU builds (on x86_64 use the CPU index instead, as the Makefile does).
    /opt/venv/bin/python -c 'import torch' 2>/dev/null || /opt/venv/bin/pip install -q '$TORCH'
    rm -rf /tmp/fedhive-build && cp -r /src /tmp/fedhive-build && rm -rf /tmp/fedhive-build/.venv /tmp/fedhive-build/.git
    /opt/venv/bin/pip install -q /tmp/fedhive-build
    /opt/venv/bin/fedhive agent --print-profile
    FEDHIVE_CACHE=/tmp/cache /opt/venv/bin/python - <<'PY'
import platform, resource, time
t0 = time.perf_counter()
from fedhive.client.trainer import Trainer
from fedhive.server.settings import task_settings
import numpy as np
from fedhive.tasks import load_task
t_import = time.perf_counter() - t0
task = load_task('mnist1d', num_clients=10)
params = task.initial_params(0)
t1 = time.perf_counter()
tr = Trainer(device='cpu')
m, _ = tr.handle({'op': 'train', 'settings': task_settings({'task': 'mnist1d'}),
                  'node': {'partition-id': 0, 'num-partitions': 10}, 'config': {'local_steps': 20}, 'seed': 0}, params)
t_first = time.perf_counter() - t1
t2 = time.perf_counter()
m2, _ = tr.handle({'op': 'train', 'settings': task_settings({'task': 'mnist1d'}),
                   'node': {'partition-id': 0, 'num-partitions': 10}, 'config': {'local_steps': 20}, 'seed': 1}, params)
t_warm = time.perf_counter() - t2
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f'arch {platform.machine()}: import {t_import:.1f} s; first task (data + 20 steps) {t_first:.1f} s; '
      f'warm task (20 steps) {t_warm:.1f} s, loss {m2[\"loss\"]:.3f}; peak RSS {peak:.0f} MiB (under qemu emulation)')
PY
"
