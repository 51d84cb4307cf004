"""Running a command in fresh network, PID and mount namespaces (root): the only interface is loopback, so servers
that listen on every interface (Ray's, Flower's simulation SuperLink) reach nothing else, and every process the
command starts dies with the namespace's first one, which is killed by its process group if the command overruns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


def can_isolate() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True).returncode == 0


def run_isolated(cmd: list[str], env: dict, timeout: float, *, setup: str = "ip link set lo up",
                 cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``cmd`` after the shell ``setup`` inside the namespaces; stdout and stderr together in ``stdout``."""
    wrapped = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c",
               setup + ' && exec "$0" "$@"', *cmd]
    proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=cwd, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # the namespace's processes all die with its first one
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(wrapped, proc.returncode, out, "")
