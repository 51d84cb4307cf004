"""What device this is: CPU architecture, cores, memory, accelerator, board model; and its device class."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEVICE_CLASSES = ("gpu", "cpu", "rpi5", "rpi4", "rpi-zero2")


@dataclass(frozen=True)
class DeviceProfile:
    arch: str
    cores: int
    memory_gb: float
    accelerator: str  # "cuda:<name>", "mps" or "none"
    board: str  # from /proc/device-tree/model, "" when absent
    cpu_quota: float | None  # cores allowed by the cgroup cpu controller, None: unlimited

    @property
    def device_class(self) -> str:
        return classify(self)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["device_class"] = self.device_class
        return d


def _board(root: Path) -> str:
    for p in (root / "proc/device-tree/model", root / "sys/firmware/devicetree/base/model"):
        try:
            return p.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
        except OSError:
            continue
    return ""


def _memory_gb(root: Path) -> float:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 2)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _cpu_quota(root: Path) -> float | None:
    """Cores this process may use under its cgroup's CPU limit (v2 ``cpu.max`` or v1 ``cfs_quota_us``)."""
    try:
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            path = path.lstrip("/")
            if controllers == "":  # cgroup v2
                f = root / "sys/fs/cgroup" / path / "cpu.max"
                if f.exists():
                    quota, period = f.read_text().split()
                    return None if quota == "max" else int(quota) / int(period)
            elif "cpu" in controllers.split(","):
                base = root / "sys/fs/cgroup/cpu" / path
                q = base / "cpu.cfs_quota_us"
                if q.exists():
                    quota = int(q.read_text())
                    period = int((base / "cpu.cfs_period_us").read_text())
                    return None if quota < 0 else quota / period
    except (OSError, ValueError):
        pass
    return None


def _accelerator() -> str:
    try:
        import torch
    except ImportError:
        return "none"
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "none"


def detect(root: str | Path = "/", accelerator: str | None = None) -> DeviceProfile:
    """Profile this machine (``root`` lets tests point at a fake /proc and /sys)."""
    root = Path(root)
    return DeviceProfile(arch=platform.machine() or "unknown", cores=os.cpu_count() or 1,
                         memory_gb=_memory_gb(root), accelerator=accelerator if accelerator is not None
                         else _accelerator(), board=_board(root), cpu_quota=_cpu_quota(root))


def classify(p: DeviceProfile) -> str:
    """The device class of a profile: a CUDA or MPS accelerator is ``gpu``; a Raspberry Pi board by its model;
    other ARM device-tree boards by memory (< 1 GB: ``rpi-zero2``, else ``rpi4``); anything else ``cpu``."""
    if p.accelerator.startswith("cuda") or p.accelerator == "mps":
        return "gpu"
    board = p.board.lower()
    if "raspberry pi 5" in board:
        return "rpi5"
    if "raspberry pi 4" in board or "raspberry pi compute module 4" in board:
        return "rpi4"
    if "zero 2" in board:
        return "rpi-zero2"
    if board and p.arch.lower() in ("aarch64", "armv7l", "armv6l"):
        # A device-tree ARM board that is not a Pi we know (Jetson without CUDA in torch, Rock, Odroid, ...).
        return "rpi-zero2" if p.memory_gb and p.memory_gb < 1.0 else "rpi4"
    return "cpu"  # x86 and ARM servers (no device tree), Macs without MPS
