"""A network namespace joined to this host by a veth pair, for partition faults (``tests/faults/``).

    with Netns() as ns:                      # root only; deleted (with its veth) on exit, also on failure
        cluster = LocalCluster(..., host=ns.host_ip)
        cluster.add_agent("rpi4", 0, 3, prefix=ns.exec_prefix)
        ns.throttle("1mbit")                  # a slow link (tbf)
        ns.cut()                              # the cable pulled: every packet dropped, no error to either side
        ns.heal()

This kernel has no ``netem`` qdisc (``tc qdisc add ... netem`` answers "Specified qdisc kind is unknown"), so
latency and random loss are not emulated here: a partition is the host side of the veth set down (the node sees
no carrier and its packets are dropped), a slow link is ``tbf``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Sequence


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


def available() -> str:
    """'' when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the ip and tc commands (iproute2) are missing"
    return ""


class Netns:
    """Namespace ``fh<pid>-<k>`` with ``10.<a>.<b>.2/30`` inside, ``.1`` on this host's side of the veth."""

    _count = 0

    def __init__(self) -> None:
        Netns._count += 1
        k = os.getpid() % 250 * 4 + Netns._count % 4
        self.name = f"fh{os.getpid()}-{Netns._count}"
        self.host_dev, self.ns_dev = f"fh{os.getpid() % 100000}h{Netns._count}", f"fh{os.getpid() % 100000}n{Netns._count}"
        base = f"10.{231 + (k // 250) % 20}.{k % 250}"
        self.host_ip, self.ns_ip = f"{base}.1", f"{base}.2"
        self.created = False

    @property
    def exec_prefix(self) -> Sequence[str]:
        return ["ip", "netns", "exec", self.name]

    def __enter__(self) -> "Netns":
        why = available()
        if why:
            raise RuntimeError(why)
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
            _ip("link", "set", self.ns_dev, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_dev)
            _ip("netns", "exec", self.name, "ip", "link", "set", self.ns_dev, "up")
            _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True, timeout=30)  # if still there
            self.created = False

    def cut(self) -> None:
        """Partition: this host's side of the veth down; whatever either side sends is dropped."""
        _ip("link", "set", self.host_dev, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_dev, "up")

    def throttle(self, rate: str | None) -> None:
        """The node's outgoing link limited to ``rate`` (``tc`` units, e.g. ``1mbit``); ``None`` lifts it."""
        cmd = [*self.exec_prefix, "tc", "qdisc"]
        subprocess.run(cmd + ["del", "dev", self.ns_dev, "root"], capture_output=True, timeout=30)
        if rate is not None:
            res = subprocess.run(cmd + ["add", "dev", self.ns_dev, "root", "tbf", "rate", rate, "burst", "32kbit",
                                        "latency", "400ms"], capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                raise RuntimeError(f"tc tbf failed: {res.stderr.strip()}")
