"""fedhive.flower on real Flower processes: the example app's stock ClientApp (no fedhive import) on a real SuperLink
with three real SuperNodes, its ServerApp calling ``strategy.start`` with Flower's FedAvg and then with each fedhive
class in its place; and the same app under Flower's simulation runtime (Ray backend) with every class and federated
evaluation, then the example exactly as shipped."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import dump_logs, wait_for, wait_for_none
from isolation import can_isolate, run_isolated

from fedhive.client.agent import flower_env
from fedhive.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower-quickstart"
HERE = Path(__file__).resolve().parent
ALL = ["flwr.FedAvg", "FedAvg", "FedAsync", "FedBuff", "FedFix", "FedCompass", "FedASMU"]
# On real SuperNodes every task costs a new ClientApp process (torch imported) and Flower's 3-s idle poll, ~5-16 s on
# this 2-core machine, so the deployment run takes Flower's FedAvg and the fedhive classes with Grid-side parts of
# their own (FedCompass's local steps in the config, FedASMU's model store); every class runs under the simulation
# runtime below, and fedhive.flower.FedAvg against Flower's FedAvg in tests/server/test_flower_strategies.py.
ON_SUPERNODES = ["flwr.FedAvg", "FedCompass", "FedASMU"]


def _app(dst: Path, rounds: int, strategies: list[str], out: Path, fraction_evaluate: float = 0.0) -> Path:
    """The example app with the test's ServerApp (every strategy in turn) as its server component."""
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.copy(HERE / "dropin_app" / "every_strategy.py", dst / "quickstart" / "every_strategy.py")
    text = (dst / "pyproject.toml").read_text()
    text = text.replace('serverapp = "quickstart.server_app_fedhive:app"',
                        'serverapp = "quickstart.every_strategy:app"')
    text = re.sub(r"num-server-rounds = \d+", f"num-server-rounds = {rounds}", text)
    text += f'strategies = "{",".join(strategies)}"\nout = "{out}"\nfraction-evaluate = {fraction_evaluate}\n'
    (dst / "pyproject.toml").write_text(text)
    return dst


def _check(results: dict, names: list[str], rounds: int, federated: bool = False) -> None:
    assert list(results) == names, results
    flower = results[names[0]]
    for name, r in results.items():
        assert r["arrays"] == flower["arrays"], name  # the same tensors, names and shapes as Flower's FedAvg
        ev = {int(k): v for k, v in r["evaluations"].items()}
        assert min(ev) == 0 and max(ev) >= rounds, (name, sorted(ev))
        assert ev[max(ev)]["accuracy"] > ev[0]["accuracy"] + 0.1, (name, ev[0], ev[max(ev)])  # it learned
        assert r["train_rounds"] and r["train_keys"] == ["train_loss"], (name, r)
        if federated:  # every round (version) evaluated on the nodes, as Flower's FedAvg does
            assert r["evaluate_rounds"] == list(range(1, max(r["evaluate_rounds"]) + 1)), (name, r)
            assert max(r["evaluate_rounds"]) >= rounds and r["evaluate_keys"] == ["eval_acc", "eval_loss"], (name, r)
        else:
            assert r["evaluate_rounds"] == []
        if name != "flwr.FedAvg":
            assert r["counters"].get("rejected", 0) == 0, (name, r["counters"])


def test_stock_flower_app_runs_flowers_fedavg_then_fedhive_classes_in_its_place(tmp_path):
    out = tmp_path / "results.json"
    app = _app(tmp_path / "app", 2, ON_SUPERNODES, out)
    cluster = LocalCluster(tmp_path / "c", emulate="none")
    try:
        cluster.start_superlink()
        for i in range(3):
            cluster.add_supernode({"partition-id": i, "num-partitions": 3})
        run_id = cluster.submit({}, app_dir=app)

        def done() -> bool:
            status = cluster.run_status(run_id)
            assert not status.startswith("finished:") or status == "finished:completed", (status, dump_logs(cluster))
            return status == "finished:completed"

        wait_for(done, 600, "the run to finish", poll=2.0)
        results = json.loads(out.read_text())
        _check(results, ON_SUPERNODES, 2)
        print({k: round(v["seconds"], 1) for k, v in results.items()})
    finally:
        cluster.close()
    assert not wait_for_none(cluster)


@pytest.mark.skipif(not can_isolate(), reason="needs unshare with network/PID namespaces (root)")
def test_the_same_app_under_flowers_simulation_runtime(tmp_path):
    out = tmp_path / "results.json"
    names = ALL
    app = _app(tmp_path / "app", 3, names, out, fraction_evaluate=1.0)
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    env = flower_env({"FLWR_HOME": str(home)})
    flwr = str(Path(sys.executable).parent / "flwr")
    shipped = tmp_path / "shipped"  # the example as a user gets it: its own server app, FedCompass
    shutil.copytree(EXAMPLE, shipped, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    # --stream: flwr run follows the run's log until it ends (the namespace, and the SuperLink in it, end with it).
    federation = '--federation-config "num-supernodes=3 client-resources-num-cpus=1 init-args-num-cpus=3" --stream'
    script = (f'{flwr} run {app} local {federation} && echo "=== shipped example ===" && '
              f'{flwr} run {shipped} local --run-config "num-server-rounds=4 max-time=120.0" {federation}')
    t0 = time.monotonic()
    # Run from tmp_path: the shipped example's ServerApp saves final_model.pt in its working folder.
    res = run_isolated(["sh", "-c", script], env, 420, cwd=tmp_path)
    assert out.exists(), res.stdout[-6000:]
    results = json.loads(out.read_text())
    assert list(results) == names, res.stdout[-4000:]
    _check(results, names, 3, federated=True)
    shipped_log = res.stdout.split("=== shipped example ===")[-1]
    accuracy = [float(a) for a in re.findall(r"Global evaluation at version \d+: \{'accuracy': ([0-9.e+-]+)",
                                             shipped_log)]
    assert res.returncode == 0 and "Starting FedCompass strategy (fedhive)" in shipped_log, shipped_log[-4000:]
    assert len(accuracy) >= 5 and accuracy[-1] > accuracy[0] + 0.1, (accuracy, shipped_log[-3000:])
    print(f"simulation: {time.monotonic() - t0:.0f} s", {k: round(v["seconds"], 1) for k, v in results.items()})
