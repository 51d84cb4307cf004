"""fedhive's warm ClientApp runner (fedhive.client.runner): options, secret, the poll loop, and for real against
Flower's SuperNode in ``--isolation process``: the SuperExec secret is enforced, a raising ClientApp is answered with
Flower's error and the runner goes on, and a second FAB with the same module names gets its own code."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx
import pytest

from fedhive.client import runner as R
from fedhive.client.agent import Agent, AgentOptions, flower_command, flower_env, terminate_group
from fedhive.localcluster import LocalCluster, free_port

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("kwargs, needle", [
    ({"runtime_api_address": "nohost"}, "HOST:PORT"),
    ({"runtime_api_address": "127.0.0.1:1", "poll_interval": 0.0}, "poll-interval"),
    ({"runtime_api_address": "127.0.0.1:1", "poll_interval": float("nan")}, "poll-interval"),
    ({"runtime_api_address": "127.0.0.1:1", "poll_interval": "fast"}, "poll-interval"),
    ({"runtime_api_address": "127.0.0.1:1", "task_retry_seconds": -1}, "task-retry-seconds"),
])
def test_runner_options_refuse_bad_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        R.RunnerOptions(**kwargs)


def test_secret_is_private_random_and_an_empty_file_is_refused(tmp_path):
    a = R.write_secret(tmp_path / "a")
    b = R.write_secret(tmp_path / "b")
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert len(R.load_secret(str(a))) == 32 and R.load_secret(str(a)) != R.load_secret(str(b))
    assert R.load_secret("") is None
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        R.load_secret(str(tmp_path / "empty"))


def test_purge_drops_only_modules_of_other_fabs(tmp_path, monkeypatch):
    apps = tmp_path / "apps"
    names = {"fab_a_mod": apps / "a" / "m.py", "fab_b_mod": apps / "b" / "m.py", "outside_mod": tmp_path / "x.py"}
    for name, f in names.items():
        mod = types.ModuleType(name)
        mod.__file__ = str(f)
        monkeypatch.setitem(sys.modules, name, mod)
    assert R._purge_app_modules(apps / "b", apps) == 1
    assert "fab_a_mod" not in sys.modules
    assert "fab_b_mod" in sys.modules and "outside_mod" in sys.modules


def test_poll_loop_backs_off_on_errors_polls_fast_after_a_task_and_slows_when_idle(monkeypatch):
    sleeps = []
    now = [0.0]

    def sleep(dt):
        sleeps.append(round(dt, 4))
        now[0] += dt

    runner = R.WarmRunner(R.RunnerOptions("127.0.0.1:1", poll_interval=0.1, idle_poll=1.0, busy_window=10.0),
                          sleep=sleep)
    task = types.SimpleNamespace(task_id=7)
    script = [OSError("refused")] * 3 + [None] * 8 + [("tok", task)] + [None] * 120 + [("tok2", task)]
    answers = iter(script)

    def acquire():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    ran = []

    def run_task(token, task_id):
        ran.append((token, task_id))
        runner.tasks += 1
        return "completed"

    monkeypatch.setattr(runner, "acquire", acquire)
    monkeypatch.setattr(runner, "run_task", run_task)
    assert runner.run(max_tasks=2, clock=lambda: now[0]) == 2
    assert ran == [("tok", 7), ("tok2", 7)]
    assert runner.poll_errors == 3
    assert sleeps[:3] == [0.2, 0.4, 0.8]  # doubling while the SuperNode does not answer
    # idle from the start: slowing by 1.5x per empty poll up to the idle interval
    assert sleeps[3:11] == pytest.approx([0.15, 0.225, 0.3375, 0.5062, 0.7594, 1.0, 1.0, 1.0], abs=1e-3)
    after = sleeps[11:]
    busy = [s for s in after if s == pytest.approx(0.1)]
    assert after[:len(busy)] == busy  # fast first ...
    assert 99 <= len(busy) <= 101  # ... for the 10-s window after the task, at 0.1 s
    assert after[len(busy):len(busy) + 3] == pytest.approx([0.15, 0.225, 0.3375], abs=1e-3)  # then slowing
    assert max(after) == pytest.approx(1.0)


def _wait_runtime_api(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "flower-supernode exited"
        try:
            httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError("the SuperNode's Runtime API did not come up")


def test_only_the_runner_with_the_supernodes_secret_can_claim_its_tasks(tmp_path):
    """A real flower-supernode in --isolation process (no SuperLink needed for its Runtime API): AcquireTask signed
    with its secret is answered, with another secret or none it is refused."""
    secret = R.write_secret(tmp_path / "secret")
    port = free_port()
    cmd = [flower_command("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{free_port()}",
           "--port", str(port), "--isolation", "process", "--superexec-auth-secret-file", str(secret)]
    proc = subprocess.Popen(cmd, env=flower_env({"FLWR_HOME": str(tmp_path / "flwr")}), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_runtime_api(port, proc)
        ok = R.WarmRunner(R.RunnerOptions(f"127.0.0.1:{port}", auth_secret_file=str(secret)))
        assert ok.acquire() is None  # answered: nothing pending
        for wrong in (R.write_secret(tmp_path / "other"), None):
            bad = R.WarmRunner(R.RunnerOptions(f"127.0.0.1:{port}", auth_secret_file=str(wrong or "")))
            with pytest.raises(httpx.HTTPStatusError) as err:
                bad.acquire()
            assert err.value.response.status_code in (401, 403)
    finally:
        terminate_group(proc, grace=5)


def test_agent_runs_supernode_in_process_isolation_with_its_runner(tmp_path):
    assert AgentOptions(superlink="x:1").clientapp_runner == "warm"  # the default (README)
    agent = Agent(AgentOptions(superlink="10.0.0.1:8000", port=9300, state_dir=str(tmp_path), clientapp_runner="warm"))
    cmd = agent.command()
    assert cmd[cmd.index("--isolation") + 1] == "process"
    assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "superexec.secret")
    rcmd = agent.runner_command()
    assert rcmd[rcmd.index("--runtime-api-address") + 1] == "127.0.0.1:9300"
    assert rcmd[rcmd.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "superexec.secret")
    flower = Agent(AgentOptions(superlink="10.0.0.1:8000", clientapp_runner="flower", state_dir=str(tmp_path)))
    assert "--isolation" not in flower.command()
    with pytest.raises(ValueError, match="warm, flower"):
        AgentOptions(superlink="x:1", clientapp_runner="fast")


def test_warm_runner_answers_a_raising_clientapp_and_loads_each_fab_once_in_one_process(tmp_path):
    """One fedhive agent (warm runner) on a real SuperLink: a ClientApp that raises, or calls sys.exit, gets Flower's
    error reply and the next message is served by the same process; a second app with the same module names (another FAB) runs its own
    code, in that same process."""
    app1 = tmp_path / "app1"
    shutil.copytree(HERE / "runner_app", app1)
    app2 = tmp_path / "app2"
    shutil.copytree(HERE / "runner_app", app2)
    client2 = app2 / "runner_client.py"
    client2.write_text(client2.read_text().replace("VERSION = 1", "VERSION = 2"))
    cluster = LocalCluster(tmp_path / "c", emulate="none", data_dir=tmp_path / "data")
    try:
        cluster.start_superlink()
        cluster.add_agent("cpu", 0, 1, quota=None, worker=False, extra=["--clientapp-runner", "warm"])
        results = []
        for app, modes in ((app1, "raise,exit,echo,echo"), (app2, "echo")):
            out = tmp_path / f"{app.name}.json"
            res = cluster.flwr("run", str(app), cluster.connection, "--run-config", f"modes='{modes}' out='{out}'")
            assert res.returncode == 0, res.stdout + res.stderr
            end = time.monotonic() + 120
            while not out.exists() and time.monotonic() < end:
                time.sleep(0.5)
            assert out.exists(), _logs(cluster)
            time.sleep(0.3)
            results.append(json.loads(out.read_text()))
        (r_raise, r_exit, e1, e2), (f2,) = results
        assert r_raise["mode"] == "raise" and r_raise["error"] != 0 and "asked to raise" in r_raise["reason"]
        assert r_exit["mode"] == "exit" and r_exit["error"] != 0 and "SystemExit" in r_exit["reason"]
        assert e1["version"] == e2["version"] == 1
        assert f2["version"] == 2  # the second FAB's own module, not the cached first one
        assert e1["pid"] == e2["pid"] == f2["pid"]  # one warm process for all of them
        runner_pid = int((cluster.run_dir / "agents" / "agent0" / "runner.pid").read_text())
        assert e1["pid"] == runner_pid
    finally:
        cluster.close()
    assert not cluster.leftovers()


def _logs(cluster: LocalCluster) -> str:
    return "\n".join(f"== {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                     for p in sorted((cluster.run_dir / "logs").glob("*.log")))
