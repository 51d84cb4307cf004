"""BENCHMARK.md §2: fedhive's aggregation kernel against the memory limit and against Flower's.

Weighted sum of K client models (float32) for models of 1M, 25M and 100M parameters, split in tensors of at most
1M parameters. Reported side by side, in the same process, on the same inputs:

- fedhive: ``fedhive.strategies.weighted_sum.weighted_sum`` as the server app and the simulator run it (``--kernel
  torch``, the default: torch's fused ``out.add_(x, alpha=c)``, installed by ``fedhive.engine.kernels.install`` for
  tensors of ``FUSED_MIN`` elements or more), or numpy only (``--kernel numpy``: blocked, in place, no per-client
  temporaries; numpy has no fused multiply-add);
- copy: ``numpy.copyto`` of the same bytes (every client model copied once): the memory-bandwidth ceiling;
- flower: ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`` on ArrayRecords of the same arrays.

GB/s counts the client bytes read (K × model bytes) per second. Best of ``--repeat`` runs. Every contender runs
on one core (numpy's ufuncs are single-threaded; the torch kernel sets one thread, see
``fedhive.engine.kernels.torch_kernel``).

    .venv/bin/python benchmarks/aggregate.py [--sizes 1,25,100] [--clients 10] [--repeat 3] [--kernel torch]
        [--no-flower] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from rich.console import Console
from rich.table import Table

from fedhive.engine import kernels
from fedhive.strategies.weighted_sum import weighted_sum

from machine import save

TENSOR = 1_000_000


def model(rng: np.random.Generator, params: int) -> list[np.ndarray]:
    sizes = [TENSOR] * (params // TENSOR) + ([params % TENSOR] if params % TENSOR else [])
    return [rng.random(s, dtype=np.float32) for s in sizes]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(millions: int, k: int, repeat: int, with_flower: bool, kernel: str) -> dict:
    rng = np.random.default_rng(millions)
    clients = [model(rng, millions * 1_000_000) for _ in range(k)]
    weights = [float(w) for w in rng.random(k) + 0.5]
    weights = [w / sum(weights) for w in weights]
    nbytes = sum(a.nbytes for a in clients[0]) * k

    out = [np.empty_like(a) for a in clients[0]]
    t_ours = best(lambda: weighted_sum(list(zip(weights, clients)), out=out), repeat)  # one core, like the others

    dst = [np.empty_like(a) for a in clients[0]]

    def copy_all():
        for c in clients:
            for d, a in zip(dst, c):
                np.copyto(d, a)

    t_copy = best(copy_all, repeat)
    row = {"params_millions": millions, "clients": k, "bytes": nbytes, "kernel": kernel,
           "fedhive_s": t_ours, "copy_s": t_copy,
           "fedhive_gbps": nbytes / t_ours / 1e9, "copy_gbps": nbytes / t_copy / 1e9,
           "fedhive_updates_per_s": k / t_ours}
    if with_flower:
        records = [RecordDict({"arrays": ArrayRecord(c), "metrics": MetricRecord({"num-examples": int(w * 1e6)})})
                   for c, w in zip(clients, weights)]
        t_flower = best(lambda: aggregate_arrayrecords(records, "num-examples"), repeat)
        row.update(flower_s=t_flower, flower_gbps=nbytes / t_flower / 1e9, flower_updates_per_s=k / t_flower)
        # Same numbers, up to float rounding (Flower's weights come from the integer num-examples).
        ref = aggregate_arrayrecords(records[:2], "num-examples").to_numpy_ndarrays()
        n = [int(w * 1e6) for w in weights[:2]]
        mine = weighted_sum([(n[0] / sum(n), clients[0]), (n[1] / sum(n), clients[1])])
        row["max_abs_diff_vs_flower"] = float(max(np.abs(a - b).max() for a, b in zip(mine, ref)))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,25,100", help="model sizes in millions of parameters")
    ap.add_argument("--clients", type=int, default=10, help="K, client models per aggregation")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-flower", action="store_true", help="skip Flower's aggregate_arrayrecords")
    ap.add_argument("--kernel", choices=("numpy", "torch"), default="torch",
                    help="torch: as fedhive runs (the fused kernel installed); numpy: weighted_sum without it")
    ap.add_argument("--out", default="benchmarks/results/aggregate.json")
    args = ap.parse_args()
    console = Console()
    if args.kernel == "torch" and not kernels.install():
        raise SystemExit("--kernel torch needs torch installed")
    rows = []
    for m in (int(s) for s in args.sizes.split(",")):
        with console.status(f"{m}M parameters × {args.clients} clients"):
            rows.append(bench(m, args.clients, args.repeat, not args.no_flower, args.kernel))
    table = Table(title=f"Weighted sum of {args.clients} float32 models (best of {args.repeat}, {args.kernel} kernel)")
    for col in ("params", "fedhive GB/s", "copy GB/s", "fedhive / copy", "flower GB/s", "fedhive / flower",
                "fedhive updates/s"):
        table.add_column(col, justify="right")
    for r in rows:
        fl = r.get("flower_gbps")
        table.add_row(f"{r['params_millions']}M", f"{r['fedhive_gbps']:.2f}", f"{r['copy_gbps']:.2f}",
                      f"{r['fedhive_gbps'] / r['copy_gbps']:.0%}", f"{fl:.2f}" if fl else "-",
                      f"{r['fedhive_gbps'] / fl:.1f}×" if fl else "-", f"{r['fedhive_updates_per_s']:.0f}")
    console.print(table)
    save(console, args.out, rows)


if __name__ == "__main__":
    main()
