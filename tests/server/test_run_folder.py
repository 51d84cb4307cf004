"""Run folders: fingerprints, another run's checkpoints, walking back over damaged files, leftovers, full disks."""

import errno
import os
import signal
import json
import logging
import re
import zipfile

import numpy as np
import pytest

from fedhive.engine import Orchestrator, StopCondition, VirtualTransport
from fedhive.engine import checkpoint as ckpt
from fedhive.server import app as server_app
from fedhive.server.settings import RunSettings
from fedhive.strategies import build
from scripted import durations, pull_toward, run, scenario

MINE = {"task": "mnist1d", "seed": 0}
OTHER = {"task": "synthetic", "seed": 3}
STOP = StopCondition(max_time=20.0)


def evaluate(params):
    return {"accuracy": float(1.0 / (1.0 + np.abs(params[0]).sum())), "loss": float(np.abs(params[0]).sum())}


def orchestrator(fingerprint=MINE, strategy="fedasync", **kw):
    cls, targets, speeds, _ = scenario()
    transport = VirtualTransport(cls, durations(speeds, 0.3), pull_toward(targets))
    return Orchestrator(build(strategy), transport, stop=STOP, evaluate=evaluate, eval_every_versions=3,
                        fingerprint=fingerprint, **kw)


def other_runs_checkpoints(directory, versions=(498, 499, 500)):
    """Real checkpoints of another run (another task), renamed to high versions, in ``directory``."""
    run("fedasync", stop=StopCondition(max_versions=len(versions)), checkpoint_dir=directory / "tmp",
        checkpoint_every=1, keep_checkpoints=0, fingerprint=OTHER)
    for v, path in zip(versions, ckpt.checkpoints(directory / "tmp")[-len(versions):]):
        path.rename(ckpt.checkpoint_path(directory, v))


def damage(path, kind):
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "zero_length":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(2).bytes(len(raw)))
    elif kind == "missing_members":  # the zip lost the arrays the state refers to
        with zipfile.ZipFile(path) as z:
            meta = z.read("__meta__.npy")
            fp = z.read("__fingerprint__.npy")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("__meta__.npy", meta)
            z.writestr("__fingerprint__.npy", fp)
    elif kind == "wrong_format":
        meta = json.dumps({"format": "fedhive-checkpoint/1", "state": {}}).encode()
        np.savez(path, __meta__=np.frombuffer(meta, dtype=np.uint8))
    elif kind == "incomplete_state":  # a fedhive checkpoint of this run whose state lacks entries
        ckpt.save(path, {"strategy_name": "fedasync", "now": 1.0}, fingerprint=orchestrator().fingerprint)


def test_a_new_run_beside_another_runs_checkpoints_keeps_its_own_and_resumes_them(tmp_path, caplog):
    """The bug: the new run's checkpoints were pruned right after writing (the other run's were at version 500),
    and a resume loaded the other run's version 500."""
    other_runs_checkpoints(tmp_path)
    full = orchestrator(checkpoint_dir=tmp_path, checkpoint_every=4, keep_checkpoints=2).run(scenario()[3])
    mine = [p for p in ckpt.checkpoints(tmp_path) if ckpt.fingerprint_of(p)["task"] == "mnist1d"]
    assert len(mine) == 2 and ckpt.load(mine[-1])["strategy"]["version"] == full.final["version"]
    assert [p.name for p in ckpt.checkpoints(tmp_path) if p not in mine] == [
        "ckpt-0000000498.npz", "ckpt-0000000499.npz", "ckpt-0000000500.npz"]
    with caplog.at_level(logging.WARNING, logger="fedhive.orchestrator"):
        resumed = orchestrator(checkpoint_dir=tmp_path / "b").run(resume_from=tmp_path)
    assert resumed.final["version"] == full.final["version"]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping checkpoint")]
    assert len(skipped) == 3 and all("belongs to another run" in m and "task: this run 'mnist1d'" in m
                                     for m in skipped)
    assert str(ckpt.checkpoint_path(tmp_path, 500)) in skipped[0]


def test_an_explicit_checkpoint_of_another_run_is_refused_with_what_differs(tmp_path):
    orchestrator(fingerprint=OTHER, checkpoint_dir=tmp_path, checkpoint_every=4).run(scenario()[3])
    with pytest.raises(ValueError, match=r"belongs to another run \(seed: this run 0, the checkpoint 3; task: "
                                         r"this run 'mnist1d', the checkpoint 'synthetic'\).*resume=false"):
        orchestrator().run(resume_from=ckpt.latest(tmp_path))
    # The strategy's config is part of the fingerprint too.
    cls, targets, speeds, _ = scenario()
    transport = VirtualTransport(cls, durations(speeds), pull_toward(targets))
    other = Orchestrator(build("fedasync", {"alpha": 0.1}), transport, stop=STOP, fingerprint=OTHER)
    with pytest.raises(ValueError, match="strategy_config: this run"):
        other.run(resume_from=ckpt.latest(tmp_path))


KINDS = ["truncated", "zero_length", "random_bytes", "missing_members", "wrong_format", "incomplete_state"]


def test_resume_walks_back_over_every_kind_of_bad_checkpoint_naming_each(tmp_path, caplog):
    full = orchestrator(checkpoint_dir=tmp_path, checkpoint_every=2, keep_checkpoints=0).run(scenario()[3])
    files = ckpt.checkpoints(tmp_path)
    assert len(files) > len(KINDS) + 2
    good = files[-len(KINDS) - 1]
    for kind, path in zip(KINDS, files[-len(KINDS):]):
        damage(path, kind)
    other_runs_checkpoints(tmp_path, versions=(500,))
    with caplog.at_level(logging.WARNING, logger="fedhive.orchestrator"):
        resumed = orchestrator(checkpoint_dir=tmp_path / "b").run(resume_from=tmp_path)
    explicit = orchestrator(checkpoint_dir=tmp_path / "c").run(resume_from=good)
    assert resumed.final == explicit.final and resumed.history == explicit.history == full.history
    assert all(a.tobytes() == b.tobytes() for a, b in zip(resumed.params, full.params))
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping checkpoint")]
    assert len(skipped) == len(KINDS) + 1
    for path in files[-len(KINDS):] + [ckpt.checkpoint_path(tmp_path, 500)]:
        assert sum(str(path) in m for m in skipped) == 1, path
    assert any(f"resuming from {good}" in r.getMessage() for r in caplog.records)


def test_resume_with_no_usable_checkpoint_refuses_and_names_them(tmp_path):
    other_runs_checkpoints(tmp_path, versions=(499, 500))
    ckpt.checkpoint_path(tmp_path, 501).write_bytes(b"")
    with pytest.raises(ValueError) as err:
        orchestrator().run(resume_from=tmp_path)
    msg = str(err.value)
    assert "none of the 3 checkpoint(s)" in msg and "resume=false" in msg
    assert all(f"ckpt-0000000{v}.npz" in msg for v in (499, 500, 501))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "absent"))):
        orchestrator().run(resume_from=tmp_path / "absent")  # neither a file nor a folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        orchestrator().run(resume_from=tmp_path / "empty")


def test_a_legacy_checkpoint_without_fingerprint_still_resumes(tmp_path, caplog):
    full = orchestrator(checkpoint_dir=tmp_path, checkpoint_every=4).run(scenario()[3])
    path = ckpt.latest(tmp_path)
    ckpt.save(path, ckpt.load(path))  # rewritten as an older fedhive wrote it: no fingerprint entry
    assert ckpt.fingerprint_of(path) is None
    with caplog.at_level(logging.WARNING, logger="fedhive.orchestrator"):
        resumed = orchestrator().run(resume_from=tmp_path)
    assert resumed.final["version"] == full.final["version"]
    assert any("carries no run fingerprint" in r.getMessage() for r in caplog.records)


def test_leftover_temporary_checkpoints_are_removed_at_start(tmp_path, caplog):
    tmp_path.joinpath("ckpt").mkdir()
    left = tmp_path / "ckpt" / ".ckpt-0000000007.npz.abc123.tmp"
    left.write_bytes(b"half")
    with caplog.at_level(logging.WARNING, logger="fedhive.orchestrator"):
        orchestrator(checkpoint_dir=tmp_path / "ckpt")
    assert not left.exists() and any(str(left) in r.getMessage() for r in caplog.records)


def test_a_full_disk_is_logged_and_counted_and_the_run_goes_on_unchanged(tmp_path, monkeypatch, caplog):
    plain = orchestrator().run(scenario()[3])
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with caplog.at_level(logging.ERROR, logger="fedhive.orchestrator"):
        res = orchestrator(checkpoint_dir=tmp_path, checkpoint_every=2).run(scenario()[3])
    assert calls and res.counters["checkpoint_write_errors"] == len(calls)
    assert res.final == plain.final and res.history == plain.history
    assert all(a.tobytes() == b.tobytes() for a, b in zip(res.params, plain.params))
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    assert any("could not write checkpoint" in r.getMessage() and "No space left" in r.getMessage()
               for r in caplog.records)


def test_a_failing_prune_is_counted_and_the_run_goes_on(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt, "prune", refuse)
    res = orchestrator(checkpoint_dir=tmp_path, checkpoint_every=2).run(scenario()[3])
    assert res.counters["checkpoint_prune_errors"] > 0 and ckpt.latest(tmp_path) is not None


# --------------------------------------------------------------------------- the server app's run folder
def test_a_new_run_moves_an_earlier_runs_checkpoints_aside(tmp_path, caplog):
    run_dir, ckpt_dir = tmp_path, tmp_path / "checkpoints"
    other_runs_checkpoints(ckpt_dir, versions=(499, 500))
    (run_dir / ".status.json.tmp").write_text("{")
    (ckpt_dir / ".ckpt-0000000501.npz.x1.tmp").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="fedhive.server"):
        assert server_app.prepare_run_folder(run_dir, ckpt_dir, resume=False) is None
    assert ckpt.checkpoints(ckpt_dir) == [] and not (run_dir / ".status.json.tmp").exists()
    (aside,) = ckpt_dir.glob("previous-*")
    assert [p.name for p in ckpt.checkpoints(aside)] == ["ckpt-0000000499.npz", "ckpt-0000000500.npz"]
    assert list(ckpt_dir.glob("*.tmp")) == []
    assert any("moved the checkpoints" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)


def test_resume_true_hands_the_folder_to_the_orchestrator(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    with caplog.at_level(logging.WARNING, logger="fedhive.server"):
        assert server_app.prepare_run_folder(tmp_path, ckpt_dir, resume=True) is None
    assert any("holds no checkpoint" in r.getMessage() for r in caplog.records)
    other_runs_checkpoints(ckpt_dir, versions=(500,))
    assert server_app.prepare_run_folder(tmp_path, ckpt_dir, resume=True) == ckpt_dir
    assert [p.name for p in ckpt.checkpoints(ckpt_dir)] == ["ckpt-0000000500.npz"]  # nothing moved


def test_a_new_run_refuses_when_the_earlier_checkpoints_cannot_be_moved(tmp_path, monkeypatch):
    other_runs_checkpoints(tmp_path / "checkpoints", versions=(500,))

    def refuse(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt.os, "replace", refuse)
    with pytest.raises(RuntimeError, match="cannot be moved aside.*resume=true"):
        server_app.prepare_run_folder(tmp_path, tmp_path / "checkpoints", resume=False)


def test_the_run_fingerprint_names_task_tensors_seed_and_partitioning():
    settings = RunSettings.from_config({"task": "mnist1d", "seed": 4, "partition": "iid", "num-partitions": 3})
    fp = server_app.run_fingerprint(settings, ["w", "b"], [np.zeros((2, 3), np.float32), np.zeros(3, np.int64)])
    assert fp == {"task": "mnist1d", "tensors": [["w", [2, 3], "float32"], ["b", [3], "int64"]], "seed": 4,
                  "partitioning": {"num_partitions": 3, "partition": "iid", "alpha": 0.5}}
    orch = orchestrator(fingerprint=fp)
    assert orch.fingerprint == {**fp, "strategy": "fedasync", "strategy_config": build("fedasync").config()}


class _Transport:
    in_flight = 0

    def clients(self):
        return []


def test_status_and_history_writes_are_best_effort_and_counted(tmp_path, monkeypatch, caplog):
    settings = RunSettings.from_config({"strategy": "fedasync"})
    status = server_app.RunStatus(tmp_path, settings, _Transport())
    real = server_app.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(server_app.os, "replace", full)
    with caplog.at_level(logging.ERROR, logger="fedhive.server"):
        for t in range(5):
            status.write(float(t), force=True)
        status.on_evaluate({"accuracy": 0.5, "loss": 1.0, "version": 1, "time": 0.0, "client_updates": 0}, 6.0)
    assert status.write_errors == {"status.json": 6, "history.json": 1}
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    assert sum("could not write" in r.getMessage() for r in caplog.records) == 2  # once per file, not per write
    monkeypatch.setattr(server_app.os, "replace", real)
    status.write(7.0, force=True)
    written = json.loads((tmp_path / "status.json").read_text())
    assert written["write_errors"] == {"status.json": 6, "history.json": 1}


# --------------------------------------------------------------------------- the whole server app over a fake Grid
def _echo_grid(nodes=(11, 12)):
    from flwr.app import MetricRecord, RecordDict

    from fedhive import messages as M
    from test_grid_transport import FakeGrid, profile_reply

    def responder(msg):
        if msg.metadata.message_type == M.PROFILE_QUERY:
            return profile_reply("cpu", 50)
        return RecordDict({M.ARRAYS: msg.content[M.ARRAYS],
                           M.METRICS: MetricRecord({"num-examples": 50, "steps": 1})})

    return FakeGrid(nodes, responder)


def _config(run_dir, **kw):
    return {"run-dir": str(run_dir), "strategy": "fedasync", "task": "synthetic", "num-partitions": 2,
            "max-time": 0.0, "max-versions": 6, "checkpoint-every": 2, "eval-interval": 100.0, "min-clients": 2,
            "wait-clients": 5.0, "metrics-address": "", "poll-interval": 0.001, **kw}


def test_the_server_app_resumes_only_its_own_run_and_survives_a_full_disk(tmp_path, flower_identity, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    other_runs_checkpoints(ckpt_dir, versions=(500,))
    first = server_app.run(_echo_grid(), _config(tmp_path))
    assert first.final["version"] == 6
    (aside,) = ckpt_dir.glob("previous-*")  # the other run's version 500, kept out of the way
    assert [p.name for p in ckpt.checkpoints(aside)] == ["ckpt-0000000500.npz"]
    assert ckpt.fingerprint_of(ckpt.latest(ckpt_dir))["task"] == "synthetic"
    other_runs_checkpoints(ckpt_dir, versions=(900,))  # another run's again, newer than ours
    resumed = server_app.run(_echo_grid(), _config(tmp_path, resume=True, **{"max-versions": 8}))
    assert resumed.final["version"] == 8 and resumed.final["client_updates"] == 8
    # The disk fills up: checkpoints and status writes fail, the run still ends and says what failed.
    real_replace = server_app.os.replace

    def full(src, dst):
        if str(dst).endswith(("status.json", ".npz")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(server_app.os, "replace", full)
    monkeypatch.setattr(ckpt.os, "replace", full)
    done = server_app.run(_echo_grid(), _config(tmp_path, resume=True, **{"max-versions": 10}))
    assert done.final["version"] == 10 and done.counters["checkpoint_write_errors"] > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["write_errors"]["status.json"] > 0 and history["write_errors"]["checkpoint"] > 0
    assert (tmp_path / "model.safetensors").exists() and list(tmp_path.glob(".*.tmp")) == []


class _StoppingGrid:
    """The echo grid; after ``after`` train replies it signals this process as Flower would: SIGTERM from an operator,
    or ``flwr stop`` (Flower's retry sends the process SIGINT, and every later call of the run is refused)."""

    def __init__(self, sig, after, refuse_after_signal):
        self.inner, self.sig, self.after, self.refuse = _echo_grid(), sig, after, refuse_after_signal
        self.trains = 0
        self.signalled = False
        self.pushed_after_signal = 0

    def _check(self):
        if self.signalled and self.refuse:
            raise RuntimeError("StatusCode.UNAUTHENTICATED: the run was stopped")  # what flwr's retry gives up with

    def get_node_ids(self):
        self._check()
        return self.inner.get_node_ids()

    def push_messages(self, msgs):
        self._check()
        msgs = list(msgs)
        self.pushed_after_signal += len(msgs) if self.signalled else 0
        return self.inner.push_messages(msgs)

    def pull_messages(self, ids):
        self._check()
        out = self.inner.pull_messages(ids)
        self.trains += sum(1 for m in out if "arrays" in m.content)
        if self.trains >= self.after and not self.signalled:
            self.signalled = True
            os.kill(os.getpid(), self.sig)  # handled in this (the main) thread before the next bytecode
        return out


@pytest.mark.parametrize("sig, refuse", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "flwr_stop"])
def test_sigterm_and_flwr_stop_write_a_final_checkpoint_then_exit_as_flower_would(tmp_path, flower_identity, sig,
                                                                                 refuse):
    got = []

    def flowers_handler(signum, frame):  # Flower's: log, run the exit handlers, sys.exit
        got.append(signum)
        raise SystemExit(0)

    previous = signal.signal(sig, flowers_handler)
    grid = _StoppingGrid(sig, after=7, refuse_after_signal=refuse)
    try:
        with pytest.raises(SystemExit):
            server_app.run(grid, _config(tmp_path, **{"max-versions": 10_000, "checkpoint-every": 10_000}))
        assert signal.getsignal(sig) is flowers_handler  # put back
    finally:
        signal.signal(sig, previous)
    assert got == [sig]  # handed on once, after the files were written
    status = json.loads((tmp_path / "status.json").read_text())
    history = json.loads((tmp_path / "history.json").read_text())
    assert status["state"] == "stopped"
    final = history["final"]
    # (the signal came inside a pull: the replies of that pull are dropped, their tasks fail on resume)
    assert final["stop_reason"] == f"signal_{signal.Signals(sig).name}" and final["version"] >= 5
    newest = ckpt.latest(tmp_path / "checkpoints")
    assert newest.name == f"ckpt-{final['version']:010d}.npz"  # the final checkpoint holds the last version
    assert (tmp_path / "model.safetensors").exists()
    assert grid.pushed_after_signal <= 2  # at most the tasks of the event being handled, none after it
    resumed = server_app.run(_echo_grid(), _config(tmp_path, resume=True, **{"max-versions": final["version"] + 2}))
    assert resumed.final["version"] == final["version"] + 2


def test_a_model_file_the_disk_refuses_is_counted_and_the_run_still_finishes(tmp_path, flower_identity,
                                                                             monkeypatch):
    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(server_app, "save_model", full)
    done = server_app.run(_echo_grid(), _config(tmp_path))
    assert done.final["version"] == 6
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["write_errors"] == {"model.safetensors": 1}
    assert history["grid"]["profile_rejections"] == {} and history["grid"]["metric_rejections"] == {}
    assert json.loads((tmp_path / "status.json").read_text())["profile_rejections"] == {}
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "finished"
    assert ckpt.latest(tmp_path / "checkpoints").name == "ckpt-0000000006.npz"  # the model is in the checkpoint


def test_write_errors_are_a_prometheus_counter_by_file():
    from prometheus_client import generate_latest

    from fedhive.server.metrics import ServerMetrics

    m = ServerMetrics()
    text = generate_latest(m.registry).decode()
    assert 'fedhive_write_errors_total{file="checkpoint"} 0.0' in text  # exported from the start
    counts = {"status.json": 4, "checkpoint": 2}
    m.watch_writes(lambda: counts)
    text = generate_latest(m.registry).decode()
    assert 'fedhive_write_errors_total{file="status.json"} 4.0' in text
    assert 'fedhive_write_errors_total{file="checkpoint"} 2.0' in text
    assert 'fedhive_write_errors_total{file="history.json"} 0.0' in text


# --------------------------------------------------------------------------- submit or resume (fedhive up, submit)
def test_resumable_finds_the_newest_checkpoint_of_the_same_unfinished_run(tmp_path, flower_identity):
    from fedhive.localcluster import resumable

    config = _config(tmp_path)
    server_app.run(_echo_grid(), config)
    assert resumable(tmp_path, config) is None  # finished: a new submit starts a new run
    status = json.loads((tmp_path / "status.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    newest = ckpt.latest(tmp_path / "checkpoints")
    assert resumable(tmp_path, config) == newest
    assert resumable(tmp_path, {**config, "seed": 5}) is None  # another run's checkpoints
    assert resumable(tmp_path, {**config, "strategy": "fedbuff"}) is None
    assert resumable(tmp_path, {**config, "num-partitions": 3}) is None
    newest.write_bytes(b"not a checkpoint")
    assert resumable(tmp_path, config) == ckpt.checkpoints(tmp_path / "checkpoints")[-2]  # walks back
    with pytest.raises(ValueError, match="strategy must be one of"):
        resumable(tmp_path, {**config, "strategy": "nope"})


def test_supervise_resumes_an_unfinished_run_unless_told(tmp_path, flower_identity, monkeypatch):
    from fedhive.localcluster import LocalCluster

    config = _config(tmp_path / "run")
    server_app.run(_echo_grid(), config)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    (tmp_path / "run" / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    submitted = []
    cluster = LocalCluster(tmp_path / "c", emulate="none")
    monkeypatch.setattr(cluster, "submit", lambda cfg, app_dir=None: submitted.append(dict(cfg)) or 7)
    monkeypatch.setattr(cluster, "wait_status", lambda *a, **kw: {"state": "finished"})
    cluster.supervise(config)
    cluster.supervise({**config, "resume": False})
    cluster.supervise({**config, "seed": 9})
    assert [c["resume"] for c in submitted] == [True, False, False]


def test_attach_needs_the_named_connection(tmp_path):
    from fedhive.localcluster import LocalCluster

    with pytest.raises(FileNotFoundError, match="config.toml does not exist"):
        LocalCluster.attach(tmp_path / "w", tmp_path / "flwr", "compose")
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text('[superlink.other]\naddress = "h:1"\n')
    with pytest.raises(ValueError, match=r"no \[superlink.compose\] section"):
        LocalCluster.attach(tmp_path / "w", tmp_path / "flwr", "compose")
    (tmp_path / "flwr" / "config.toml").write_text('[superlink.compose]\naddress = "h:1"\ninsecure = true\n')
    c = LocalCluster.attach(tmp_path / "w", tmp_path / "flwr", "compose")
    assert c.connection == "compose" and not c.same_host and c.leftovers() == []
    c.close()  # starts and stops nothing


def test_a_submit_the_superlink_keeps_refusing_is_raised_not_retried_for_ever(tmp_path, monkeypatch):
    from fedhive import localcluster
    from fedhive.localcluster import LocalCluster

    cluster = LocalCluster(tmp_path / "c", emulate="none")
    calls = []

    def refuse(cfg, app_dir=None):
        calls.append(1)
        raise RuntimeError("flwr run failed (exit 1): no such app")

    monkeypatch.setattr(cluster, "submit", refuse)
    monkeypatch.setattr(localcluster.time, "sleep", lambda s: None)
    t = [0.0]
    monkeypatch.setattr(localcluster.time, "monotonic", lambda: t.__setitem__(0, t[0] + 5.0) or t[0])
    with pytest.raises(RuntimeError, match="no such app"):
        cluster._submit_retrying({}, "app", end=1e12, patience=60.0)
    assert 2 <= len(calls) <= 13  # retried for about a minute, then raised
