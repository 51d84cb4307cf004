"""``fedhive up``: a whole fedhive deployment on this machine, the demo and the smoke test of the real path.

A SuperLink (``--database`` in the run folder), one ``fedhive agent`` per emulated device (a real CPU quota per
device class through the cgroup cpu controller where writable, else a slowdown factor), fedhive's Flower app
submitted with ``flwr run``, and live progress read from the server app's ``status.json``. Ctrl-C stops the run
and every process started. The run folder keeps ``history.json``, ``model.safetensors``, ``checkpoints/``,
``accuracy_vs_time.png``, ``status.json`` and every process's log under ``logs/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.console import Console
from rich.table import Table

from fedhive.localcluster import CPU_QUOTAS, LocalCluster
from fedhive.runconfig import DEFAULTS, task_settings
from fedhive.sim import profiles as sim_profiles
from fedhive.strategies.params import integer

DEFAULT_MIX = {"gpu": 1, "cpu": 2, "rpi4": 3}


def parse_mix(text: str) -> dict[str, int]:
    """``--mix`` as the simulator reads it, limited to the device classes the local cluster can emulate."""
    mix = sim_profiles.parse_mix(text)
    unknown = sorted(set(mix) - set(CPU_QUOTAS))
    if unknown or sum(mix.values()) < 1:
        raise ValueError(f"--mix {text!r}: write CLASS=COUNT,... with classes {', '.join(CPU_QUOTAS)}")
    return mix


def scale(mix: Mapping[str, int], n: int) -> dict[str, int]:
    """``mix`` scaled to ``n`` devices with the simulator's rule; with fewer devices than classes, the n largest."""
    n = integer("--agents", n, low=1)
    if n >= len(mix):
        return sim_profiles.scale_mix(mix, n)
    return {k: 1 for k in sorted(mix, key=lambda k: mix[k], reverse=True)[:n]}


def _status_table(st: Mapping[str, Any], emulation: str) -> Table:
    t = Table(title=f"fedhive up: {st.get('strategy')} ({emulation} emulation)", show_header=True)
    for col in ("t (s)", "version", "accuracy", "updates", "by device class", "staleness mean/max", "clients"):
        t.add_column(col)
    acc = st.get("accuracy")
    t.add_row(f"{st.get('time', 0):.0f}", str(st.get("version", 0)), "-" if acc is None else f"{acc:.3f}",
              str(st.get("client_updates", 0)),
              ", ".join(f"{k} {v}" for k, v in sorted(st.get("updates_by_class", {}).items())),
              f"{st.get('mean_staleness', 0):.1f} / {st.get('max_staleness', 0)}",
              ", ".join(f"{k} {v}" for k, v in sorted(st.get("clients_by_class", {}).items())))
    return t


#: Strategy keywords of the local cluster when the user sets none. On the real Flower path every task costs seconds of
#: overhead (message delivery, a ClientApp process per message) beside milliseconds to a second of training, so
#: FedCompass's simulation defaults (5 to 20 local steps) would leave the devices idle most of the time. Measured
#: with the six default devices over 240 s (sample-size client weights, one torch thread per agent): test accuracy
#: 0.81 with Q 100..400 (0.80 first reached at 240 s), 0.857 with Q 300..1200 (0.80 at 190 s). ``--set
#: strategy-params=...`` replaces this. Each entry gives the keywords for a cluster of ``n`` devices.
REAL_PATH_PARAMS: dict[str, Callable[[int], str]] = {
    "fedcompass": lambda n: "q_min=300,q_max=1200,client_weights=samples",
    "fedbuff": lambda n: f"buffer_size={fedbuff_buffer(n)}",
}

#: Local steps per task of the local cluster when ``--set local-steps=...`` is not given (every strategy but
#: FedCompass, which picks its own): the simulation's 20 steps are 20-100 ms of training beside seconds of overhead per
#: task. Measured with ``fedhive up --agents 3 --duration 90 --strategy fedbuff``: see :func:`fedbuff_buffer`.
REAL_PATH_LOCAL_STEPS = 300


def fedbuff_buffer(n: int) -> int:
    """FedBuff's buffer size on a local cluster of ``n`` devices when ``strategy-params`` is not given: half the
    devices, between 2 and FedBuff's default of 10. A buffer of 10 with three devices makes a version every three
    or four rounds of updates: measured here, 3 versions and accuracy 0.12 -> 0.22 in 90 s with 20 local steps."""
    return min(10, max(2, int(n) // 2))


def up(*, strategy: str = "fedcompass", agents: int | None = None, mix: str | None = None, duration: float = 240.0,
       task: str = "mnist1d", out: str | None = None, metrics_address: str = "", settings: Mapping[str, Any] = (),
       emulate: str = "auto", live: bool | None = None, console: Console | None = None,
       max_restarts: int = 3, insecure: bool = False, clientapp_runner: str = "warm") -> dict[str, Any]:
    """Run the local cluster; returns the final ``history.json`` content (raises on failure).

    Secure unless ``insecure``: TLS (a CA and server certificate made in ``RUN/certs/``) for the SuperLink and the
    model store, and Flower's node authentication (each agent's own key, registered before it starts; see
    :class:`LocalCluster` ``secure``).

    A run lost to a killed ServerApp or SuperLink is resumed from its newest checkpoint (the SuperLink started
    again on its database), up to ``max_restarts`` times: see :meth:`LocalCluster.supervise`.
    """
    console = console or Console()
    counts = parse_mix(mix) if mix else dict(DEFAULT_MIX)
    if agents is not None:
        counts = scale(counts, agents)
    n = sum(counts.values())
    run_dir = Path(out) if out else Path("runs") / time.strftime("up-%Y%m%d-%H%M%S")
    if (run_dir / "history.json").exists():
        raise ValueError(f"{run_dir} already holds a run (history.json); choose another --out")
    if live is None:
        live = out is None and console.is_terminal
    config: dict[str, Any] = {"strategy": strategy, "task": task, "max-time": float(duration),
                              "run-dir": str(run_dir.resolve()), "run-name": run_dir.name, "num-partitions": n,
                              "min-clients": n, "wait-clients": 180.0, "metrics-address": metrics_address}
    for k, v in dict(settings).items():
        if k not in DEFAULTS:
            raise ValueError(f"--set {k}: unknown run-config key; valid: {', '.join(DEFAULTS)}")
        config[k] = v
    if "local-steps" not in config:
        config["local-steps"] = REAL_PATH_LOCAL_STEPS
    if strategy in REAL_PATH_PARAMS and not config.get("strategy-params"):
        config["strategy-params"] = REAL_PATH_PARAMS[strategy](n)
    from fedhive.server.settings import RunSettings

    RunSettings.from_config(config)  # check everything before starting a process
    max_restarts = integer("max_restarts", max_restarts, low=0)
    # One data cache for every agent on this machine, filled once here, before the agents (some with a fifth of a
    # core) would each generate the same data at once.
    data_dir = Path(os.environ.get("FEDHIVE_CACHE") or Path.home() / ".cache" / "fedhive")
    _prewarm(task, n, config, data_dir)
    if clientapp_runner not in ("warm", "flower"):
        raise ValueError(f"clientapp_runner {clientapp_runner!r} is not one of warm, flower")
    cluster = LocalCluster(run_dir, emulate=emulate, data_dir=data_dir, secure=not insecure)
    try:
        console.print(f"fedhive up: {n} agents {counts}, {strategy}"
                      + (f" ({config['strategy-params']})" if config.get("strategy-params") else "")
                      + f" on {task}, {duration:.0f} s; device speeds "
                      f"emulated by {cluster.emulation}"
                      + (" (cgroup CPU quota per class: " + ", ".join(
                          f"{c} {'none' if CPU_QUOTAS[c] is None else f'{CPU_QUOTAS[c]:.2f} core'}" for c in counts)
                         + ")" if cluster.emulation == "cgroup" else "")
                      + ("; TLS and node authentication (certs/)" if cluster.secure else
                         "; [bold yellow]insecure[/bold yellow]: plain text, any node may join")
                      + f"; run folder {run_dir}")
        cluster.start_superlink()
        i = 0
        for cls, k in counts.items():
            for _ in range(k):
                cluster.add_agent(cls, i, n, extra=["--clientapp-runner", clientapp_runner])
                i += 1
        console.print(f"submitting to the SuperLink at {cluster.address}"
                      + (f"; Prometheus metrics at http://{metrics_address}/metrics" if metrics_address else ""))

        def restarted(attempt: int, st: Mapping[str, Any]) -> None:
            console.print(f"[yellow]the run was lost ({st.get('lost')}); resuming it from its newest checkpoint "
                          f"(restart {attempt} of {max_restarts})[/yellow]")

        status = _watch(cluster, config, duration, live, console, max_restarts, restarted)
        if status.get("state") != "finished":
            raise RuntimeError(f"the run ended as {status.get('state')} ({status.get('lost') or ''} "
                               f"{status.get('flower_status', '')}, {status.get('restarts', 0)} restarts); see "
                               f"{run_dir / 'logs'}")
        history = json.loads((run_dir / "history.json").read_text())
        _summary(history, run_dir, console)
        return history
    except KeyboardInterrupt:
        console.print("interrupted: stopping every process")
        raise
    finally:
        cluster.close()


def _prewarm(task: str, n: int, config: Mapping[str, Any], data_dir: Path) -> None:
    from fedhive.tasks import load_task

    s = task_settings({**config, "task": task})  # what each agent's trainer builds its task from
    old = os.environ.get("FEDHIVE_CACHE")
    os.environ["FEDHIVE_CACHE"] = str(data_dir)
    try:
        t = load_task(s["task"], num_clients=n, partition=s["partition"], alpha=s["alpha"], seed=s["seed"])
        t.num_examples(0)
    finally:
        if old is None:
            os.environ.pop("FEDHIVE_CACHE", None)
        else:
            os.environ["FEDHIVE_CACHE"] = old


def _watch(cluster: LocalCluster, config: Mapping[str, Any], duration: float, live: bool, console: Console,
           max_restarts: int, on_restart) -> dict[str, Any]:
    """Submit the run and follow it ("submit or resume": a lost run is resumed from its checkpoint)."""
    timeout = duration * (1 + max_restarts) + 600

    def supervise(on_status) -> dict[str, Any]:
        return cluster.supervise(config, timeout=timeout, max_restarts=max_restarts, on_status=on_status,
                                 on_restart=on_restart)[0]

    if live:
        from rich.live import Live

        with Live(console=console, refresh_per_second=2) as view:
            return supervise(lambda st: view.update(_status_table(st, cluster.emulation)))
    last = [0.0]

    def line(st: Mapping[str, Any]) -> None:
        if time.monotonic() - last[0] >= 10 and st.get("state") == "running":
            last[0] = time.monotonic()
            acc = st.get("accuracy")
            console.print(f"t={st.get('time', 0):.0f}s version {st.get('version')} accuracy "
                          f"{'-' if acc is None else f'{acc:.3f}'} updates {st.get('client_updates')} "
                          f"{st.get('updates_by_class')} staleness {st.get('mean_staleness', 0):.1f}")

    return supervise(line)


def _summary(history: Mapping[str, Any], run_dir: Path, console: Console) -> None:
    final = history["final"]
    t = Table(title=f"fedhive up: {history['strategy']} finished ({final.get('stop_reason')})")
    for col in ("wall s", "version", "accuracy", "client updates", "updates by class", "MB moved"):
        t.add_column(col, justify="right")
    t.add_row(f"{final['time']:.0f}", str(final["version"]), f"{final['accuracy']:.4f}",
              str(final["client_updates"]), ", ".join(f"{k} {v}" for k, v in history["updates_by_class"].items()),
              f"{final['bytes'] / 1e6:.1f}")
    console.print(t)
    g = history.get("groups") or {}
    if g.get("groups"):
        console.print(f"FedCompass groups: members arrived within {g['median_spread']:.1f} s of each other "
                      f"(median over {g['groups']} groups of 2 or more; max {g['max_spread']:.1f} s)")
    console.print(f"run folder: {run_dir} (history.json, model.safetensors, accuracy_vs_time.png, checkpoints/, "
                  f"logs/)")
    sys.stdout.flush()
