"""fedhive's warm ClientApp runner: Flower's SuperExec role for a SuperNode in ``--isolation process``.

Flower 1.42's SuperNode runs every message in a new ``flwr-clientapp`` process, which its ``flower-superexec``
launches after polling the SuperNode's Runtime API once a second. That costs ~2.4 s per message on this kind of
machine (a Python start, Flower's imports, the app's imports), more than a typical task's training. With
``flower-supernode --isolation process`` nothing is launched for us; this runner takes the launcher's place:

- it polls the SuperNode's Runtime API (``AcquireTask``, HMAC-signed with the SuperExec secret the SuperNode was
  given, so no other local process can claim this node's tasks): every ``poll_interval`` seconds (0.1) for
  ``busy_window`` seconds (10) after a task, when the next one is due (the SuperNode pulls from the SuperLink every
  3 s), then slowing by 1.5x per empty poll to ``idle_poll`` (1 s, Flower's own launcher's interval), so an idle
  device pays what it pays with Flower (measured: 0.1-s polls cost 6 % of an x86 core, SuperNode and runner);
- for each task it does what ``flwr-clientapp`` does, through Flower's own functions and with the task's token
  (``PullTaskInput``/``PullMessages``, a task heartbeat, the FAB installed once per hash, ``ClientApp(message,
  context)``, ``PushMessages`` of the reply, ``PushTaskOutput`` of the status and context), but in this long-lived
  process: the ClientApp is loaded once per FAB and Flower and the app's modules stay imported.

One task at a time, as the SuperNode hands them out. A ClientApp that raises is answered with Flower's error reply
(``CLIENT_APP_RAISED_EXCEPTION`` / ``LOAD_CLIENT_APP_EXCEPTION``), as ``flwr-clientapp`` would, and the runner
goes on. Modules imported from one FAB's folder are dropped before another FAB is loaded, so two apps that both ship
e.g. a ``client`` module do not see each other's code. What it cannot give is a process per message: a ClientApp
that leaks memory or crashes the interpreter affects the next message (the agent restarts a runner that exits).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("fedhive.runner")

CLIENT_APP_TASK = "flwr-clientapp"
# The method Flower's SuperNode protects with the SuperExec secret (flwr.supercore.superexec.run_superexec).
_AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
_RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass
class RunnerOptions:
    runtime_api_address: str  # HOST:PORT of the SuperNode's Runtime API (its --port)
    auth_secret_file: str = ""  # the file given to flower-supernode --superexec-auth-secret-file
    poll_interval: float = 0.1  # seconds between AcquireTask polls while the node is busy (see busy_window)
    idle_poll: float = 1.0  # the longest interval once idle (Flower's launcher polls every 1 s)
    busy_window: float = 10.0  # seconds after a task during which the next one is expected: poll_interval
    task_retry_seconds: float = 30.0  # how long one task's Runtime API calls are retried (SuperNode restarting)

    def __post_init__(self) -> None:
        from fedhive.strategies.params import number

        if not isinstance(self.runtime_api_address, str) or ":" not in self.runtime_api_address:
            raise ValueError(f"runtime API address {self.runtime_api_address!r} must be HOST:PORT")
        self.poll_interval = number("poll-interval", self.poll_interval, low=0.01, high=60.0)
        self.idle_poll = number("idle-poll", self.idle_poll, low=self.poll_interval, high=60.0)
        self.busy_window = number("busy-window", self.busy_window, low=0.0, high=3600.0)
        self.task_retry_seconds = number("task-retry-seconds", self.task_retry_seconds, low=0.0, high=3600.0)


def load_secret(path: str) -> bytes | None:
    """The SuperExec secret from ``path`` (raw bytes, as Flower reads it); None for no path."""
    if not path:
        return None
    data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"SuperExec secret file {path} is empty; write random bytes to it (fedhive agent does)")
    return data


def write_secret(path: Path) -> Path:
    """A fresh 32-byte SuperExec secret at ``path``, mode 600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, 0o600)
    return path


def _retry_invoker(max_time: float | None, max_tries: int | None):
    """Flower's RetryInvoker for Runtime API calls, without Flower's single-task behaviour of interrupting its own
    process on a 401 (this process outlives every task): transport errors and 502/503/504 are retried with
    exponential back-off, any other HTTP error is raised to the caller."""
    import httpx
    from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential

    def giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code not in _RETRYABLE_STATUS
        return False

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(max_delay=5.0),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=max_tries,
        max_time=max_time,
        should_giveup=giveup,
    )


def _purge_app_modules(keep: Path, apps_dir: Path) -> int:
    """Drop from ``sys.modules`` every module loaded from a FAB folder under ``apps_dir`` other than ``keep``."""
    dropped = 0
    for name, module in list(sys.modules.items()):
        f = getattr(module, "__file__", None)
        if not f:
            continue
        p = Path(f)
        try:
            p.relative_to(apps_dir)
        except ValueError:
            continue
        try:
            p.relative_to(keep)
            continue
        except ValueError:
            pass
        del sys.modules[name]
        dropped += 1
    return dropped


class WarmRunner:
    """Runs the ClientApp tasks of one SuperNode in this process (see the module docstring)."""

    def __init__(self, opts: RunnerOptions, *, sleep: Callable[[float], Any] | None = None) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        self.opts = opts
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        secret = load_secret(opts.auth_secret_file)
        if secret is not None:
            interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=_AUTH_METHODS))
        self.client = RuntimeHttpClient.from_server_address(
            server_address=opts.runtime_api_address, insecure=True, root_certificates=None,
            interceptors=interceptors, retry_invoker=_retry_invoker(max_time=None, max_tries=1))
        self._apps: dict[str, Any] = {}  # FAB hash -> ClientApp
        self._current_dir: Path | None = None
        self.tasks = 0
        self.failed = 0
        self.poll_errors = 0

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        self._stop.set()

    def acquire(self) -> tuple[str, Any] | None:
        """One ``AcquireTask`` poll: ``(token, task)`` or None."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
        if res.HasField("task") and res.token:
            return res.token, res.task
        return None

    def run(self, max_tasks: int = 0, clock: Callable[[], float] = time.monotonic) -> int:
        """Poll and run tasks until :meth:`stop` (or ``max_tasks`` tasks, when > 0). Returns the tasks run."""
        o = self.opts
        backoff = o.poll_interval
        interval = o.poll_interval
        last_task = -math.inf  # idle from the start: a fresh node waits for its first message at the idle pace
        while not self._stop.is_set():
            try:
                got = self.acquire()
                backoff = o.poll_interval
            except Exception as exc:  # the SuperNode restarting, or not up yet: keep polling, slower
                self.poll_errors += 1
                if self.poll_errors == 1 or self.poll_errors % 100 == 0:
                    log.warning("runner: the SuperNode's Runtime API at %s did not answer (%s); retrying",
                                o.runtime_api_address, exc)
                backoff = min(5.0, backoff * 2)
                self._sleep(backoff)
                continue
            if got is None:
                if clock() - last_task < o.busy_window:
                    interval = o.poll_interval
                else:
                    interval = min(o.idle_poll, interval * 1.5)
                self._sleep(interval)
                continue
            token, task = got
            try:
                self.run_task(token, getattr(task, "task_id", 0))
            except Exception as exc:  # the runner outlives a task whose bookkeeping failed (Flower expires it)
                self.tasks += 1
                self.failed += 1
                log.error("runner: task %s could not be completed: %s", getattr(task, "task_id", 0), exc)
            last_task = clock()
            interval = o.poll_interval
            if max_tasks and self.tasks >= max_tasks:
                break
        self.client.close()
        return self.tasks

    # ------------------------------------------------------------------ one task
    def _load(self, run: Any, fab: Any) -> Any:
        """The ClientApp of ``fab``, installed and imported once per FAB hash."""
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.config import get_project_dir
        from flwr.supercore.utils import get_flwr_home

        key = fab.hash_str
        app_dir = get_project_dir(run.fab_id, run.fab_version, key)
        if self._current_dir is not None and self._current_dir != app_dir:
            dropped = _purge_app_modules(app_dir, get_flwr_home() / "apps")
            if dropped:
                log.info("runner: new FAB %s; dropped %d modules of the previous one", key[:12], dropped)
                self._apps.clear()
        self._current_dir = app_dir
        app = self._apps.get(key)
        if app is None:
            if not app_dir.is_dir():
                install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = load(run.fab_id, run.fab_version, key)
            self._apps[key] = app
        return app

    def run_task(self, token: str, task_id: int = 0) -> str:
        """Run the task whose token is ``token`` as ``flwr-clientapp`` would; returns Flower's sub-status."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        started = time.monotonic()
        invoker = _retry_invoker(max_time=self.opts.task_retry_seconds or None, max_tries=None)
        client = RuntimeHttpClient.from_server_address(
            server_address=self.opts.runtime_api_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=invoker)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            app = self._load(run, fab)
            reply = app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except (Exception, SystemExit) as ex:  # as flwr-clientapp: an error reply, the reason in the task's status
            # (a ClientApp calling sys.exit() ends its own process under Flower's launcher; here it fails its task)
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code, reason = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, \
                    "An exception was raised when attempting to load `ClientApp`"
            log.error("runner: task %s: the ClientApp raised %s", task_id, reason, exc_info=ex)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:  # the SuperNode went away: Flower expires the task
                log.error("runner: task %s: pushing the reply failed: %s", task_id, ex)
                sub_status, details = SubStatus.FAILED, f"pushing the reply failed: {ex}"
            invoker.max_tries = 1
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        self.tasks += 1
        if sub_status != SubStatus.COMPLETED:
            self.failed += 1
        log.debug("runner: task %s %s in %.3f s", task_id, sub_status, time.monotonic() - started)
        return sub_status


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fedhive-runner", description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime-api-address", required=True, help="HOST:PORT of the SuperNode's Runtime API")
    p.add_argument("--superexec-auth-secret-file", default="", help="the SuperNode's SuperExec secret file")
    p.add_argument("--poll-interval", type=float, default=0.1, help="seconds between polls while busy")
    p.add_argument("--idle-poll", type=float, default=1.0, help="the longest interval between polls once idle")
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("FEDHIVE_LOG", "INFO"), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per poll
    try:
        opts = RunnerOptions(args.runtime_api_address, args.superexec_auth_secret_file, args.poll_interval,
                             idle_poll=args.idle_poll)
        runner = WarmRunner(opts)
    except (ValueError, OSError) as exc:
        print(f"fedhive runner: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    if args.parent_pid:
        def watch() -> None:
            while not runner._stop.wait(1.0):
                try:
                    os.kill(args.parent_pid, 0)
                except ProcessLookupError:
                    log.warning("runner: parent %s is gone; stopping", args.parent_pid)
                    runner.stop()
        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    runner.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
