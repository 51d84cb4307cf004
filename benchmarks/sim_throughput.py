"""Client updates per wall second of the virtual-time simulator, training for real (``fedhive sim`` / ``bench``).

The same run (the ``fedhive bench hetero`` fleet and task, one strategy, a short budget) three ways, side by side in
one invocation:

- ``per-job``: every client update trained on its own through ``LearningTask.train`` (the base class's
  ``train_batch`` loop): how the simulator trained before the batched engine;
- ``batched``: the batched engine (``fedhive.tasks.batched``), what every run uses: the in-flight clients' local
  steps as one stacked forward and backward pass per step;
- ``batched x2``: two batched runs at once, one per core, as ``fedhive bench hetero`` runs its strategies; the rate is
  both runs' updates over the wall time of the pair.

Each variant runs in a fresh process on one torch thread; ``--repeat`` interleaves the variants so that this VM's
drifts hit them alike. The wall time is the run's own (``run_sim``'s ``wall_seconds``: the event loop with training
and evaluation, without start-up).

    .venv/bin/python benchmarks/sim_throughput.py [--strategy fedasync] [--budget 160] [--repeat 2]
    .venv/bin/python benchmarks/sim_throughput.py --kernels     # where a batched step's time goes, on one core

``--kernels`` times one batched training step (forward and backward, mnist1d CNN, batch 32) for 1, 8 and 16 clients
and the step's batched matrix products alone, beside a 1024^3 float32 matrix product: how close the step is to this
core's matrix speed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from rich.console import Console
from rich.table import Table

from machine import save

VARIANTS = ("per-job", "batched", "batched x2")


def _run(strategy: str, budget: float, per_job: bool) -> dict:
    """One run in this (fresh) process; ``per_job`` trains every update alone through ``LearningTask.train``."""
    from fedhive.sim.bench import DEFAULTS
    from fedhive.sim.profiles import FleetSpec
    from fedhive.sim.runner import SimConfig, run_sim_one_thread
    from fedhive.tasks.base import LearningTask
    from fedhive.tasks.mnist1d import MNIST1D

    if per_job:
        MNIST1D.train_batch = LearningTask.train_batch  # type: ignore[method-assign]  # the loop over train()
    cfg = SimConfig(strategy=strategy, fleet=FleetSpec(dict(DEFAULTS["mix"]), jitter=0.3), budget=budget,
                    seed=DEFAULTS["seed"], task="mnist1d", task_params={"alpha": DEFAULTS["alpha"],
                                                                         "partition": "dirichlet"},
                    local_steps=DEFAULTS["local_steps"], eval_interval=max(budget / 600.0, 0.5))
    c0 = time.process_time()
    r = run_sim_one_thread(cfg)
    return {"updates": r["final"]["client_updates"], "wall_s": r["wall_seconds"], "cpu_s": time.process_time() - c0,
            "accuracy": r["final"]["accuracy"]}


def variant(name: str, strategy: str, budget: float) -> dict:
    ctx = mp.get_context("spawn")
    if name == "batched x2":
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            t0 = time.perf_counter()
            futs = [pool.submit(_run, strategy, budget, False) for _ in range(2)]
            runs = [f.result() for f in futs]
        # The pair's rate: both runs' updates over the longer run's loop time (start-up excluded, as for the others).
        wall = max(r["wall_s"] for r in runs)
        return {"variant": name, "updates": sum(r["updates"] for r in runs), "wall_s": wall,
                "outer_wall_s": time.perf_counter() - t0, "accuracy": runs[0]["accuracy"],
                "updates_per_s": sum(r["updates"] for r in runs) / wall,
                "ms_per_update_per_core": 1000.0 * 2 * wall / sum(r["updates"] for r in runs)}
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        r = pool.submit(_run, strategy, budget, name == "per-job").result()
    return {"variant": name, **r, "updates_per_s": r["updates"] / r["wall_s"],
            "ms_per_update_per_core": 1000.0 * r["wall_s"] / r["updates"]}


def kernels(console: Console) -> list[dict]:
    """One batched step's time and its matrix products' share, on one torch thread."""
    import torch
    import torch.nn.functional as F

    from fedhive.tasks.mnist1d import MNIST1D, _BatchedConvBase

    torch.set_num_threads(1)

    def per_call(fn, n: int) -> float:
        for _ in range(max(5, n // 10)):
            fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gflops = 2 * 1024**3 / per_call(lambda: a @ b, 10) / 1e9
    task = MNIST1D(num_clients=50)
    reference = task._build_seeded(0)
    model = _BatchedConvBase(reference)
    state = list(reference.state_dict().values())
    rows = []
    for clients in (1, 8, 16):
        batch = 32
        leaves = [v.detach().reshape(shape).unsqueeze(0).repeat(clients, 1, 1).requires_grad_(True)
                  for v, shape in zip(state, model.shapes)]
        x = model.inputs(torch.randn(clients * batch, 40))
        y = torch.randint(0, 10, (clients, batch))
        w = torch.full((clients, batch), 1.0 / batch)

        def step():
            loss = F.cross_entropy(model.forward(leaves, x, clients, batch), y, reduction="none")
            return torch.autograd.grad(loss, leaves, w)

        t_step = per_call(step, 300)
        # The step's matrix products alone (forward, weight and input gradients), on tensors of the same shapes.
        products = []
        for (pad, out_len, index), (o, k) in zip(model.layers, (model.shapes[0], model.shapes[2], model.shapes[4])):
            n = out_len * batch
            W, cols, grad = torch.randn(clients, o, k), torch.randn(clients, k, n), torch.randn(clients, o, n)
            products += [lambda W=W, c=cols: torch.bmm(W, c), lambda g=grad, c=cols: torch.bmm(g, c.transpose(1, 2))]
            if k != model.kernel1:
                products.append(lambda W=W, g=grad: torch.bmm(W.transpose(1, 2), g))
        o, k = model.shapes[6]
        W, h, g = torch.randn(clients, o, k), torch.randn(clients, k, batch), torch.randn(clients, o, batch)
        products += [lambda: torch.bmm(W, h), lambda: torch.bmm(g, h.transpose(1, 2)),
                     lambda: torch.bmm(W.transpose(1, 2), g)]
        t_mm = sum(per_call(f, 300) for f in products)
        rows.append({"clients": clients, "step_ms": 1e3 * t_step, "matrix_products_ms": 1e3 * t_mm,
                     "us_per_client_step": 1e6 * t_step / clients, "sgemm_1024_gflops": gflops})
        console.print(f"{clients:2d} clients: step {1e3 * t_step:.3f} ms ({1e6 * t_step / clients:.0f} us per client), "
                      f"of it matrix products {1e3 * t_mm:.3f} ms ({t_mm / t_step:.0%}); "
                      f"1024^3 sgemm {gflops:.0f} GFLOP/s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="fedasync", help="comma-separated strategies")
    ap.add_argument("--budget", type=float, default=160.0, help="virtual seconds per run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/sim_throughput.json")
    ap.add_argument("--kernels", action="store_true", help="time one batched step and its matrix products instead")
    args = ap.parse_args()
    if args.kernels:
        console = Console()
        save(console, args.out.replace(".json", "_kernels.json"), kernels(console))
        return
    if not args.budget > 0 or args.repeat < 1:
        ap.error("--budget must be > 0 and --repeat >= 1")
    console = Console()
    rows: list[dict] = []
    for strategy in args.strategy.split(","):
        for rep in range(args.repeat):
            for name in VARIANTS:
                row = {"strategy": strategy, "repeat": rep, **variant(name, strategy, args.budget)}
                rows.append(row)
                console.print(f"{strategy} {name} #{rep + 1}: {row['updates']:,} updates in {row['wall_s']:.1f} s, "
                              f"{row['updates_per_s']:.0f} updates/s, accuracy {row['accuracy']:.3f}")
    t = Table(title=f"simulator throughput: hetero fleet, mnist1d, {args.budget:.0f} virtual s per run, "
                    f"median of {args.repeat}")
    for col in ("strategy", "variant", "updates per wall s", "ms per update per core", "vs per-job", "accuracy"):
        t.add_column(col, justify="left" if col in ("strategy", "variant") else "right")
    for strategy in args.strategy.split(","):
        med = {n: statistics.median(r["updates_per_s"] for r in rows if r["strategy"] == strategy
                                    and r["variant"] == n) for n in VARIANTS}
        for n in VARIANTS:
            mine = [r for r in rows if r["strategy"] == strategy and r["variant"] == n]
            t.add_row(strategy, n, f"{med[n]:.0f}",
                      f"{statistics.median(r['ms_per_update_per_core'] for r in mine):.2f}",
                      f"{med[n] / med['per-job']:.2f}×", f"{mine[0]['accuracy']:.3f}")
    console.print(t)
    save(console, args.out, rows)


if __name__ == "__main__":
    main()
