"""Real Flower clusters on 127.0.0.1 for the deployment tests; every process is stopped by PID, also on failure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedhive.localcluster import LocalCluster


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def status(run_dir: Path) -> dict:
    try:
        return read_json(run_dir / "status.json")
    except (OSError, ValueError):
        return {}


def dump_logs(cluster: LocalCluster, lines: int = 30) -> str:
    out = []
    for p in sorted((cluster.run_dir / "logs").glob("*.log")):
        text = p.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"===== {p.name}\n" + "\n".join(text))
    return "\n".join(out)


@pytest.fixture(scope="module")
def cluster4(tmp_path_factory):
    """A SuperLink and four fedhive agents (no CPU quota: the tests check behaviour, not speed), secure as
    ``fedhive up``'s default: TLS for the SuperLink and the model store, and node authentication."""
    root = tmp_path_factory.mktemp("cluster4")
    cluster = LocalCluster(root, emulate="none", data_dir=root / "data", secure=True)
    try:
        cluster.start_superlink()
        for i, cls in enumerate(("gpu", "cpu", "cpu", "rpi4")):
            cluster.add_agent(cls, i, 4)
        yield cluster
    finally:
        cluster.close()
        left = wait_for_none(cluster)
        assert not left, f"processes left running: {left}"


def wait_for_none(cluster: LocalCluster, timeout: float = 10.0) -> list[int]:
    end = time.monotonic() + timeout
    while (left := cluster.leftovers()) and time.monotonic() < end:
        time.sleep(0.2)
    return left
