"""Device-side parts without Flower processes: device profiling on a fake /proc and /sys, the agent's node config
and options, the warm worker over a real Unix socket, the ClientApp's functions called directly with real Flower
messages, and the trainer's FedASMU fetch from a real model store."""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.config import parse_config_args

from fedhive import messages as M
from fedhive.client import app as client_app
from fedhive.client.agent import Agent, AgentOptions, node_config_string
from fedhive.client.profile import DeviceProfile, classify, detect
from fedhive.client.trainer import Trainer, default_threads
from fedhive.client.worker import Worker, WorkerError, call, recv_frame
from fedhive.runconfig import task_settings
from fedhive.tasks import load_task

SETTINGS = task_settings({"task": "synthetic"})
NODE = {"partition-id": 1, "num-partitions": 3}


# --------------------------------------------------------------------------- device profile
def fake_root(root: Path, *, board: bytes | None = None, mem_kb: int | None = None, cgroup: str | None = None,
              files: dict[str, str] | None = None) -> Path:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    if board is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(board)
    if mem_kb is not None:
        (root / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:         1024 kB\n")
    if cgroup is not None:
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text(cgroup)
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_raspberry_pi_4_with_a_quarter_core_quota(tmp_path):
    root = fake_root(tmp_path, board=b"Raspberry Pi 4 Model B Rev 1.4\x00", mem_kb=3_884_100,
                     cgroup="12:memory:/x\n4:cpu,cpuacct:/fedhive/agent0\n1:name=systemd:/init\n",
                     files={"sys/fs/cgroup/cpu/fedhive/agent0/cpu.cfs_quota_us": "25000\n",
                            "sys/fs/cgroup/cpu/fedhive/agent0/cpu.cfs_period_us": "100000\n"})
    p = detect(root, accelerator="none")
    assert p.board == "Raspberry Pi 4 Model B Rev 1.4"  # the trailing NUL is gone
    assert p.memory_gb == pytest.approx(3.7, abs=0.01)
    assert p.cpu_quota == pytest.approx(0.25)
    assert p.accelerator == "none" and p.cores == (os.cpu_count() or 1)
    assert p.device_class == "rpi4" and classify(p) == "rpi4"
    d = p.as_dict()
    assert d["device_class"] == "rpi4" and d["cpu_quota"] == pytest.approx(0.25) and d["board"] == p.board


def test_unlimited_v1_quota_is_none(tmp_path):
    root = fake_root(tmp_path, cgroup="4:cpuacct,cpu:/a\n",
                     files={"sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "-1\n",
                            "sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000\n"})
    assert detect(root, accelerator="none").cpu_quota is None


@pytest.mark.parametrize("cpu_max, quota", [("150000 100000\n", 1.5), ("max 100000\n", None)])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, quota):
    root = fake_root(tmp_path, cgroup="0::/system.slice/fedhive.service\n",
                     files={"sys/fs/cgroup/system.slice/fedhive.service/cpu.max": cpu_max})
    assert detect(root, accelerator="none").cpu_quota == quota


def test_missing_proc_files_give_neutral_values(tmp_path):
    p = detect(fake_root(tmp_path), accelerator="none")
    assert (p.board, p.memory_gb, p.cpu_quota) == ("", 0.0, None)
    assert p.device_class == "cpu"  # x86 or any machine without a board: cpu


def test_board_from_the_sysfs_device_tree(tmp_path):
    root = fake_root(tmp_path, files={"sys/firmware/devicetree/base/model": "Raspberry Pi 5 Model B Rev 1.0\x00"})
    p = detect(root, accelerator="none")
    assert p.board == "Raspberry Pi 5 Model B Rev 1.0" and p.device_class == "rpi5"


@pytest.mark.parametrize("board, mem_kb, accelerator, cls", [
    (b"Raspberry Pi 5 Model B Rev 1.0\x00", 8_000_000, "none", "rpi5"),
    (b"Raspberry Pi Zero 2 W Rev 1.0\x00", 436_000, "none", "rpi-zero2"),
    (b"Raspberry Pi Compute Module 4 Rev 1.0\x00", 3_800_000, "none", "rpi4"),
    (b"Raspberry Pi 4 Model B Rev 1.4\x00", 3_800_000, "cuda:NVIDIA H100 80GB HBM3", "gpu"),
    (None, 16_000_000, "cuda:NVIDIA H100 80GB HBM3", "gpu"),
    (None, 16_000_000, "mps", "gpu"),
    (None, 16_000_000, "none", "cpu"),
])
def test_device_classes_from_fake_roots(tmp_path, board, mem_kb, accelerator, cls):
    p = detect(fake_root(tmp_path, board=board, mem_kb=mem_kb), accelerator=accelerator)
    assert p.device_class == cls


@pytest.mark.parametrize("arch, board, mem, cls", [
    ("x86_64", "", 32.0, "cpu"),
    ("aarch64", "", 64.0, "cpu"),  # an ARM server without a device tree
    ("aarch64", "Radxa ROCK 4SE", 4.0, "rpi4"),  # an unknown ARM board with memory: like a Pi 4
    ("armv7l", "Some Tiny Board", 0.5, "rpi-zero2"),  # an unknown ARM board under 1 GB
    ("x86_64", "Some x86 board", 8.0, "cpu"),
])
def test_classify_other_machines(arch, board, mem, cls):
    assert classify(DeviceProfile(arch, 4, mem, "none", board, None)) == cls


# --------------------------------------------------------------------------- agent
def test_node_config_string_round_trips_through_flower():
    cfg = {"partition-id": 1, "num-partitions": 3, "device-class": "rpi4", "data-dir": "/var/lib/fedhive/data",
           "memory-gb": 3.7, "cpu-quota": 0.25, "slowdown": 1.0, "insecure": True, "off": False,
           "accelerator": "cuda:NVIDIA_H100", "worker": "/tmp/fedhive-agent-x/worker.sock", "board": "none",
           "empty": "", "eq": "a=b", "dq": 'say"hi"'}
    text = node_config_string(cfg)
    back = parse_config_args([text])
    assert back == cfg
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in cfg.items()}


@pytest.mark.parametrize("value", ["Raspberry Pi 4", "it's", "'", " "])
def test_node_config_string_refuses_spaces_and_single_quotes(value):
    with pytest.raises(ValueError, match="spaces or single quotes"):
        node_config_string({"board": value})


@pytest.mark.parametrize("kwargs, words", [
    ({"device_class": "tpu"}, "device class 'tpu'"),
    ({"partition_id": -1}, "partition-id must be an integer >= 0, got -1"),
    ({"partition_id": 3, "num_partitions": 3}, "partition-id 3 must be < num-partitions 3"),
    ({"num_partitions": 0}, "num-partitions must be an integer >= 1, got 0"),
    ({"partition_id": 1.5, "num_partitions": 3}, "partition-id must be an integer >= 0, got 1.5"),
    ({"num_partitions": True}, "num-partitions must be an integer >= 1, got True"),
    ({"insecure": False}, "root-certificates"),
    ({"auth_public_key": "/k/node.pub"}, "auth-supernode-private-key"),
    ({"slowdown": 0.5}, "slowdown must be a finite number >= 1, got 0.5"),
    ({"slowdown": float("nan")}, "slowdown must be a finite number >= 1, got nan"),
    ({"slowdown": "2"}, "slowdown must be a finite number >= 1, got '2'"),
    ({"torch_threads": -1}, "torch-threads must be an integer >= 0, got -1"),
    ({"torch_threads": 1.5}, "torch-threads must be an integer >= 0, got 1.5"),
    ({"training_device": "gpu"}, "training device must be one of auto, cpu, cuda, cuda:N .* got 'gpu'"),
    ({"training_device": "cuda:x"}, "training device must be one of"),
    ({"training_device": 0}, "training device must be one of .* got 0"),
])
def test_agent_options_refuse_bad_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        AgentOptions(superlink="127.0.0.1:9092", **kwargs)


def test_agent_options_accept_good_values():
    o = AgentOptions(superlink="127.0.0.1:9092", partition_id=2, num_partitions=3, device_class="rpi-zero2",
                     insecure=False, root_certificates="/ca.pem", auth_private_key="/k", auth_public_key="/k.pub",
                     slowdown=4.0)
    assert (o.partition_id, o.device_class, o.slowdown) == (2, "rpi-zero2", 4.0)
    o = AgentOptions(superlink="x:1", partition_id=np.int64(1), num_partitions=4.0, slowdown=2)
    assert (o.partition_id, o.num_partitions, o.slowdown) == (1, 4, 2.0)
    assert type(o.partition_id) is int and type(o.num_partitions) is int and type(o.slowdown) is float
    assert AgentOptions(superlink="x:1").device_class == "auto"


@pytest.mark.parametrize("cores, quota, threads", [
    (8, None, 8), (8, 0.5, 1), (8, 0.2, 1), (8, 2.5, 2), (2, 4.0, 2), (1, None, 1), (0, None, 1)])
def test_default_threads_are_whole_cores_within_the_quota(cores, quota, threads):
    assert default_threads(cores, quota) == threads


def test_trainer_sets_its_torch_threads_in_the_serving_thread(task):
    """torch keeps the thread count partly per thread: a request served in a fresh thread trains with the count
    the trainer was given, not the process default (two threads per agent on shared cores cost 25x here)."""
    import threading

    import torch

    seen = []
    trainer = Trainer(device="cpu", threads=1)
    settings = {"task": "synthetic", "num-partitions": 3, "partition": "dirichlet", "alpha": 0.5, "seed": 0}
    req = {"op": "profile", "settings": settings, "node": {"partition-id": 0}}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        t = threading.Thread(target=lambda: (trainer.handle(req, []), seen.append(torch.get_num_threads())))
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
    with pytest.raises(ValueError, match="threads must be an integer >= 1 and <= 4096, got -2"):
        Trainer(device="cpu", threads=-2)


@pytest.mark.parametrize("value", ["abc", "2", 1.5, True, float("nan"), 10**30])
def test_trainer_refuses_a_bad_torch_threads_value_from_the_node_config(value):
    """The no-worker ClientApp takes ``torch-threads`` from the node config: anything but a sane integer is refused."""
    with pytest.raises(ValueError, match="threads must be an integer"):
        Trainer(device="cpu", threads=value)


# --------------------------------------------------------------------------- warm worker
@pytest.fixture(scope="module")
def task():
    return load_task("synthetic", num_clients=3)


@pytest.fixture(scope="module")
def model(task):
    return task.initial_params(0)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("sock") / "w.sock", Trainer(device="cpu"))
    try:
        yield w
    finally:
        w.close()


def test_worker_socket_is_private(worker):
    assert stat.S_IMODE(os.stat(worker.path).st_mode) == 0o600


def test_worker_ping(worker):
    reply, arrays = call(worker.path, {"op": "ping"})
    assert reply == {"pid": os.getpid()} and arrays == []


def test_worker_profile(worker, task):
    reply, arrays = call(worker.path, {"op": "profile", "settings": SETTINGS, "node": NODE})
    assert reply["num-examples"] == task.num_examples(1) > 0
    assert reply["partition-id"] == 1 and reply["training-device"] == "cpu" and arrays == []


def test_worker_train(worker, task, model):
    header = {"op": "train", "settings": SETTINGS, "node": NODE, "seed": 5,
              "config": {"local_steps": 2, M.VERSION: 0}}
    metrics, out = call(worker.path, header, model)
    assert [(a.shape, a.dtype) for a in out] == [(a.shape, a.dtype) for a in model]
    assert not all(np.array_equal(a, b) for a, b in zip(out, model))
    assert metrics["num-examples"] == task.num_examples(1)
    assert np.isfinite(metrics["loss"]) and metrics["seconds"] > 0 and metrics["steps"] == 2
    # Same request, same seed: the same result (the worker keeps no hidden randomness between requests).
    _, again = call(worker.path, header, model)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))


def test_worker_train_echoes_the_version_it_was_sent_and_refuses_a_bad_one(worker, model):
    base = {"op": "train", "settings": SETTINGS, "node": NODE, "seed": 5}
    metrics, _ = call(worker.path, {**base, "config": {"local_steps": 1, M.VERSION: 7}}, model)
    assert metrics[M.VERSION] == 7  # the server checks it against the version it sent this task at
    metrics, _ = call(worker.path, {**base, "config": {"local_steps": 1}}, model)
    assert M.VERSION not in metrics  # nothing sent, nothing claimed
    for bad in ("7", -1, 2.5, [1]):
        with pytest.raises(WorkerError, match="fedhive.version"):
            call(worker.path, {**base, "config": {"local_steps": 1, M.VERSION: bad}}, model)


def test_worker_evaluate(worker, model):
    metrics, _ = call(worker.path, {"op": "evaluate", "settings": SETTINGS, "node": NODE}, model)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])


def test_worker_errors_come_back_as_worker_error(worker, model):
    with pytest.raises(WorkerError, match="ValueError: unknown trainer op 'dance'; valid: ping"):
        call(worker.path, {"op": "dance", "settings": SETTINGS, "node": NODE})
    with pytest.raises(WorkerError, match="KeyError"):
        call(worker.path, {"op": "profile"})
    with pytest.raises(WorkerError, match="partition-id 3 must be < num-partitions 3"):
        call(worker.path, {"op": "profile", "settings": SETTINGS, "node": {"partition-id": 3, "num-partitions": 3}})
    with pytest.raises(WorkerError, match="local_steps"):
        call(worker.path, {"op": "train", "settings": SETTINGS, "node": NODE, "config": {"local_steps": -2}}, model)
    assert call(worker.path, {"op": "ping"})[0]["pid"] == os.getpid()  # still serving


def test_worker_survives_a_garbage_frame(worker):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(worker.path)
        s.sendall(struct.pack(">Q", 1 << 40) + b"junk")
        reply, arrays = recv_frame(s)  # an error frame, then it hangs up
        assert reply["ok"] is False and "larger than the limit" in reply["error"] and arrays == []
        try:
            assert s.recv(16) == b""
        except ConnectionResetError:  # it closed with our junk unread
            pass
    assert "pid" in call(worker.path, {"op": "ping"})[0]


def test_call_to_a_missing_socket_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        call(str(tmp_path / "nobody.sock"), {"op": "ping"})


def test_worker_replaces_a_stale_socket_file_and_removes_it_on_close(tmp_path):
    path = tmp_path / "s.sock"
    path.write_text("stale")
    w = Worker(path, Trainer(device="cpu"))
    try:
        assert call(str(path), {"op": "ping"})[0]["pid"] == os.getpid()
    finally:
        w.close()
    assert not path.exists()


# --------------------------------------------------------------------------- ClientApp functions
def instruction(content: RecordDict, message_type: str, node_id: int = 5) -> Message:
    msg = Message(content, dst_node_id=node_id, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = msg.object_id  # what the SuperLink does on push
    return msg


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config={"task": "synthetic", "seed": 0})


def test_clientapp_train_goes_through_the_worker(flower_identity, worker, task, model):
    names = task.param_names()
    msg = instruction(RecordDict({M.ARRAYS: M.to_array_record(model, names),
                                  M.CONFIG: ConfigRecord({"local_steps": 2, M.TASK_ID: 4, M.VERSION: 0})}), "train")
    before = worker.trainer.requests
    reply = client_app.train(msg, context({**NODE, "worker": worker.path}))
    assert worker.trainer.requests == before + 1
    assert isinstance(reply, Message) and not reply.has_error()
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert list(reply.content[M.ARRAYS].keys()) == names
    out = [reply.content[M.ARRAYS][k].numpy() for k in names]
    assert [a.shape for a in out] == [a.shape for a in model]
    metrics = reply.content[M.METRICS]
    assert metrics["num-examples"] == task.num_examples(1) and metrics["steps"] == 2 and "loss" in metrics


def test_clientapp_profile_goes_through_the_worker(flower_identity, worker, task):
    q = instruction(RecordDict({}), M.PROFILE_QUERY)
    node = {**NODE, "worker": worker.path, "device-class": "rpi5", "cores": 4, "secret": "x"}
    reply = client_app.profile(q, context(node))
    prof = reply.content[M.PROFILE]
    assert prof["device-class"] == "rpi5" and prof["cores"] == 4 and "secret" not in prof
    assert prof["num-examples"] == task.num_examples(1) and prof["partition-id"] == 1


def test_clientapp_profile_without_a_device_class_says_unknown(flower_identity, worker):
    reply = client_app.profile(instruction(RecordDict({}), M.PROFILE_QUERY), context({**NODE, "worker": worker.path}))
    assert reply.content[M.PROFILE]["device-class"] == "unknown"


def test_clientapp_evaluate_goes_through_the_worker(flower_identity, worker, task, model):
    msg = instruction(RecordDict({M.ARRAYS: M.to_array_record(model, task.param_names())}), "evaluate")
    reply = client_app.evaluate(msg, context({**NODE, "worker": worker.path}))
    assert 0.0 <= reply.content[M.METRICS]["accuracy"] <= 1.0


def test_clientapp_trains_in_process_when_the_worker_is_unreachable(flower_identity, tmp_path, monkeypatch, task,
                                                                    model):
    local = Trainer(device="cpu")
    monkeypatch.setattr(client_app, "_local_trainer", local)
    msg = instruction(RecordDict({M.ARRAYS: M.to_array_record(model, task.param_names()),
                                  M.CONFIG: ConfigRecord({"local_steps": 1, M.VERSION: 0})}), "train")
    reply = client_app.train(msg, context({**NODE, "worker": str(tmp_path / "gone.sock")}))
    assert local.requests == 1 and reply.content[M.METRICS]["num-examples"] == task.num_examples(1)


def test_clientapp_errors_in_the_worker_reach_flower(flower_identity, worker, task, model):
    msg = instruction(RecordDict({M.ARRAYS: M.to_array_record(model, task.param_names()),
                                  M.CONFIG: ConfigRecord({"local_steps": -1})}), "train")
    with pytest.raises(WorkerError, match="local_steps"):
        client_app.train(msg, context({**NODE, "worker": worker.path}))


# --------------------------------------------------------------------------- FedASMU fetch in the trainer
def fedasmu_request(store_address: str, token: str) -> dict:
    return {"op": "train", "settings": SETTINGS, "node": NODE, "seed": 2,
            "config": {"local_steps": 3, "fetch_step": 1, M.VERSION: 0, M.STORE_ADDRESS: store_address,
                       M.STORE_TOKEN: token}}


def test_fedasmu_fetches_the_newer_model_from_the_store(store, model, tmp_path):
    store.publish([a + 0.5 for a in model], 4)
    trainer = Trainer(device="cpu")
    metrics, out = trainer.handle(fedasmu_request(store.address, store.token_for(1)), model)
    assert metrics["fetch_version"] == store.version == 4
    assert metrics["fetch_bytes"] > 0 and store.served == 1
    assert metrics["steps"] == 3 and 0.0 < metrics["beta"] <= 1.0
    assert [a.shape for a in out] == [a.shape for a in model]
    # Through the worker socket too.
    w = Worker(tmp_path / "w.sock", trainer)
    try:
        m2, _ = call(w.path, fedasmu_request(store.address, store.token_for(1)), model)
        assert m2["fetch_version"] == 4 and m2["fetch_bytes"] == metrics["fetch_bytes"] and store.served == 2
    finally:
        w.close()


def test_fedasmu_trains_on_when_the_fetch_is_refused(store, model, caplog):
    store.publish([a + 0.5 for a in model], 4)
    trainer = Trainer(device="cpu")
    with caplog.at_level("WARNING", logger="fedhive.trainer"):
        metrics, out = trainer.handle(fedasmu_request(store.address, "wrong-token"), model)
    assert store.refused == 1 and store.served == 0
    assert metrics["fetch_version"] in (-1, 0) and metrics["fetch_bytes"] == 0 and metrics["beta"] == 0.0
    assert metrics["steps"] == 3 and [a.shape for a in out] == [a.shape for a in model]
    assert any("fetch failed" in r.getMessage() and "UNAUTHENTICATED" in r.getMessage() for r in caplog.records)


def test_fedasmu_without_a_newer_model_does_not_mix(store, model):
    store.publish(model, 0)  # the device already has version 0
    metrics, _ = Trainer(device="cpu").handle(fedasmu_request(store.address, store.token_for(1)), model)
    assert metrics["fetch_version"] == 0 and metrics["fetch_bytes"] == 0 and metrics["beta"] == 0.0
    assert store.not_newer == 1


@pytest.mark.parametrize("value", ["tpu", "CUDA", "cuda:", "cuda:1234", "cpu ", "cuda:0;rm", 3, ["cpu"], "x" * 10_000,
                                   pytest.param(10**5000, id="huge-int")])
def test_trainer_refuses_a_training_device_it_does_not_know(value):
    """The no-worker ClientApp takes ``training-device`` from the node config: only torch device names pass."""
    with pytest.raises(ValueError, match="training device must be one of auto, cpu, cuda, cuda:N .*or mps, got"):
        Trainer(device=value)


def test_training_device_auto_cpu_and_a_device_torch_lacks():
    import torch

    from fedhive.client.trainer import training_device

    assert training_device("auto") is None and training_device("") is None and training_device(None) is None
    assert training_device("cpu") == "cpu" and training_device("cuda:3", check=False) == "cuda:3"
    assert Trainer(device="auto").device is None  # best_device() at the first task
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"training device 'cuda:{count}': torch sees {count} CUDA device"
                                         r"\(s\) here; pass --training-device cpu or auto"):
        training_device(f"cuda:{count}")


def test_the_agent_trains_on_the_device_it_was_given(tmp_path):
    """``fedhive agent --training-device cpu`` reaches the warm worker's trainer and the node config."""
    opts = AgentOptions(superlink="127.0.0.1:9092", training_device="cpu", state_dir=str(tmp_path))
    agent = Agent(opts, profile=detect())
    assert agent.node_config()["training-device"] == "cpu"
    agent.start_worker()
    try:
        assert agent.worker is not None and agent.worker.trainer.device == "cpu"
    finally:
        agent.worker.close()
