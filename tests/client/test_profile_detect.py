"""Device profiling on fake /proc and /sys trees, and the device class chosen from it."""

from pathlib import Path

import pytest

from fedhive.client.profile import DeviceProfile, classify, detect


def fake_root(tmp_path: Path, board: str | None, mem_kb: int, quota: tuple[int, int] | None) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree: 1 kB\n")
    if board is not None:
        (tmp_path / "proc/device-tree").mkdir()
        (tmp_path / "proc/device-tree/model").write_bytes(board.encode() + b"\x00")
    (tmp_path / "proc/self/cgroup").write_text("4:cpu,cpuacct:/fedhive/agent0\n1:name=systemd:/x\n")
    if quota is not None:
        d = tmp_path / "sys/fs/cgroup/cpu/fedhive/agent0"
        d.mkdir(parents=True)
        (d / "cpu.cfs_quota_us").write_text(f"{quota[0]}\n")
        (d / "cpu.cfs_period_us").write_text(f"{quota[1]}\n")
    return tmp_path


def test_pi4_with_a_quarter_core(tmp_path):
    p = detect(fake_root(tmp_path, "Raspberry Pi 4 Model B Rev 1.4", 3_884_000, (25_000, 100_000)), accelerator="none")
    assert p.board == "Raspberry Pi 4 Model B Rev 1.4" and p.memory_gb == pytest.approx(3.7, abs=0.01)
    assert p.cpu_quota == pytest.approx(0.25) and p.device_class == "rpi4"


def test_unlimited_quota_and_no_board(tmp_path):
    p = detect(fake_root(tmp_path, None, 16_000_000, (-1, 100_000)), accelerator="none")
    assert p.cpu_quota is None and p.board == "" and classify(p) == "cpu"


@pytest.mark.parametrize("arch, board, mem, acc, cls", [
    ("aarch64", "Raspberry Pi 5 Model B Rev 1.0", 8.0, "none", "rpi5"),
    ("aarch64", "Raspberry Pi Zero 2 W Rev 1.0", 0.4, "none", "rpi-zero2"),
    ("aarch64", "Radxa ROCK 4SE", 4.0, "none", "rpi4"),
    ("aarch64", "", 64.0, "none", "cpu"),  # an ARM server: no device tree
    ("x86_64", "", 32.0, "cuda:NVIDIA H100", "gpu"),
    ("arm64", "", 16.0, "mps", "gpu"),
])
def test_classes(arch, board, mem, acc, cls):
    assert classify(DeviceProfile(arch, 4, mem, acc, board, None)) == cls
