"""The ``fedhive`` command: ``fedhive strategies | sim | bench | up | agent``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

from fedhive import __version__


def _strategies(args: argparse.Namespace) -> int:
    from fedhive.strategies import STRATEGIES, parameters

    table = Table(title="fedhive strategies (keywords for --strategy-param / run config)")
    table.add_column("name")
    table.add_column("parameters (defaults)")
    for name, cls in STRATEGIES.items():
        table.add_row(name, ", ".join(f"{k}={v!r}" for k, v in parameters(name).items() if k not in ("non_trainable", "validation_fn")))
    Console().print(table)
    return 0


def _not_yet(what: str, issue: str):
    def run(args: argparse.Namespace) -> int:
        print(f"fedhive {what} is not available in this version yet ({issue}).", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedhive", description="Asynchronous federated learning on Flower for "
                                "fleets of unequal devices.")
    p.add_argument("--version", action="version", version=f"fedhive {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("strategies", help="list the strategies and their parameters")
    s.set_defaults(func=_strategies)
    for name, issue in (("sim", "virtual-time mode"), ("bench", "virtual-time benchmarks"),
                        ("up", "local Flower cluster"), ("agent", "device agent")):
        s = sub.add_parser(name, help=f"({issue}; not available yet)")
        s.set_defaults(func=_not_yet(name, issue))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
