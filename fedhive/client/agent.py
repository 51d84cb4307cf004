"""``fedhive agent``: the program a device runs.

It profiles the device (:mod:`fedhive.client.profile`), keeps a warm worker (:mod:`fedhive.client.worker`: torch,
the data and the model stay loaded between messages), and runs Flower's own ``flower-supernode`` with the profile,
the data partition and the worker's socket in ``--node-config``. By default (``clientapp_runner="warm"``) the
SuperNode runs in ``--isolation process`` with a fresh SuperExec secret, and fedhive's ClientApp runner
(:mod:`fedhive.client.runner`) takes the place of Flower's launcher: one long-lived process runs every message
instead of a new ``flwr-clientapp`` process per message. ``clientapp_runner="flower"`` keeps Flower's launcher.
If the SuperNode or the runner exits, both are restarted with capped exponential backoff, for as long as the agent
runs. SIGTERM or SIGINT stops the SuperNode's whole process group (with Flower's launcher: it and any ClientApp),
the runner's, and the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fedhive.strategies.params import integer, number

from .profile import DEVICE_CLASSES, DeviceProfile, detect

log = logging.getLogger("fedhive.agent")

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with Flower's telemetry, update check and dependency installation off, and this
    Python's bin folder first on PATH (so Flower's launchers start this environment's ``flwr-*`` commands)."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def flower_command(name: str) -> str:
    """Absolute path of Flower's ``name`` command in this Python's environment (else from PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; install flwr in this "
                                f"environment (pip install 'flwr==1.42.*')")
    return found


def node_config_string(config: Mapping[str, Any]) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings single-quoted (TOML)."""
    parts = []
    for k, v in config.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v!r}")
        else:
            s = str(v)
            if "'" in s or " " in s:
                raise ValueError(f"node config {k}={s!r}: values cannot contain spaces or single quotes")
            parts.append(f"{k}='{s}'")
    return " ".join(parts)


RUNNERS = ("warm", "flower")


@dataclass
class AgentOptions:
    superlink: str
    partition_id: int = 0
    num_partitions: int = 1
    data_dir: str = ""
    device_class: str = "auto"
    port: int = 9094
    insecure: bool = True
    root_certificates: str = ""
    auth_private_key: str = ""
    auth_public_key: str = ""
    slowdown: float = 1.0
    torch_threads: int = 0  # 0: trainer.default_threads()
    training_device: str = "auto"  # auto: trainer.best_device(); cpu, cuda, cuda:N, mps
    worker: bool = True
    max_backoff: float = 60.0
    state_dir: str = ""
    node_config: dict = field(default_factory=dict)
    metrics_address: str = ""
    # "warm": the SuperNode in --isolation process with fedhive's runner (fedhive.client.runner) in place of
    # Flower's launcher, one long-lived ClientApp process (the default); "flower": Flower's own, a new process per
    # message.
    clientapp_runner: str = "warm"
    runner_poll: float = 0.1

    def __post_init__(self) -> None:
        if self.device_class != "auto" and self.device_class not in DEVICE_CLASSES:
            raise ValueError(f"device class {self.device_class!r} is not one of auto, {', '.join(DEVICE_CLASSES)}")
        self.partition_id = integer("partition-id", self.partition_id, low=0)
        self.num_partitions = integer("num-partitions", self.num_partitions, low=1)
        if self.partition_id >= self.num_partitions:
            raise ValueError(f"partition-id {self.partition_id} must be < num-partitions {self.num_partitions}")
        if not self.insecure and not self.root_certificates:
            raise ValueError("TLS needs --root-certificates CA.pem (or pass --insecure for plain text)")
        if self.auth_public_key and not self.auth_private_key:
            raise ValueError("--auth-supernode-public-key without --auth-supernode-private-key: node authentication "
                             "needs the private key (Flower 1.42 derives the public key from it)")
        self.slowdown = number("slowdown", self.slowdown, low=1)
        self.torch_threads = integer("torch-threads", self.torch_threads, low=0)
        from .trainer import training_device

        training_device(self.training_device, check=False)  # the form now; whether torch has it, at the worker's start
        if self.clientapp_runner not in RUNNERS:
            raise ValueError(f"clientapp runner {self.clientapp_runner!r} is not one of {', '.join(RUNNERS)}")
        self.runner_poll = number("runner-poll", self.runner_poll, low=0.01, high=60)


class Agent:
    """Supervises one ``flower-supernode`` and serves the warm worker."""

    def __init__(self, opts: AgentOptions, profile: DeviceProfile | None = None) -> None:
        self.opts = opts
        self.profile = profile or detect()
        self.device_class = opts.device_class if opts.device_class != "auto" else self.profile.device_class
        self.state_dir = Path(opts.state_dir or tempfile.mkdtemp(prefix="fedhive-agent-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(opts.data_dir or self.state_dir / "data")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._runner: subprocess.Popen | None = None
        self.restarts = 0
        self.worker = None
        self.metrics: Any = None
        self.socket_path = str(self.state_dir / "worker.sock")

    def node_config(self) -> dict[str, Any]:
        p = self.profile
        cfg: dict[str, Any] = {
            "partition-id": self.opts.partition_id,
            "num-partitions": self.opts.num_partitions,
            "device-class": self.device_class,
            "data-dir": str(self.data_dir),
            "arch": p.arch,
            "cores": p.cores,
            "memory-gb": p.memory_gb,
            "accelerator": p.accelerator.replace(" ", "_"),
            "board": p.board.replace(" ", "_") or "none",
            "cpu-quota": p.cpu_quota if p.cpu_quota is not None else 0.0,
            "slowdown": self.opts.slowdown,
            "torch-threads": self.opts.torch_threads,
            "training-device": self.opts.training_device,
        }
        if self.worker is not None:
            cfg["worker"] = self.socket_path
        cfg.update(self.opts.node_config)
        return cfg

    def command(self) -> list[str]:
        o = self.opts
        cmd = [flower_command("flower-supernode"), "--superlink", o.superlink, "--port", str(o.port),
               "--node-config", node_config_string(self.node_config())]
        if o.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", o.root_certificates]
        if o.auth_private_key:
            cmd += ["--auth-supernode-private-key", o.auth_private_key]
        if o.auth_public_key:  # deprecated in Flower 1.42 (derived from the private key); passed on when given
            cmd += ["--auth-supernode-public-key", o.auth_public_key]
        if o.clientapp_runner == "warm":
            cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(self.secret_path)]
        return cmd

    @property
    def secret_path(self) -> Path:
        return self.state_dir / "superexec.secret"

    def runner_command(self) -> list[str]:
        """fedhive's warm ClientApp runner for the SuperNode of :meth:`command` (``clientapp_runner="warm"``)."""
        return [sys.executable, "-m", "fedhive.client.runner", "--runtime-api-address", f"127.0.0.1:{self.opts.port}",
                "--superexec-auth-secret-file", str(self.secret_path), "--poll-interval", f"{self.opts.runner_poll:g}",
                "--parent-pid", str(os.getpid())]

    def start_worker(self) -> None:
        if not self.opts.worker:
            return
        from .trainer import Trainer
        from .worker import Worker

        os.environ["FEDHIVE_CACHE"] = str(self.data_dir)
        trainer = Trainer(device=self.opts.training_device, slowdown=self.opts.slowdown,
                          threads=self.opts.torch_threads or None)
        trainer.metrics = self.metrics
        self.worker = Worker(self.socket_path, trainer)
        import torch  # noqa: F401  (warm: the first task should not pay for the import)

    def run(self) -> int:
        """Run until :meth:`stop` (or SIGTERM/SIGINT when called from the main thread). Returns an exit code."""
        from .trainer import training_device

        training_device(self.opts.training_device)  # a device torch lacks here: refused before anything starts
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        if self.opts.metrics_address:
            from .metrics import AgentMetrics

            self.metrics = AgentMetrics(self.device_class, self.profile.as_dict())
            self.metrics.serve(self.opts.metrics_address)
        self.start_worker()
        backoff = 1.0
        log.info("agent: device class %s, profile %s", self.device_class, self.profile.as_dict())
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                warm = self.opts.clientapp_runner == "warm"
                if warm:  # a new secret per start: only this start's runner can claim the SuperNode's tasks
                    from .runner import write_secret

                    write_secret(self.secret_path)
                cmd = self.command()
                log.info("starting %s", " ".join(cmd))
                self._proc = subprocess.Popen(cmd, env=flower_env(), start_new_session=True)
                (self.state_dir / "supernode.pid").write_text(f"{self._proc.pid}\n")
                if warm:
                    rcmd = self.runner_command()
                    log.info("starting %s", " ".join(rcmd))
                    self._runner = subprocess.Popen(rcmd, env=flower_env(), start_new_session=True)
                    (self.state_dir / "runner.pid").write_text(f"{self._runner.pid}\n")
                procs = [p for p in (self._proc, self._runner) if p is not None]
                while all(p.poll() is None for p in procs) and not self._stop.is_set():
                    self._stop.wait(0.5)
                if self._stop.is_set():
                    break
                exited = next(p for p in procs if p.poll() is not None)  # the SuperNode first if both did
                which = "flower-supernode" if exited is self._proc else "the ClientApp runner"
                code = exited.returncode
                self._terminate()  # the pair restarts together: a runner needs its SuperNode's secret
                if time.monotonic() - started > 60:
                    backoff = 1.0
                log.warning("%s exited with code %s; restarting in %.0f s", which, code, backoff)
                self.restarts += 1
                if self.metrics is not None:
                    self.metrics.restarts.inc()
                if self._stop.wait(backoff):
                    break
                backoff = min(self.opts.max_backoff, backoff * 2)
        finally:
            self._terminate()
            if self.worker is not None:
                self.worker.close()
            if self.metrics is not None:
                self.metrics.close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _terminate(self) -> None:
        for p in (self._runner, self._proc):
            if p is not None:
                terminate_group(p)
        self._runner = None


def signal_group(pgid: int, sig: int) -> None:
    """Signal process group ``pgid`` if it still exists (a process started with ``start_new_session=True`` leads
    the group of its own pid)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_group(p: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``p`` (started with ``start_new_session=True``), SIGKILL it after ``grace``."""
    signal_group(p.pid, signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(p.pid, signal.SIGKILL)
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
