"""What machine a benchmark ran on, for the tables and JSON it writes."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def describe() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.machine()}"}


def save(console, out: str | Path, rows: list[dict]) -> None:
    """Print the machine and the command, and write ``{"machine", "command", "rows"}`` as JSON to ``out``."""
    m = describe()
    command = " ".join([".venv/bin/python", *sys.argv])
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; command: {command}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": m, "command": command, "rows": rows}, indent=2))
    console.print(f"wrote {path}")
