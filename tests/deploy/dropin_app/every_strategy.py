"""A ServerApp for tests/deploy/test_flower_dropin.py: the example's quickstart ServerApp, run once per strategy in
one Flower run (Flower's FedAvg first, then each fedhive class in its place), with federated evaluation on
``fraction-evaluate`` of the nodes, each result summarised into the JSON file the run config's ``out`` names. Copied into the example app's package by the test."""

import json
import time

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

import fedhive.flower as F
from quickstart.task import Net, central_evaluate

app = ServerApp()

STRATEGIES = {
    "flwr.FedAvg": lambda **kw: FlowerFedAvg(**kw),
    "FedAvg": lambda **kw: F.FedAvg(**kw),
    "FedAsync": lambda **kw: F.FedAsync(**kw),
    "FedBuff": lambda **kw: F.FedBuff(buffer_size=2, **kw),
    "FedFix": lambda **kw: F.FedFix(interval=4.0, **kw),
    "FedCompass": lambda **kw: F.FedCompass(**kw),
    "FedASMU": lambda **kw: F.FedASMU(**kw),
}


def summary(result, seconds: float) -> dict:
    ev = {int(k): dict(v) for k, v in result.evaluate_metrics_serverapp.items()}
    return {"arrays": {k: list(a.shape) for k, a in result.arrays.items()},
            "train_rounds": sorted(int(k) for k in result.train_metrics_clientapp),
            "train_keys": sorted({k for m in result.train_metrics_clientapp.values() for k in m}),
            "evaluate_rounds": sorted(int(k) for k in result.evaluate_metrics_clientapp),
            "evaluate_keys": sorted({k for m in result.evaluate_metrics_clientapp.values() for k in m}),
            "evaluations": ev, "seconds": seconds}


@app.main()
def main(grid: Grid, context: Context) -> None:
    out = {}
    for name in str(context.run_config["strategies"]).split(","):
        strategy = STRATEGIES[name](min_available_nodes=3,
                                    fraction_evaluate=float(context.run_config["fraction-evaluate"]))
        t0 = time.monotonic()
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                                num_rounds=int(context.run_config["num-server-rounds"]), timeout=120,
                                train_config=ConfigRecord({"lr": float(context.run_config["lr"])}),
                                evaluate_fn=central_evaluate)
        out[name] = summary(result, time.monotonic() - t0)
        out[name]["counters"] = dict(getattr(strategy, "counters", {}))
        with open(str(context.run_config["out"]), "w") as f:
            json.dump(out, f)
