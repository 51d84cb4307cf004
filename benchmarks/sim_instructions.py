"""Instructions per engine event under valgrind (callgrind): a deterministic figure where wall time is noisy.

Runs ``benchmarks/sim_overhead.py`` at ``--clients`` with two update counts under ``valgrind --tool=callgrind`` and
divides the difference in instructions by the difference in updates, which removes start-up (imports, set-up).
``--old DIR`` also measures another checkout (e.g. a ``git worktree`` of an older commit) the same way.

    .venv/bin/python benchmarks/sim_instructions.py --strategy fedasync,fedbuff,fedcompass --old /path/to/old
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from machine import save

ROOT = Path(__file__).resolve().parent.parent


def instructions(root: Path, strategy: str, clients: int, updates: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
               str(root / "benchmarks" / "sim_overhead.py"), "--clients", str(clients), "--strategy", strategy,
               "--repeat", "1", "--updates", str(updates), "--out", str(Path(tmp) / "x.json")]
        subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m = re.search(r"^totals:\s+(\d+)", out.read_text(), re.M) or re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
        if m is None:
            raise RuntimeError(f"no instruction total in {out}")
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="fedasync,fedbuff,fedcompass")
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--updates", default="10000,30000", help="two update counts (their difference is measured)")
    ap.add_argument("--old", type=Path, help="another checkout to measure the same way")
    ap.add_argument("--out", default="benchmarks/results/sim_instructions.json")
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.updates.split(","))
    console = Console()
    roots = [("this", ROOT)] + ([("old", args.old.resolve())] if args.old else [])
    rows = []
    for strategy in args.strategy.split(","):
        for label, root in roots:
            a, b = instructions(root, strategy, args.clients, lo), instructions(root, strategy, args.clients, hi)
            rows.append({"strategy": strategy, "code": label, "root": str(root), "clients": args.clients,
                         "instructions_per_event": (b - a) / (hi - lo)})
            console.print(f"{strategy} {label}: {rows[-1]['instructions_per_event']:,.0f} instructions per event")
    table = Table("strategy", "code", "instructions / event")
    for r in rows:
        table.add_row(r["strategy"], r["code"], f"{r['instructions_per_event']:,.0f}")
    console.print(table)
    save(console, args.out, rows)


if __name__ == "__main__":
    main()
