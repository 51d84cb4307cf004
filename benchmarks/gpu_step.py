"""Seconds per local step of the mnist1d CNN (batch 32) on a CUDA GPU beside this machine's CPU, as an agent trains.

What a GPU node's agent does per task (``LearningTask.train`` on ``cuda``), against one CPU thread (the simulator's
and the CPU agents' setting) and all the CPU's cores. The simulator's ``gpu`` class assumes 0.01 s per step
(BENCHMARK.md §1); this measures what a real card gives for this small model, where kernel launches, not FLOPs, set
the pace. Also: ``train_batch`` of 16 clients on each device, in client updates per second.

    python benchmarks/gpu_step.py [--steps 200] [--repeat 5] [--out benchmarks/results/gpu_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch

    from fedhive.tasks import load_task
    from fedhive.tasks.base import TrainJob
    from machine import describe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/gpu_step.json")
    args = ap.parse_args()
    devices = [("cpu, 1 thread", "cpu", 1), (f"cpu, {os.cpu_count()} threads", "cpu", os.cpu_count() or 1)]
    if torch.cuda.is_available():
        devices.append((f"cuda ({torch.cuda.get_device_name(0)})", "cuda", 1))
    else:
        print("torch sees no CUDA device here: CPU rows only")
    rows = []
    for label, dev, threads in devices:
        torch.set_num_threads(threads)
        task = load_task("mnist1d", num_clients=50, partition="dirichlet", alpha=0.5, seed=0, device=dev)
        params = task.initial_params(0)
        task.train(params, 0, {"local_steps": 20}, seed=0)  # warm-up: data on the device, kernels loaded
        per_step = []
        for r in range(args.repeat):
            t0 = time.perf_counter()
            task.train(params, r % 50, {"local_steps": args.steps}, seed=r)
            per_step.append((time.perf_counter() - t0) / args.steps)
        jobs = [TrainJob(params, c, {"local_steps": 20}, c) for c in range(16)]
        task.train_batch(jobs)
        t0 = time.perf_counter()
        task.train_batch(jobs)
        batch_s = time.perf_counter() - t0
        row = {"device": label, "threads": threads, "seconds_per_step_median": statistics.median(per_step),
               "seconds_per_step_runs": per_step, "train_batch_16x20_seconds": batch_s,
               "updates_per_second_train_batch": 16 / batch_s}
        rows.append(row)
        print(f"{label:40s} {row['seconds_per_step_median'] * 1e3:7.2f} ms per step (median of {args.repeat} x "
              f"{args.steps} steps); train_batch of 16 x 20 steps: {row['updates_per_second_train_batch']:.0f} "
              "updates/s")
    out = {"machine": describe(), "torch": torch.__version__,
           "command": " ".join(["python", *sys.argv]), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
