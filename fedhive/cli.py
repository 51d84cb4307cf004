"""The ``fedhive`` command: ``fedhive strategies | sim | bench | up | submit | register-nodes | agent``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from fedhive import __version__


def _strategies(args: argparse.Namespace) -> int:
    from fedhive.strategies import STRATEGIES, build

    table = Table(title="fedhive strategies (keywords for --param / --strategy-param / run config)")
    table.add_column("name")
    table.add_column("parameters (defaults, as resolved)")
    table.add_column("preset=paper sets")
    for name, cls in STRATEGIES.items():
        config = build(name).config()
        paper = {k: v for k, v in cls.PRESETS["paper"].items() if config.get(k) != v}
        table.add_row(name, ", ".join(f"{k}={v!r}" for k, v in config.items()),
                      ", ".join(f"{k}={v!r}" for k, v in paper.items()) or "(the defaults: they are the paper's)")
    Console().print(table)
    return 0


def _pairs(items: Sequence[str] | None, what: str, example: str, form: str = "KEY=VALUE") -> dict:
    """Repeated ``--option KEY=VALUE`` items as a dict, values typed (JSON where they parse, else strings)."""
    from fedhive.strategies.params import parse_pairs

    return parse_pairs(items, what, form=form, example=example)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _sim(args: argparse.Namespace) -> int:
    from fedhive.sim.profiles import load_fleet, parse_mix
    from fedhive.sim.runner import SimConfig, run_sim

    fleet = load_fleet(args.fleet)
    if args.mix:
        fleet = fleet.with_mix(parse_mix(args.mix))
    task_params = _pairs(args.task_param, "task parameter", "num_samples=8000")
    if args.alpha is not None:
        task_params["alpha"] = args.alpha
    strategy_params = _pairs(args.param, "strategy parameter", "buffer_size=10")
    client_config = _pairs(args.client, "client setting", "lr=0.05")
    cfg = SimConfig(strategy=args.strategy, fleet=fleet, budget=args.budget, seed=args.seed, task=args.task,
                    task_params=task_params, strategy_params=strategy_params,
                    client_config=client_config, local_steps=args.local_steps,
                    target=args.target, stop_at_target=args.stop_at_target, eval_interval=args.eval_interval,
                    max_updates=args.max_updates, executor=args.executor, workers=args.workers,
                    ray_address=args.ray_address, ray_gpus=args.ray_gpus)
    console = Console()
    metrics = None
    if args.metrics_address:
        from fedhive.server.metrics import ServerMetrics

        metrics = ServerMetrics.serve(args.metrics_address, simulated=True)  # times are virtual seconds
    try:
        res = run_sim(cfg, progress=not args.quiet, observer=metrics)
    finally:
        if metrics is not None:
            metrics.close()
    res.pop("_params")
    final = res["final"]
    table = Table(title=f"fedhive sim: {args.strategy} on {args.task}, {fleet.size} clients {fleet.mix}, "
                        f"seed {args.seed}")
    for col in ("virtual s", "version", "accuracy", "loss", "client updates", "MB moved", "wall s"):
        table.add_column(col, justify="right")
    table.add_row(f"{final['time']:.0f}", str(final["version"]), f"{final['accuracy']:.4f}", f"{final['loss']:.4f}",
                  f"{final['client_updates']:,}", f"{final['bytes'] / 1e6:,.1f}", f"{res['wall_seconds']:.1f}")
    console.print(table)
    if "time_to_target" in res:
        t = res["time_to_target"]
        console.print(f"time to {args.target:.0%}: " + (f"{t:.0f} virtual s" if t is not None else "not reached"))
    rejected = {k: v for k, v in res["counters"].items() if k.startswith("rejected")}
    if rejected or res["diverged"]:
        console.print(f"[yellow]rejected updates: {rejected}; discarded (diverged) aggregations: {res['diverged']}[/]")
    if args.out:
        _write_json(Path(args.out) / "results.json", res)
        console.print(f"wrote {Path(args.out) / 'results.json'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fedhive.sim.bench import DEFAULTS, ORDER, hetero
    from fedhive.sim.profiles import parse_mix, scale_mix

    params: dict[str, dict] = {}
    for item in args.param or ():
        name, sep, rest = item.partition(":")
        if not sep:
            raise ValueError(f"bad --param {item!r}: write STRATEGY:KEY=VALUE, e.g. fedasync:alpha=0.4")
        params.setdefault(name, {}).update(_pairs([rest], "--param", "fedasync:alpha=0.4", form="STRATEGY:KEY=VALUE"))
    mix = parse_mix(args.mix) if args.mix else dict(DEFAULTS["mix"])
    if args.clients:
        mix = scale_mix(mix, args.clients)
    hetero(seed=args.seed, mix=mix, alpha=args.alpha, target=args.target,
           budget=args.budget, long=args.long, long_budget=args.long_budget, out=args.out,
           strategies=args.strategies.split(",") if args.strategies else ORDER,
           strategy_params=params, executor=args.executor, workers=args.workers, ray_address=args.ray_address,
           ray_gpus=args.ray_gpus, client_config=_pairs(args.client, "client setting", "lr=0.05"),
           progress=not args.quiet)
    return 0


def _up(args: argparse.Namespace) -> int:
    from fedhive.localcluster import exit_on_sigterm
    from fedhive.up import up

    exit_on_sigterm()  # `kill`, `timeout` or systemd stop the cluster as Ctrl-C does
    up(strategy=args.strategy, agents=args.agents, mix=args.mix, duration=args.duration, task=args.task, out=args.out,
       metrics_address=args.metrics_address, settings=_pairs(args.set, "run-config setting", "max-versions=50"),
       emulate=args.emulate, max_restarts=args.max_restarts, insecure=args.insecure,
       clientapp_runner=args.clientapp_runner)
    return 0


def _submit(args: argparse.Namespace) -> int:
    import logging
    import os

    from flwr.common.config import parse_config_args

    from fedhive.localcluster import APP_DIR, LocalCluster
    from fedhive.server.settings import RunSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = dict(parse_config_args([args.run_config]))
    except Exception as exc:  # noqa: BLE001 - Flower's parser raises several kinds
        raise SystemExit(f"--run-config: {exc}; give 'key=value key=value' as flwr run takes it, strings quoted "
                         f"('strategy=\\'fedasync\\' run-dir=\\'/state/runs/a\\'')") from exc
    RunSettings.from_config(config)  # every key and value checked before anything starts
    if not config.get("run-dir"):
        raise SystemExit("--run-config must name run-dir (a folder this command can read: it follows the run's "
                         "status.json there and resumes from its checkpoints)")
    flwr_home = args.flwr_home or os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
    cluster = LocalCluster.attach(args.work_dir, flwr_home, args.connection)
    status, restarts = cluster.supervise(config, app_dir=args.app or APP_DIR,
                                         timeout=args.timeout if args.timeout > 0 else 10 * 365 * 86400.0,
                                         max_restarts=args.max_restarts)
    state = status.get("state")
    print(json.dumps({"state": state, "restarts": restarts, "lost": status.get("lost"),
                      "version": status.get("version"), "client_updates": status.get("client_updates")}))
    return 0 if state in ("finished", "stopped") else 1


def _register_nodes(args: argparse.Namespace) -> int:
    import os
    import time

    from fedhive.client.agent import flower_env
    from fedhive.localcluster import register_node_key

    flwr_home = args.flwr_home or os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
    env = flower_env({"FLWR_HOME": flwr_home})
    failed = 0
    for key in args.keys:
        end = time.monotonic() + args.wait
        while True:
            try:
                outcome = register_node_key(key, args.connection, env, name=Path(key).name.split(".")[0])
                print(f"{key}: {outcome}")
                break
            except FileNotFoundError as exc:
                print(f"{key}: {exc}")
                failed += 1
                break
            except RuntimeError as exc:
                if time.monotonic() >= end:
                    print(f"{key}: {exc}")
                    failed += 1
                    break
                time.sleep(2.0)  # the SuperLink may still be starting
    return 1 if failed else 0


def _agent(args: argparse.Namespace) -> int:
    import logging

    from fedhive.client.agent import Agent, AgentOptions
    from fedhive.client.profile import detect

    profile = detect()
    if args.print_profile:
        info = profile.as_dict()
        if args.device_class != "auto":
            info["device_class"] = args.device_class
        print(json.dumps(info, indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = AgentOptions(superlink=args.superlink, partition_id=args.partition_id, num_partitions=args.num_partitions,
                        data_dir=args.data_dir, device_class=args.device_class, port=args.port,
                        insecure=args.insecure, root_certificates=args.root_certificates,
                        auth_private_key=args.auth_supernode_private_key,
                        auth_public_key=args.auth_supernode_public_key, slowdown=args.slowdown,
                        torch_threads=args.torch_threads, training_device=args.training_device,
                        worker=not args.no_worker, max_backoff=args.max_backoff, state_dir=args.state_dir,
                        node_config=_pairs(args.node_config, "node config", "data-dir=/data"),
                        metrics_address=args.metrics_address, clientapp_runner=args.clientapp_runner,
                        runner_poll=args.runner_poll)
    return Agent(opts, profile).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedhive", description="Asynchronous federated learning on Flower for "
                                "fleets of unequal devices.")
    p.add_argument("--version", action="version", version=f"fedhive {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("strategies", help="list the strategies and their parameters")
    s.set_defaults(func=_strategies)

    def executor_options(sp: argparse.ArgumentParser, default: str) -> None:
        sp.add_argument("--executor", choices=("inline", "process", "ray"), default=default,
                        help=f"where local training runs (default {default}); never changes the result")
        sp.add_argument("--workers", type=int, default=None,
                        help="worker processes: for --executor process; for bench with inline, runs side by side")
        sp.add_argument("--ray-address", default=None,
                        help="join this Ray cluster ('auto': the one this machine belongs to); default: start a "
                             "local Ray on 127.0.0.1")
        sp.add_argument("--ray-gpus", choices=("auto", "always", "never"), default="auto",
                        help="GPU-class trainings ask Ray for a GPU share: auto (if the cluster has GPUs at the "
                             "start), always (autoscaling clusters whose GPU workers start at zero), never")
        sp.add_argument("--client", action="append", metavar="KEY=VALUE",
                        help="training setting for every client task (lr, batch_size, optimizer, ...)")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sim", help="one run in virtual time")
    s.add_argument("--strategy", required=True, help="fedavg, fedasync, fedbuff, fedfix, fedcompass or fedasmu")
    s.add_argument("--task", default="mnist1d", help="mnist1d, synthetic or module:attribute")
    s.add_argument("--fleet", default="hetero", help="a preset (hetero, small, pis, flaky, uniform) or a TOML file")
    s.add_argument("--mix", default=None, help="override the fleet's device counts, e.g. gpu=5,cpu=20,rpi4=25")
    s.add_argument("--budget", type=float, required=True, help="virtual seconds to simulate")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--alpha", type=float, default=None, help="Dirichlet label-skew concentration")
    s.add_argument("--local-steps", type=int, default=20)
    s.add_argument("--param", action="append", metavar="KEY=VALUE", help="strategy parameter (repeatable)")
    s.add_argument("--task-param", action="append", metavar="KEY=VALUE", help="task parameter (repeatable)")
    s.add_argument("--target", type=float, default=None, help="report the virtual time to this test accuracy")
    s.add_argument("--stop-at-target", action="store_true", help="end the run when --target is reached")
    s.add_argument("--eval-interval", type=float, default=None, help="virtual seconds between evaluations")
    s.add_argument("--max-updates", type=int, default=None, help="also end the run after this many client updates")
    s.add_argument("--out", default=None, help="write DIR/results.json")
    s.add_argument("--metrics-address", default="", help="serve Prometheus metrics (mode=simulated) on HOST:PORT")
    executor_options(s, "inline")
    s.set_defaults(func=_sim)

    b = sub.add_parser("bench", help="benchmarks in virtual time")
    bsub = b.add_subparsers(dest="bench", required=True)
    h = bsub.add_parser("hetero", help="all strategies on one unequal fleet (BENCHMARK.md §1)")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--clients", type=int, default=None, help="scale the default mix to this many clients")
    h.add_argument("--mix", default=None, help="device counts, default gpu=5,cpu=20,rpi4=25")
    h.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew concentration")
    h.add_argument("--budget", type=float, default=3000.0, help="cap on FedAvg's time to the target (virtual s)")
    h.add_argument("--target", type=float, default=0.85, help="target test accuracy")
    h.add_argument("--long", action="store_true", help="run every strategy to --long-budget (plateau accuracy)")
    h.add_argument("--long-budget", type=float, default=2000.0)
    h.add_argument("--strategies", default=None, help="comma-separated subset (fedavg is needed unless --long)")
    h.add_argument("--param", action="append", metavar="STRATEGY:KEY=VALUE", help="strategy parameter")
    h.add_argument("--out", default=None, help="write DIR/results.json and DIR/accuracy_vs_time.png")
    executor_options(h, "inline")
    h.set_defaults(func=_bench)

    u = sub.add_parser("up", help="a local Flower cluster: SuperLink, emulated devices, one fedhive run")
    u.add_argument("--strategy", default="fedcompass", help="fedavg, fedasync, fedbuff, fedfix, fedcompass, fedasmu")
    u.add_argument("--agents", type=int, default=None, help="number of devices (default 6: the --mix)")
    u.add_argument("--mix", default=None, help="device classes, default gpu=1,cpu=2,rpi4=3")
    u.add_argument("--duration", type=float, default=240.0, help="seconds of training (default 240)")
    u.add_argument("--task", default="mnist1d")
    u.add_argument("--out", default=None, help="run folder (default runs/up-DATE); no live screen")
    u.add_argument("--metrics-address", default="127.0.0.1:9400", help="HOST:PORT of the server's Prometheus "
                   "endpoint (default 127.0.0.1:9400; empty: none)")
    u.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key (repeatable)")
    u.add_argument("--emulate", choices=("auto", "cgroup", "slowdown", "none"), default="auto",
                   help="how device classes get their speed (default: cgroup CPU quota if writable)")
    u.add_argument("--clientapp-runner", default="warm", choices=("warm", "flower"), help="the agents' ClientApp "
                   "runner (default warm: fedhive's long-lived runner, README; flower: Flower's launcher)")
    u.add_argument("--max-restarts", type=int, default=3, help="times a run lost to a killed ServerApp or "
                   "SuperLink is resumed from its newest checkpoint (default 3; 0: never)")
    u.add_argument("--insecure", action="store_true", help="plain text and no node authentication (default: TLS with "
                   "a CA made in the run folder, and every agent's key registered with the SuperLink)")
    u.set_defaults(func=_up)

    s = sub.add_parser("submit", help="submit a run to a running SuperLink, or resume it; resubmit it when lost",
                       description="Submit or resume: a run whose run-dir holds a checkpoint of the same run that did "
                       "not finish is resumed (resume=true), else a new run starts; a run lost to a killed ServerApp "
                       "or a restarted SuperLink is submitted again with resume=true. Exit code 0 when the run "
                       "finished or was stopped (flwr stop), 1 when it failed.")
    s.add_argument("app", nargs="?", default=None, help="the Flower app folder (default: fedhive's own app)")
    s.add_argument("--connection", required=True, help="a [superlink.NAME] connection in $FLWR_HOME/config.toml")
    s.add_argument("--flwr-home", default="", help="Flower's config folder (default $FLWR_HOME, else ~/.flwr)")
    s.add_argument("--run-config", required=True, help="'key=value ...' as flwr run --run-config takes it; must "
                   "name a run-dir this command can read")
    s.add_argument("--max-restarts", type=int, default=3, help="resubmissions of a lost run (default 3)")
    s.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds (default 0: never)")
    s.add_argument("--work-dir", default=".fedhive-submit", help="folder for this command's logs")
    s.set_defaults(func=_submit)

    r = sub.add_parser("register-nodes", help="register SuperNode public keys with a SuperLink (node authentication)",
                       description="Runs Flower's `flwr supernode register` for each key; a key the SuperLink has "
                       "already is not an error (a restarted deployment registers again). Exit code 1 if any key "
                       "could not be registered within --wait seconds.")
    r.add_argument("keys", nargs="+", help="OpenSSH ECDSA public keys (ssh-keygen -t ecdsa -b 384)")
    r.add_argument("--connection", required=True, help="a [superlink.NAME] connection in $FLWR_HOME/config.toml")
    r.add_argument("--flwr-home", default="", help="Flower's config folder (default $FLWR_HOME, else ~/.flwr)")
    r.add_argument("--wait", type=float, default=60.0, help="seconds to keep retrying an unreachable SuperLink")
    r.set_defaults(func=_register_nodes)

    a = sub.add_parser("agent", help="run on a device: profile it and serve Flower's SuperNode")
    a.add_argument("--superlink", default="127.0.0.1:8000", help="the SuperLink's address HOST:PORT (its one port)")
    a.add_argument("--partition-id", type=int, default=0, help="which part of the training data this device holds")
    a.add_argument("--num-partitions", type=int, default=1)
    a.add_argument("--data-dir", default="", help="the device's data and cache folder")
    a.add_argument("--device-class", default="auto", help="auto (from the profile), gpu, cpu, rpi5, rpi4, rpi-zero2")
    a.add_argument("--port", type=int, default=9094, help="the SuperNode's local port (distinct per node on a host)")
    a.add_argument("--insecure", action="store_true", help="plain text to the SuperLink (no TLS)")
    a.add_argument("--root-certificates", default="", help="CA certificate of the SuperLink (TLS)")
    a.add_argument("--auth-supernode-private-key", default="", help="node authentication: this node's ECDSA private key (OpenSSH form, e.g. ssh-keygen -t ecdsa -b 384; "
                   "its public key registered with `flwr supernode register`)")
    a.add_argument("--auth-supernode-public-key", default="", help="deprecated in Flower 1.42 (derived from the "
                   "private key); passed on when given")
    a.add_argument("--slowdown", type=float, default=1.0, help="emulate a slower device: wait (x-1) x compute time")
    a.add_argument("--torch-threads", type=int, default=0, help="torch threads for training (0: the cores this "
                   "process may use, capped by its cgroup CPU quota; 1 where several agents share a machine)")
    a.add_argument("--training-device", default="auto", help="auto (CUDA, else MPS, else the CPU), cpu, cuda, "
                   "cuda:N, mps; a small model can train faster on one CPU core than on a GPU (README)")
    a.add_argument("--no-worker", action="store_true", help="no warm worker: every ClientApp loads torch and data")
    a.add_argument("--clientapp-runner", default="warm", choices=("warm", "flower"),
                   help="warm (default): the SuperNode in --isolation process and fedhive's runner running every "
                   "message in one long-lived process (~1-4 s less per task; README 'Warm ClientApp runner'); "
                   "flower: Flower's launcher, a new flwr-clientapp process per message")
    a.add_argument("--runner-poll", type=float, default=0.1, help="seconds between the warm runner's polls of the "
                   "SuperNode in the 10 s after a task (then slowing to 1 s while idle)")
    a.add_argument("--max-backoff", type=float, default=60.0, help="longest wait between SuperNode restarts (s)")
    a.add_argument("--state-dir", default="", help="folder for the worker socket (default: a temporary one)")
    a.add_argument("--node-config", action="append", metavar="KEY=VALUE", help="extra node config (repeatable)")
    a.add_argument("--metrics-address", default="", help="HOST:PORT for the agent's own Prometheus metrics")
    a.add_argument("--print-profile", action="store_true", help="print the detected profile and device class, exit")
    a.set_defaults(func=_agent)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        # Bad settings (names, values, files): say what was wrong and what is accepted, without a traceback.
        print(f"fedhive {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedhive {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
