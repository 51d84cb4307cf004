"""A Flower cluster of real processes on this machine: what ``fedhive up``, the integration tests and the
orchestrator benchmark run.

One ``flower-superlink`` (``--database`` in the run folder, bound to 127.0.0.1), any number of ``fedhive agent``
processes (each a real ``flower-supernode`` with its own port) or bare SuperNodes, and ``flwr run`` submissions of
fedhive's Flower app. Device classes are emulated with a real CPU quota from the cgroup cpu controller when it is
writable (v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``), else with a per-step slowdown factor in the trainer; the
cluster says which (:attr:`LocalCluster.emulation`).

Every process is started in its own session and remembered by PID; :meth:`LocalCluster.close` (also on errors,
and from ``with``) stops each process group, then kills whatever is left in the cluster's cgroups.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedhive.client.agent import flower_command, flower_env, node_config_string, signal_group
from fedhive.runconfig import HEARTBEAT_FILE, STOP_GRACE, format_run_config

log = logging.getLogger("fedhive.cluster")

APP_DIR = Path(__file__).resolve().parent / "flower_app"

#: Emulated speed of each device class on this machine: the share of one core it may use.
CPU_QUOTAS: dict[str, float | None] = {"gpu": None, "cpu": 0.5, "rpi5": 0.35, "rpi4": 0.2, "rpi-zero2": 0.08}


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` in this (main) thread, so a ``LocalCluster``'s ``close`` still runs when
    a program using it is stopped by ``kill``, ``timeout`` or systemd, not only by Ctrl-C."""

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CpuCgroups:
    """CPU-quota cgroups under one parent (``fedhive-<pid>``), v1 or v2, or ``None`` where not writable."""

    def __init__(self, name: str) -> None:
        self.root: Path | None = None
        self.version = 0
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                self.root, self.version = v1 / name, 1
            elif (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
                self.root, self.version = v2 / name, 2
                subtree = v2 / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
            if self.root is not None:
                self.root.mkdir(exist_ok=True)
                if self.version == 2:
                    (self.root / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            log.info("cgroup cpu controller not writable (%s); emulating slow devices with a slowdown factor", exc)
            self.root, self.version = None, 0
        self.groups: list[Path] = []

    @property
    def available(self) -> bool:
        return self.root is not None

    def create(self, name: str, cores: float | None) -> Path | None:
        if self.root is None:
            return None
        path = self.root / name
        path.mkdir(exist_ok=True)
        period = 100_000
        if self.version == 1:
            (path / "cpu.cfs_period_us").write_text(str(period))
            (path / "cpu.cfs_quota_us").write_text(str(-1 if cores is None else max(1000, int(cores * period))))
        else:
            (path / "cpu.max").write_text(f"{'max' if cores is None else max(1000, int(cores * period))} {period}")
        self.groups.append(path)
        return path

    @staticmethod
    def procs(path: Path) -> list[int]:
        try:
            return [int(x) for x in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        for path in self.groups:
            for _ in range(3):
                pids = self.procs(path)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)

    def remove(self) -> None:
        self.kill_all()
        for path in reversed(self.groups):
            try:
                path.rmdir()
            except OSError:
                pass
        if self.root is not None:
            try:
                self.root.rmdir()
            except OSError:
                pass


def _join_cgroup(path: Path | None):  # runs in the child between fork and exec
    if path is None:
        return None

    def move() -> None:
        (path / "cgroup.procs").write_text(str(os.getpid()))

    return move


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    device_class: str = ""
    cgroup: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class LocalCluster:
    """Processes of one local Flower cluster, all under ``run_dir``.

    Parameters
    ----------
    run_dir
        Logs (``logs/``), ``state.db``, ``flwr/`` (FLWR_HOME with the connection ``up``) and agent folders.
    port
        The SuperLink's port on 127.0.0.1 (default: a free one).
    emulate
        ``"auto"`` (cgroup quota if writable, else slowdown), ``"cgroup"``, ``"slowdown"`` or ``"none"``.
    host
        The address the SuperLink binds (default ``127.0.0.1``; a test's private network, e.g. the host side of
        :class:`fedhive.faults.netns.Netns`, for nodes in another network namespace).
    secure
        TLS and Flower's node authentication: a CA and server certificate in ``certs/`` (:func:`fedhive.security.make_tls`,
        SAN ``host``, ``localhost``, ``127.0.0.1``); the SuperLink runs ``--ssl-* --enable-supernode-auth``; every
        agent or SuperNode gets its own ECDSA P-384 key in ``certs/nodes/``, registered with ``flwr supernode
        register`` before it starts; ``flwr`` verifies the SuperLink with ``root-certificates``. :attr:`tls` then
        names the files (the model store serves the same certificate: :meth:`store_settings`).
    """

    def __init__(self, run_dir: str | Path, *, port: int | None = None, emulate: str = "auto",
                 data_dir: str | Path | None = None, host: str = "127.0.0.1", secure: bool = False) -> None:
        if emulate not in ("auto", "cgroup", "slowdown", "none"):
            raise ValueError(f"emulate must be auto, cgroup, slowdown or none, got {emulate!r}")
        self.run_dir = Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self.port = port or free_port()
        self.host = host
        self.address = f"{host}:{self.port}"
        self.flwr_home = self.run_dir / "flwr"
        self.flwr_home.mkdir(exist_ok=True)
        self.secure = secure
        self.tls = None
        if secure:
            from fedhive.security import make_tls

            self.tls = make_tls(self.run_dir / "certs", [host])
        transport = (f'root-certificates = "{self.tls.ca}"' if self.tls else "insecure = true")
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "up"\n\n[superlink.up]\naddress = "{self.address}"\n{transport}\n')
        self.data_dir = Path(data_dir) if data_dir else None
        self.procs: list[Proc] = []
        self.server_pids: set[int] = set()  # ServerApps seen in a status.json (Flower's SuperExec starts them)
        self.cgroups: CpuCgroups | None = None
        if emulate in ("auto", "cgroup"):
            self.cgroups = CpuCgroups(f"fedhive-{os.getpid()}-{self.port}")
            if not self.cgroups.available:
                if emulate == "cgroup":
                    raise RuntimeError("emulate='cgroup' but the cgroup cpu controller is not writable here; "
                                       "run as root with /sys/fs/cgroup/cpu (v1) or a delegated v2 cgroup, or use "
                                       "emulate='slowdown'")
                self.cgroups = None
        self.emulation = "cgroup" if self.cgroups else ("none" if emulate == "none" else "slowdown")
        self._agents = 0
        self.superlink: Proc | None = None
        self.connection = "up"  # the SuperLink connection in flwr_home/config.toml that flwr commands use
        self.same_host = True  # ServerApp pids in status.json are this host's (see attach)
        self.env = flower_env({"FLWR_HOME": str(self.flwr_home)})

    @classmethod
    def attach(cls, work_dir: str | Path, flwr_home: str | Path, connection: str) -> "LocalCluster":
        """A cluster this process did not start (e.g. compose's): ``submit``, ``wait_status`` and ``supervise`` go to
        the SuperLink named ``connection`` in ``flwr_home/config.toml``; nothing is started or stopped, and the
        ServerApp's pid in ``status.json`` (another host's or container's) is not watched: a lost run is noticed by
        the run folder's heartbeat file going stale, or through Flower's run status. ``work_dir`` takes the logs."""
        flwr_home = Path(flwr_home)
        config = flwr_home / "config.toml"
        if not config.is_file():
            raise FileNotFoundError(f"{config} does not exist: FLWR_HOME must hold Flower's config.toml with the "
                                    f"connection {connection!r} (see deploy/flwr/config.toml)")
        if f"[superlink.{connection}]" not in config.read_text(errors="replace"):
            raise ValueError(f"{config} has no [superlink.{connection}] section: name one of its connections")
        self = cls.__new__(cls)
        self.run_dir = Path(work_dir).resolve()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.port, self.address = 0, ""
        self.flwr_home, self.connection, self.same_host = flwr_home, connection, False
        self.data_dir, self.procs, self.server_pids, self.cgroups = None, [], set(), None
        self.emulation, self._agents, self.superlink = "none", 0, None
        self.secure, self.tls = False, None
        self.env = flower_env({"FLWR_HOME": str(flwr_home)})
        return self

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, cmd: list[str], *, cgroup: Path | None = None, device_class: str = "",
               env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.run_dir / "logs" / f"{name}.log"
        out = open(log_path, "ab")
        try:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(env or self.env), cwd=self.run_dir, start_new_session=True,
                                     preexec_fn=_join_cgroup(cgroup))
        finally:
            out.close()
        proc = Proc(name, popen, log_path, device_class, cgroup)
        self.procs.append(proc)
        log.info("started %s (pid %s)", name, popen.pid)
        return proc

    def start_superlink(self, timeout: float = 60.0) -> Proc:
        cmd = [flower_command("flower-superlink"), *self._superlink_security(), "--host", self.host,
               "--port", str(self.port), "--database", str(self.run_dir / "state.db")]
        proc = self._spawn("superlink", cmd)
        self.superlink = proc
        self.wait_health(timeout, proc)
        return proc

    def _superlink_security(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth"]

    def wait_health(self, timeout: float, proc: Proc | None = None) -> None:
        """Until the SuperLink's ``/health`` answers (over TLS, verified with our CA, when secure)."""
        if self.tls is None:
            return self.wait_http(f"http://{self.address}/health", timeout, proc)
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        return self.wait_http(f"https://{self.address}/health", timeout, proc, context=ctx)

    def node_security(self, name: str) -> list[str]:
        """The transport and authentication arguments of a ``flower-supernode`` (or ``fedhive agent``) named
        ``name``; when secure, makes its key and registers it with the SuperLink first (``flwr supernode
        register``: the SuperLink must be up)."""
        if self.tls is None:
            return ["--insecure"]
        from fedhive.security import make_node_key

        private, public = make_node_key(self.run_dir / "certs" / "nodes", name)
        register_node_key(public, self.connection, self.env, cwd=self.run_dir, name=name)
        return ["--root-certificates", str(self.tls.ca), "--auth-supernode-private-key", str(private)]

    def store_settings(self) -> dict[str, str]:
        """Run-config keys for the model store's TLS (the SuperLink's certificate; devices verify with the CA)."""
        if self.tls is None:
            return {}
        return {"tls-certfile": str(self.tls.cert), "tls-keyfile": str(self.tls.key), "store-ca": str(self.tls.ca)}

    def wait_http(self, url: str, timeout: float, proc: Proc | None = None, context: Any = None) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=context):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")

    def add_agent(self, device_class: str, partition_id: int, num_partitions: int, *, worker: bool = True,
                  quota: float | None | str = "class", extra: list[str] | None = None,
                  prefix: Sequence[str] = (), superlink: str | None = None) -> Proc:
        """Start ``fedhive agent`` emulating ``device_class`` (CPU quota from :data:`CPU_QUOTAS` by default);
        ``prefix`` goes before the command (e.g. ``ip netns exec NS``: the agent in another network namespace);
        ``superlink`` is the address it connects to (default the SuperLink's own; e.g. a gateway in front of it)."""
        i = self._agents
        self._agents += 1
        cores = CPU_QUOTAS.get(device_class) if quota == "class" else quota
        cgroup = None
        slowdown = 1.0
        if self.cgroups is not None:
            cgroup = self.cgroups.create(f"agent{i}-{device_class}", cores)  # type: ignore[arg-type]
        elif self.emulation == "slowdown" and cores:
            slowdown = 1.0 / float(cores)  # type: ignore[arg-type]
        name = f"agent{i}-{device_class}"
        cmd = [sys.executable, "-m", "fedhive.cli", "agent", "--superlink", superlink or self.address,
               *self.node_security(name),
               "--partition-id", str(partition_id), "--num-partitions", str(num_partitions),
               "--device-class", device_class, "--port", str(free_port()),
               "--state-dir", str(self.run_dir / "agents" / f"agent{i}"), "--slowdown", f"{slowdown:g}",
               # The emulated devices share this machine's cores: one torch thread each (more make every agent's
               # OpenMP threads wait for the others'; see fedhive.client.trainer.default_threads).
               "--torch-threads", "1"]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        if not worker:
            cmd.append("--no-worker")
        cmd = list(prefix) + cmd + list(extra or [])
        return self._spawn(name, cmd, cgroup=cgroup, device_class=device_class)

    def add_supernode(self, node_config: Mapping[str, Any], name: str | None = None) -> Proc:
        """A bare ``flower-supernode`` (no agent, no worker): e.g. for a stock Flower ClientApp."""
        i = self._agents
        self._agents += 1
        name = name or f"supernode{i}"
        cmd = [flower_command("flower-supernode"), *self.node_security(name), "--superlink", self.address,
               "--port", str(free_port()), "--node-config", node_config_string(node_config)]
        return self._spawn(name, cmd)

    def stop_pgid(self, pgid: int, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to process group ``pgid`` (e.g. an agent's SuperNode, from ``agents/*/supernode.pid``)."""
        signal_group(pgid, sig)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to ``proc``'s whole process group (SIGKILL: no goodbye, as a device losing power)."""
        signal_group(proc.pid, sig)

    # ------------------------------------------------------------------ runs
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([flower_command("flwr"), *args], env=self.env, cwd=self.run_dir, capture_output=True,
                              text=True, timeout=timeout)

    def submit(self, run_config: Mapping[str, Any], app_dir: str | Path = APP_DIR) -> int:
        """``flwr run`` the app with ``run_config``; returns the Flower run id. On a secure cluster fedhive's app
        also serves its model store over TLS with the SuperLink's certificate (:meth:`store_settings`, unless the
        run config sets those keys)."""
        if Path(app_dir).resolve() == Path(APP_DIR).resolve():
            run_config = {**self.store_settings(), **run_config}
        res = self.flwr("run", str(app_dir), self.connection, "--format", "json", "--run-config",
                        format_run_config(run_config))
        try:
            text = res.stdout
            payload = json.loads(text[text.index("{"): text.rindex("}") + 1]) if "{" in text else {}
        except ValueError:
            payload = {}
        if res.returncode != 0 or not payload.get("success"):
            raise RuntimeError(f"flwr run failed (exit {res.returncode}): {res.stdout.strip()} {res.stderr.strip()}")
        return int(payload["run-id"])

    def run_status(self, run_id: int) -> str:
        """Flower's status of ``run_id`` (e.g. ``running``, ``finished:completed``, ``finished:failed``)."""
        res = self.flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            runs = json.loads(res.stdout).get("runs", [])
        except json.JSONDecodeError:
            return "unknown"
        for r in runs:
            if str(r.get("run-id")) == str(run_id):
                return str(r.get("status", "unknown"))
        return "unknown"

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), self.connection, timeout=60)

    def wait_status(self, run_dir: str | Path, states: tuple[str, ...] = ("finished", "failed", "stopped"), timeout: float = 600,
                    run_id: int | None = None, poll: float = 1.0, on_status=None,
                    stale_pids: Sequence[int] = ()) -> dict[str, Any]:
        """Wait until ``run_dir/status.json`` says one of ``states`` (or the run is lost).

        A run is lost, and reported as ``failed`` with a ``lost`` reason, when Flower says it ended without the server
        app saying so (``flower_status``; a ServerApp still alive gets ``STOP_GRACE`` seconds to write its final
        files), when the SuperLink process this cluster started has exited (``superlink``), or when the ServerApp is
        gone while ``status.json`` says ``running`` (``server_app``): on this machine, its pid named there has exited
        (only for a ``status.json`` written since this wait began); for a cluster made by :meth:`attach` (another
        host's ServerApp), the run folder's heartbeat file, touched every 2 s by the ServerApp, is 10 s old. A
        ``status.json`` written by one of ``stale_pids`` (an earlier attempt's ServerApp) counts as none yet.
        """
        path = Path(run_dir) / "status.json"
        end = time.monotonic() + timeout
        started = time.time()
        last_flower = 0.0
        flower_done: float | None = None  # when Flower first said the run ended
        status: dict[str, Any] = {}
        while time.monotonic() < end:
            status = _read_status(path)
            if status.get("pid") in stale_pids:
                status = {}
            if isinstance(status.get("pid"), int) and self.same_host:
                self.server_pids.add(status["pid"])
            if on_status is not None and status:
                on_status(status)
            if status.get("state") in states:
                return status
            if self.superlink is not None and not self.superlink.alive():
                return {**status, "state": "failed", "lost": "superlink"}
            pid = status.get("pid") if self.same_host else None
            beat = _mtime(Path(run_dir) / HEARTBEAT_FILE)  # fedhive.server.app touches it every 2 s
            if not self.same_host and status.get("state") == "running" and started <= beat < time.time() - 10.0:
                time.sleep(0.5)  # another host's ServerApp stopped beating: it is gone (unless it just finished)
                again = _read_status(path)
                if again.get("state") in states:
                    return again
                return {**status, "state": "failed", "lost": "server_app"}
            if status.get("state") == "running" and isinstance(pid, int) and not _pid_alive(pid) \
                    and _mtime(path) >= started:  # (an older status.json: a ServerApp that died before this wait)
                time.sleep(0.5)
                again = _read_status(path)
                if again.get("state") in states:
                    return again
                return {**status, "state": "failed", "lost": "server_app"}
            if run_id is not None and (flower_done is not None or time.monotonic() - last_flower > 10):
                last_flower = time.monotonic()
                flower_state = self.run_status(run_id) if flower_done is None else "finished"
                if flower_state.startswith("finished"):
                    flower_done = flower_done or time.monotonic()
                    if self.same_host:
                        alive = isinstance(pid, int) and _pid_alive(pid)
                    else:  # another host's ServerApp: alive while its heartbeat file is fresh (touched every 2 s)
                        alive = time.time() - beat < 10.0
                    # A ServerApp still alive may be writing its final files (``flwr stop``: Flower says "finished"
                    # at once; the server app needs a few seconds to write its checkpoint, up to STOP_GRACE).
                    if not alive or time.monotonic() - flower_done > STOP_GRACE + 5.0:
                        time.sleep(1.0)
                        status = _read_status(path)
                        if status.get("state") not in states:
                            status = {**status, "state": "failed", "flower_status": flower_state, "lost": "flower"}
                        return status
            time.sleep(poll)
        raise TimeoutError(f"{path} did not reach {states} within {timeout:.0f} s (last: {status.get('state')})")

    def supervise(self, run_config: Mapping[str, Any], *, app_dir: str | Path = APP_DIR, timeout: float = 600,
                  max_restarts: int = 3, on_status=None, on_restart=None) -> tuple[dict[str, Any], int]:
        """Submit the run and see it through: "submit or resume".

        A run config that does not set ``resume`` continues the run in its ``run-dir`` when that folder holds a
        checkpoint of the same run that did not finish (:func:`resumable`); else it starts a new run (which moves
        other checkpoints there aside). When the run is lost (the ServerApp killed, the SuperLink gone, Flower failing it) and its run folder holds
        a checkpoint, start the SuperLink again if it exited (same ``--database``: the SuperNodes reconnect with
        their node ids) and submit the same run config with ``resume=true``, up to ``max_restarts`` times. A run
        the server app itself reports as ``failed`` (bad settings, a crash it caught) is not retried. Returns the
        final status and the number of restarts; ``on_restart(attempt, status)`` is told of each.
        """
        run_dir = Path(str(run_config["run-dir"]))
        config = dict(run_config)
        if "resume" not in config:
            found = resumable(run_dir, config)
            config["resume"] = found is not None
            if found is not None:
                log.warning("%s holds an unfinished run with this run config: resuming it from %s (set resume=false "
                            "for a new run)", run_dir, found.name)
        stale: list[int] = []
        restarts = 0
        end = time.monotonic() + timeout
        while True:
            run_id = self._submit_retrying(config, app_dir, end)
            status = self.wait_status(run_dir, run_id=run_id, timeout=max(1.0, end - time.monotonic()),
                                      on_status=on_status, stale_pids=stale)
            if status.get("state") == "finished" or not status.get("lost"):
                return {**status, "restarts": restarts}, restarts
            from fedhive.engine import checkpoint as ckpt

            if restarts >= max_restarts or not ckpt.checkpoints(run_dir / "checkpoints"):
                return {**status, "restarts": restarts}, restarts
            restarts += 1
            if isinstance(status.get("pid"), int):
                stale.append(status["pid"])
            if on_restart is not None:
                on_restart(restarts, status)
            log.warning("run %s lost (%s); resuming from its newest checkpoint (restart %d of %d)", run_id,
                        status.get("lost"), restarts, max_restarts)
            if self.superlink is not None and not self.superlink.alive():
                self.start_superlink()
                time.sleep(8.0)  # the SuperNodes reconnect in 4-7 s (shared/FLOWER_1_42.md)
            else:
                try:
                    self.stop_run(run_id)
                except Exception:  # noqa: BLE001 - it may be gone already
                    pass
            config = {**config, "resume": True}

    def _submit_retrying(self, config: Mapping[str, Any], app_dir: str | Path, end: float,
                         patience: float = 180.0) -> int:
        """``submit``, retried every 5 s while the SuperLink does not take it (restarting), for at most ``patience``
        seconds (a refusal that lasts longer is not a restart: it is raised) and while time remains."""
        give_up = min(end, time.monotonic() + patience)
        while True:
            try:
                return self.submit(config, app_dir=app_dir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() + 5.0 >= give_up:
                    raise
                log.warning("submitting failed (%s); retrying in 5 s", str(exc)[:300])
                time.sleep(5.0)

    # ------------------------------------------------------------------ shutdown
    def _groups(self) -> list[int]:
        """Process groups this cluster is responsible for: each process it started, and each agent's SuperNode and
        ClientApp runner."""
        groups = [p.pid for p in self.procs]
        for f in [*(self.run_dir / "agents").glob("*/supernode.pid"), *(self.run_dir / "agents").glob("*/runner.pid")]:
            try:
                groups.append(int(f.read_text().strip()))
            except (OSError, ValueError):
                pass
        return groups

    def _server_apps(self) -> set[int]:
        """The ServerApps of this cluster's SuperLink: the pids ``wait_status`` saw, and every live ``flwr-serverapp``
        whose environment has this cluster's ``FLWR_HOME`` (the SuperLink's SuperExec passes its environment on;
        a ServerApp outlives its SuperExec, re-parented, so a cluster closed before ``wait_status`` saw its
        ``status.json`` would otherwise leave it running)."""
        pids = {p for p in self.server_pids if _pid_alive(p)}
        if not self.same_host:
            return pids
        mark = b"FLWR_HOME=" + str(self.flwr_home).encode() + b"\0"
        for d in Path("/proc").glob("[0-9]*"):
            try:
                if b"flwr-serverapp" in (d / "cmdline").read_bytes() and mark in (d / "environ").read_bytes() + b"\0":
                    pid = int(d.name)
                    if _pid_alive(pid):
                        pids.add(pid)
            except (OSError, ValueError):
                continue
        return pids

    def leftovers(self) -> list[int]:
        """PIDs still alive in this cluster's process groups or cgroups, and its ServerApps (see _server_apps)."""
        groups = set(self._groups())
        pids = list(self._server_apps())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) in groups:
                pids.append(int(stat.parent.name))
        if self.cgroups is not None:
            for g in self.cgroups.groups:
                pids += self.cgroups.procs(g)
        return sorted(set(pids))

    def close(self, grace: float = 8.0) -> None:
        """Stop every process this cluster started (SIGTERM to each process group, SIGKILL after ``grace``
        seconds), the agents' SuperNodes and their ClientApps included, and remove the cgroups."""
        apps = self._server_apps()  # before the SuperLink goes: a ServerApp is re-parented, not in our groups
        for pgid in reversed(self._groups()):
            signal_group(pgid, signal.SIGTERM)
        for pid in apps:
            _signal_pid(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while self.leftovers() and time.monotonic() < end:
            time.sleep(0.2)
        for pgid in reversed(self._groups()):
            signal_group(pgid, signal.SIGKILL)
        for pid in apps | self._server_apps():
            _signal_pid(pid, signal.SIGKILL)
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) survived SIGKILL", proc.name, proc.pid)
        if self.cgroups is not None:
            self.cgroups.remove()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_node_key(public_key: str | Path, connection: str, env: Mapping[str, str], *, cwd: str | Path | None = None,
                      name: str | None = None, timeout: float = 60.0) -> str:
    """Register a SuperNode's public key with the SuperLink of ``connection`` through Flower's own ``flwr supernode
    register``. Returns ``"registered"``, or ``"already registered"`` when the SuperLink has the key already (a
    restarted deployment registers again: that is not an error); raises ``RuntimeError`` with Flower's message on
    anything else (unreachable SuperLink, a key that is not ECDSA on a NIST curve, ...)."""
    public_key = Path(public_key)
    if not public_key.is_file():
        raise FileNotFoundError(f"public key {public_key} does not exist (make one with ssh-keygen -t ecdsa -b 384 "
                                f"or deploy/certs/generate.sh)")
    cmd = [flower_command("flwr"), "supernode", "register", str(public_key), connection, "--format", "json"]
    if name:
        cmd += ["--name", name]
    res = subprocess.run(cmd, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    text = res.stdout
    try:
        payload = json.loads(text[text.index("{"): text.rindex("}") + 1])
    except ValueError:
        payload = {}
    if payload.get("success"):
        return "registered"
    message = str(payload.get("error-message") or (text + res.stderr).strip())
    if "already in use" in message:
        return "already registered"
    raise RuntimeError(f"flwr supernode register {public_key} {connection} failed: {message[-600:]}")


def resumable(run_dir: str | Path, run_config: Mapping[str, Any]) -> Path | None:
    """The newest checkpoint in ``run_dir/checkpoints`` that this run config would continue, or ``None``.

    A checkpoint qualifies when its fingerprint names the same task, seed, partitioning and strategy as
    ``run_config`` (the ServerApp checks the rest, tensors and strategy config, when it resumes) and the run did not
    finish (``status.json`` does not say ``finished``: a finished run is not resumed, a new submit starts a new run;
    ``failed``, ``stopped`` or a lost ``running`` one is). Unreadable checkpoints are skipped.
    """
    from fedhive.engine import checkpoint as ckpt
    from fedhive.server.settings import RunSettings

    run_dir = Path(run_dir)
    if _read_status(run_dir / "status.json").get("state") == "finished":
        return None
    settings = RunSettings.from_config({k: v for k, v in run_config.items() if k != "resume"})
    want = ckpt.normalize_fingerprint({
        "task": settings["task"], "seed": settings["seed"], "strategy": settings["strategy"],
        "partitioning": {"num_partitions": settings["num-partitions"], "partition": settings["partition"],
                         "alpha": settings["alpha"]}})
    for path in reversed(ckpt.checkpoints(run_dir / "checkpoints")):
        try:
            fp = ckpt.fingerprint_of(path)
        except ValueError:
            continue
        if fp is not None and all(fp.get(k) == v for k, v in want.items()):
            return path
    return None


def _read_status(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _signal_pid(pid: int, sig: int) -> None:
    """Signal ``pid`` if it is still a ServerApp (a pid reused by another process is left alone)."""
    try:
        if b"flwr-serverapp" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        os.kill(pid, sig)
    except (OSError, ValueError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
