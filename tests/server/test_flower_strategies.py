"""fedhive.flower: fedhive's strategies behind Flower's Strategy interface, driven over a fake Grid that answers with
real Flower messages (as a stock ClientApp would). The real-process runs are in tests/deploy/test_flower_dropin.py."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy import Strategy as FlowerStrategy
from test_grid_transport import FakeGrid

import fedhive.flower as F
from fedhive import messages as M

NAMES = ["fc.weight", "fc.bias"]
CLASSES = [F.FedAvg, F.FedAsync, F.FedBuff, F.FedFix, F.FedCompass, F.FedASMU]
SIZES = {11: 100, 12: 300, 13: 200}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def initial() -> ArrayRecord:
    return ArrayRecord({"fc.weight": Array(np.zeros((3, 4), np.float32)), "fc.bias": Array(np.zeros(3, np.float32))})


class Clients:
    """A stock ClientApp per node: each train message moves the model toward the node's own target (so the
    aggregate is a known weighted mean) and replies with Flower's quickstart records."""

    def __init__(self, sizes=SIZES, broken: dict[int, str] | None = None):
        self.sizes, self.broken = dict(sizes), dict(broken or {})
        self.replies: list[Message] = []
        self.configs: list[dict] = []
        self.eval_configs: list[dict] = []

    def __call__(self, msg: Message):
        assert msg.metadata.message_type in ("train", "evaluate")  # no profile query
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type == "evaluate":
            return self.evaluate(node, msg)
        self.configs.append(dict(msg.content["config"]))
        arrays = msg.content["arrays"]
        rng = np.random.default_rng(node * 1000 + len(self.configs))
        new = {k: Array((a.numpy() + 0.5 * (node - 12) + rng.normal(0, 0.01, a.numpy().shape)).astype(np.float32))
               for k, a in arrays.items()}
        metrics = {"train_loss": float(node) / 10, "num-examples": self.sizes[node]}
        kind = self.broken.get(node)
        if kind == "no-num-examples":
            del metrics["num-examples"]
        content = RecordDict({"metrics": MetricRecord(metrics)})
        if kind != "no-arrays":
            content["arrays"] = ArrayRecord(new)
        return content


    def evaluate(self, node: int, msg: Message):
        self.eval_configs.append(dict(msg.content["config"]))
        kind = self.broken.get(node)
        if kind == "evaluate-error":
            return Error(2, "the ClientApp raised")
        w = msg.content["arrays"]["fc.weight"].numpy()
        metrics = {"eval_loss": float(np.abs(w).mean()) + node, "eval_acc": node / 100,
                   "num-examples": self.sizes[node]}
        if kind == "evaluate-no-num-examples":
            del metrics["num-examples"]
        return RecordDict({"metrics": MetricRecord(metrics)})


def answering(clients: Clients, nodes=tuple(SIZES)) -> FakeGrid:
    grid = FakeGrid(nodes, clients)
    reply = grid.reply

    def keep(mid, content):
        r = reply(mid, content)
        clients.replies.append(r)
        return r

    grid.reply = keep
    return grid


def central(version: int, arrays: ArrayRecord) -> MetricRecord:
    w = arrays["fc.weight"].numpy()
    return MetricRecord({"accuracy": float(1.0 / (1.0 + np.abs(w).mean())), "loss": float(np.abs(w).mean())})


def test_each_class_is_a_flower_strategy_and_refuses_unknown_keywords():
    for cls in CLASSES:
        assert issubclass(cls, FlowerStrategy)
        with pytest.raises(ValueError, match=r"unknown keyword\(s\) bufer; valid: .*min_available_nodes"):
            cls(bufer=3)
    with pytest.raises(ValueError, match="buffer_size"):
        F.FedBuff(buffer_size=0)  # the strategy's own values are checked at construction
    with pytest.raises(ValueError, match="fraction_evaluate"):
        F.FedBuff(fraction_evaluate=1.5)
    with pytest.raises(ValueError, match="fraction_train"):
        F.FedAvg(fraction=0.5)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        F.FedAsync(resume=True)
    with pytest.raises(NotImplementedError, match="event-driven"):
        F.FedBuff().configure_train(1, initial(), ConfigRecord(), FakeGrid(()))


def test_fedavg_gives_flowers_numbers_on_the_same_replies():
    clients = Clients()
    result = F.FedAvg(fraction_train=1.0, min_available_nodes=3).start(
        grid=answering(clients), initial_arrays=initial(), num_rounds=1, timeout=30)
    assert isinstance(result, Result)
    assert len(clients.replies) == 3
    arrays, metrics = FlowerFedAvg(fraction_evaluate=0.0).aggregate_train(1, clients.replies)
    for name in NAMES:
        np.testing.assert_allclose(result.arrays[name].numpy(), arrays[name].numpy(), rtol=1e-6, atol=1e-7)
    assert set(result.train_metrics_clientapp) == {1}
    ours = dict(result.train_metrics_clientapp[1])
    assert set(ours) == set(dict(metrics)) == {"train_loss"}
    assert ours["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-12)
    assert clients.configs[0]["server-round"] == 1  # as Flower's FedAvg sets it


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_strategy_returns_flowers_result_keyed_by_version(cls):
    clients = Clients()
    kw = {"buffer_size": 2} if cls is F.FedBuff else {}
    if cls is F.FedFix:
        kw = {"interval": 0.05}
    strategy = cls(min_available_nodes=3, local_steps_key="steps", **kw)
    result = strategy.start(grid=answering(clients), initial_arrays=initial(), num_rounds=4, timeout=30,
                            train_config=ConfigRecord({"lr": 0.05, "steps": 7}), evaluate_fn=central)
    assert isinstance(result, Result)
    assert list(result.arrays.keys()) == NAMES
    assert [result.arrays[n].numpy().shape for n in NAMES] == [(3, 4), (3,)]
    versions = sorted(result.evaluate_metrics_serverapp)
    assert versions[0] == 0 and versions[-1] >= 4  # the first and the last model, and every version between
    assert versions == list(range(versions[-1] + 1))
    assert result.evaluate_metrics_serverapp[versions[-1]]["loss"] > 0  # the model moved
    assert result.train_metrics_clientapp and min(result.train_metrics_clientapp) >= 1
    assert all(set(dict(m)) == {"train_loss"} for m in result.train_metrics_clientapp.values())
    assert all(c["lr"] == 0.05 and c["server-round"] >= 1 for c in clients.configs)
    steps = {c["steps"] for c in clients.configs}
    if cls is F.FedCompass:  # it chooses each client's local steps, over the user's value
        assert steps and 7 not in steps and all(5 <= s <= 100 for s in steps), steps
    elif cls is F.FedASMU:  # its fetch step is a point within its own local_steps: it sends them, over the user's
        assert steps == {20}
    else:
        assert steps == {7}  # the user's value wins where the strategy's local_steps is a constant
    # Tasks still in flight when the last version was made are answered, but not by the engine.
    assert 4 <= strategy.counters["received"] <= len(clients.replies)
    assert not strategy.counters.get("rejected")


def test_local_steps_reach_a_stock_client_only_where_chosen_or_asked_for():
    def steps_sent(strategy, train_config=None) -> set:
        clients = Clients()
        strategy.start(grid=answering(clients), initial_arrays=initial(), num_rounds=2, timeout=30,
                       train_config=ConfigRecord(train_config or {}))
        return {c.get("local-steps") for c in clients.configs}

    assert steps_sent(F.FedBuff(buffer_size=2, min_available_nodes=3)) == {None}  # the client's own default
    assert steps_sent(F.FedBuff(buffer_size=2, local_steps=9, min_available_nodes=3)) == {9}
    assert steps_sent(F.FedBuff(buffer_size=2, local_steps=9, min_available_nodes=3), {"local-steps": 4}) == {4}
    assert None not in steps_sent(F.FedCompass(min_available_nodes=3), {"local-steps": 4})


def test_a_reply_without_num_examples_or_arrays_is_rejected_and_counted():
    clients = Clients(broken={12: "no-num-examples", 13: "no-arrays"})
    strategy = F.FedBuff(buffer_size=2, min_available_nodes=3)
    result = strategy.start(grid=answering(clients), initial_arrays=initial(), num_rounds=2, timeout=30,
                            evaluate_fn=central)
    c = strategy.counters
    assert c["rejected_malformed"] >= 2 and c["rejected"] == c["rejected_malformed"], c
    assert c["update_applied"] + c.get("update_buffered", 0) == c["received"] - c["rejected"]
    # Only node 11 (target +0.5 - 0.5 = -0.5 per step) made the model: no reply of 12 or 13 reached it.
    w = result.arrays["fc.weight"].numpy()
    assert np.all(w < 0), w


def test_weighted_by_and_record_keys_are_the_users():
    def client(msg: Message):
        node = msg.metadata.dst_node_id
        a = {k: Array(v.numpy() + (node - 11)) for k, v in msg.content["model"].items()}
        return RecordDict({"model": ArrayRecord(a), "m": MetricRecord({"n": SIZES[node], "acc": 0.5})})

    grid = FakeGrid(tuple(SIZES), client)
    strategy = F.FedAvg(arrayrecord_key="model", configrecord_key="cfg", weighted_by_key="n", min_available_nodes=3)
    result = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=1, timeout=30)
    assert all("cfg" in m.content and "model" in m.content for _, m in grid.of_type("train"))
    # (100·0 + 300·1 + 200·2) / 600
    np.testing.assert_allclose(result.arrays["fc.bias"].numpy(), np.full(3, 700 / 600, np.float32), rtol=1e-6)
    assert dict(result.train_metrics_clientapp[1]) == {"acc": pytest.approx(0.5)}


def test_too_few_nodes_is_a_clear_error():
    with pytest.raises(RuntimeError, match="only 1 of min_available_nodes=3 nodes connected within 0.3 s"):
        F.FedAsync(min_available_nodes=3, wait_for_nodes=0.3).start(
            grid=FakeGrid((11,), Clients()), initial_arrays=initial(), num_rounds=1, timeout=30)


def test_checkpoints_resume_where_the_run_stopped(tmp_path):
    strategy = F.FedAsync(min_available_nodes=3, checkpoint_dir=tmp_path / "ck")
    first = strategy.start(grid=answering(Clients()), initial_arrays=initial(), num_rounds=3, timeout=30)
    assert strategy.orchestrator.strategy.version == 3
    again = F.FedAsync(min_available_nodes=3, checkpoint_dir=tmp_path / "ck", resume=True)
    second = again.start(grid=answering(Clients()), initial_arrays=initial(), num_rounds=5, timeout=30)
    assert again.orchestrator.strategy.version == 5
    assert again.counters["update_applied"] == 5  # 3 before the resume and 2 after: the counters carry over
    assert not np.array_equal(first.arrays["fc.weight"].numpy(), second.arrays["fc.weight"].numpy())
    with pytest.raises(ValueError, match=r"none of the 2 checkpoint\(s\).*belongs to another run \(tensors"):
        other = ArrayRecord({"fc.weight": Array(np.zeros((2, 4), np.float32)),
                             "fc.bias": Array(np.zeros(3, np.float32))})
        F.FedAsync(min_available_nodes=3, checkpoint_dir=tmp_path / "ck", resume=True).start(
            grid=answering(Clients()), initial_arrays=other, num_rounds=6, timeout=30)



def _evaluate_replies(clients: Clients, version: int) -> list[Message]:
    return [r for r in clients.replies if "arrays" not in r.content
            and clients_eval_round(clients, r) == version]


def clients_eval_round(clients: Clients, reply: Message) -> int:
    return clients.round_of[reply.metadata.reply_to_message_id]


def test_federated_evaluation_gives_flowers_numbers():
    clients = Clients()
    grid = answering(clients)
    rounds: dict[str, int] = {}
    push = grid.push_messages

    def remember(msgs):
        ids = push(msgs)
        for i, m in zip(ids, msgs):
            if m.metadata.message_type == "evaluate":
                rounds[i] = m.content["config"]["server-round"]
        return ids

    grid.push_messages = remember
    clients.round_of = rounds
    strategy = F.FedAvg(fraction_evaluate=1.0, min_available_nodes=3)
    result = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=2, timeout=30,
                            evaluate_config=ConfigRecord({"batch": 8}))
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]  # after each round, as Flower's (not the initial model)
    assert all(c["batch"] == 8 for c in clients.eval_configs) and len(clients.eval_configs) == 6
    for version in (1, 2):
        replies = _evaluate_replies(clients, version)
        assert len(replies) == 3
        flower = FlowerFedAvg(fraction_evaluate=1.0).aggregate_evaluate(version, replies)
        ours = dict(result.evaluate_metrics_clientapp[version])
        assert set(ours) == set(dict(flower)) == {"eval_loss", "eval_acc"}
        for k in ours:
            assert ours[k] == pytest.approx(flower[k], rel=1e-9)
    assert strategy.counters["evaluate_sent"] == strategy.counters["evaluate_received"] == 6


def test_federated_evaluation_follows_the_schedule_and_counts_bad_replies():
    clients = Clients(broken={12: "evaluate-error", 13: "evaluate-no-num-examples"})
    strategy = F.FedAsync(fraction_evaluate=1.0, evaluate_every=2, min_available_nodes=3)
    result = strategy.start(grid=answering(clients), initial_arrays=initial(), num_rounds=5, timeout=30)
    assert sorted(result.evaluate_metrics_clientapp) == [2, 4, 5]  # every 2 versions, and the last
    assert {c["server-round"] for c in clients.eval_configs} == {2, 4, 5}
    c = strategy.counters
    assert c["evaluate_sent"] == 9 and c["evaluate_received"] == 3, c
    assert c["evaluate_failed_client_error"] == 3 and c["evaluate_rejected_malformed"] == 3, c
    # Only node 11's replies are in the aggregate.
    assert all(dict(m)["eval_acc"] == pytest.approx(0.11) for m in result.evaluate_metrics_clientapp.values())
    # The model was never touched by an evaluation reply: the run made its versions from train replies only.
    assert c["update_applied"] == 5


def test_federated_evaluation_samples_a_fraction_idle_nodes_first():
    clients = Clients()
    strategy = F.FedBuff(buffer_size=3, fraction_evaluate=0.34, min_evaluate_nodes=1, min_available_nodes=3)
    result = strategy.start(grid=answering(clients), initial_arrays=initial(), num_rounds=2, timeout=30)
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert len(clients.eval_configs) == 2  # max(int(3 × 0.34), 1) = 1 node per version


def test_fedasmu_train_fetches_and_fuses_from_the_strategys_store():
    """A ClientApp training through fedasmu_train does FedASMU's device side against the store start() runs."""
    seen: list[dict] = []

    def client(msg: Message):
        node = msg.metadata.dst_node_id
        target = 0.5 * (node - 12)

        def steps(arrays, n):
            assert n in (msg.content["config"]["fetch_step"],
                         msg.content["config"]["local-steps"] - msg.content["config"]["fetch_step"])
            return [a + 0.1 * n * (target - a) for a in arrays], {"train_loss": 1.0 / (1 + n)}

        arrays, metrics = F.fedasmu_train(msg, steps)
        seen.append(metrics)
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({**metrics, "num-examples": SIZES[node]})})

    strategy = F.FedASMU(local_steps=4, min_available_nodes=3)
    result = strategy.start(grid=FakeGrid(tuple(SIZES), client), initial_arrays=initial(), num_rounds=6, timeout=30)
    assert not strategy.counters.get("rejected"), strategy.counters  # the version echo agrees with the engine
    fetched = [m for m in seen if m["fetch_version"] > m[M.VERSION]]
    assert fetched and all(0 < m["beta"] < 1 for m in fetched), seen  # newer models were fetched and mixed in
    assert all(m["beta"] == 0 for m in seen if m["fetch_version"] == m[M.VERSION])  # nothing newer: no mixing
    assert all(m["steps"] == 4 and m[M.VERSION] >= 0 for m in seen)
    assert sorted(result.evaluate_metrics_serverapp) == []  # no evaluate_fn given


def test_each_node_gets_its_own_store_token_and_a_forged_one_is_refused():
    """Per-node model-store credentials: node n's train messages carry the token of n (``"n.<mac>"``); a device that
    puts another node's id on its own token's MAC (a forgery) is turned away and trains on without the fetch."""
    tokens: dict[int, set] = {}
    forged: list[dict] = []
    fetched: list[dict] = []
    nodes = sorted(SIZES)

    def client(msg: Message):
        node = msg.metadata.dst_node_id
        config = msg.content["config"]
        tokens.setdefault(node, set()).add(config[M.STORE_TOKEN])
        forge = node == nodes[0]
        if forge:
            msg.content["config"][M.STORE_TOKEN] = f"{nodes[1]}." + config[M.STORE_TOKEN].partition(".")[2]
        arrays, metrics = F.fedasmu_train(msg, lambda a, n: ([x + 0.01 for x in a], {"train_loss": 1.0}))
        (forged if forge else fetched).append(metrics)
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({**metrics, "num-examples": SIZES[node]})})

    strategy = F.FedASMU(local_steps=4, min_available_nodes=3)
    strategy.start(grid=FakeGrid(tuple(SIZES), client), initial_arrays=initial(), num_rounds=8, timeout=30)
    assert set(tokens) == set(nodes)
    assert all(len(t) == 1 for t in tokens.values())  # one token per node for the whole run
    own = {n: next(iter(t)) for n, t in tokens.items()}
    assert len(set(own.values())) == len(nodes) and all(t.startswith(f"{n}.") for n, t in own.items())
    assert forged and all(m["fetch_version"] == m[M.VERSION] for m in forged)  # refused: nothing fetched
    assert any(m["fetch_version"] > m[M.VERSION] for m in fetched)  # the honest nodes' tokens work


def test_fedasmu_train_without_a_store_is_one_plain_training():
    msg = Message(RecordDict({"arrays": initial(), "config": ConfigRecord({"local-steps": 3})}), dst_node_id=11,
                  message_type="train")
    calls = []
    arrays, metrics = F.fedasmu_train(msg, lambda a, n: (calls.append(n) or [x + 1 for x in a], {"loss": 0.5}))
    assert calls == [3] and metrics["loss"] == 0.5 and M.VERSION not in metrics
    assert np.all(arrays["fc.bias"].numpy() == 1)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_hostile_replies_are_rejected_and_counted_and_the_run_goes_on(cls):
    """Node 12 answers every train message with the next of fedhive.faults.hostile_client's replies (real Flower
    records: NaN, wrong shapes and dtypes, lying array headers, example counts of inf, 2^62, strings, ...) and every
    evaluate message with a hostile one too; nodes 11 and 13 behave."""
    from fedhive.faults.hostile_client import MAY_APPLY, REPLIES

    kinds = sorted(REPLIES)
    sent: list[str] = []
    honest = Clients()

    def client(msg: Message):
        node = msg.metadata.dst_node_id
        if node != 12:
            return honest(msg)
        if msg.metadata.message_type == "evaluate":
            return RecordDict({"metrics": MetricRecord({"eval_loss": float("nan"), "num-examples": 2 ** 62})})
        kind = kinds[len(sent) % len(kinds)]
        sent.append(kind)
        arrays = {k: msg.content["arrays"][k].numpy() for k in msg.content["arrays"].keys()}
        return REPLIES[kind](msg, arrays).content

    kw = {"buffer_size": 2} if cls is F.FedBuff else {"interval": 0.05} if cls is F.FedFix else {}
    strategy = cls(min_available_nodes=3, fraction_evaluate=1.0, evaluate_every=2, **kw)
    result = strategy.start(grid=FakeGrid(tuple(SIZES), client), initial_arrays=initial(), num_rounds=40, timeout=30,
                            evaluate_fn=central)
    c = strategy.counters
    assert len(sent) >= 10, (len(sent), c)
    harmful = [k for k in sent if k not in MAY_APPLY]
    # Every harmful reply the engine received was rejected (some of the last may still have been in flight).
    assert c.get("rejected", 0) >= len(harmful) - 3 and c.get("rejected", 0) <= len(harmful), (c, len(harmful))
    assert all(np.isfinite(result.arrays[n].numpy()).all() for n in NAMES)
    assert all(np.isfinite(list(m.values())).all() for m in result.train_metrics_clientapp.values())
    assert c["evaluate_rejected_malformed"] >= 1  # 2^62 examples is beyond the bound: left out, not aggregated
    assert all(np.isfinite(list(m.values())).all() for m in result.evaluate_metrics_clientapp.values())


def test_metrics_address_serves_prometheus_metrics_during_the_run():
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[str] = []

    def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        if version >= 3:
            with urllib.request.urlopen(url, timeout=10) as r:
                scraped.append(r.read().decode())
        return central(version, arrays)

    strategy = F.FedBuff(buffer_size=2, min_available_nodes=3, metrics_address=f"127.0.0.1:{port}")
    strategy.start(grid=answering(Clients()), initial_arrays=initial(), num_rounds=3, timeout=30, evaluate_fn=evaluate)
    assert scraped, "evaluate_fn never saw version 3"
    lines = [line for line in scraped[-1].splitlines() if line.startswith("fedhive_updates_total")]
    # Version 3 is evaluated as the 6th update makes it, before that update is counted: 5 so far.
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines) == 5, lines
    with pytest.raises(urllib.error.URLError):  # the endpoint closes with the run
        urllib.request.urlopen(url, timeout=5)
    with pytest.raises(ValueError, match="metrics_address"):
        F.FedBuff(metrics_address="not an address")


# --------------------------------------------------------------------------- one engine, two front doors
def _app_config(run_dir, **kw):
    return {"run-dir": str(run_dir), "strategy": "fedasync", "task": "synthetic", "num-partitions": 3,
            "max-time": 0.0, "max-versions": 8, "checkpoint-every": 4, "eval-interval": 100.0, "min-clients": 3,
            "wait-clients": 5.0, "metrics-address": "", "poll-interval": 0.001, **kw}


def _hostile_node_12(kinds):
    """Nodes 11 and 13 echo the model back (fedhive's profile, 50 examples); node 12 sends ``kinds`` in turn."""
    from fedhive.faults.hostile_client import REPLIES
    from test_grid_transport import profile_reply

    sent: list[str] = []

    def client(msg: Message):
        if msg.metadata.message_type == M.PROFILE_QUERY:
            return profile_reply("cpu", 50)
        arrays = {k: msg.content["arrays"][k].numpy() for k in msg.content["arrays"].keys()}
        if msg.metadata.dst_node_id == 12 and len(sent) < len(kinds):
            sent.append(kinds[len(sent)])
            return REPLIES[sent[-1]](msg, arrays).content
        return RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 50})})

    return client, sent


def test_fedhives_server_app_runs_on_this_engine_with_the_same_validation(tmp_path, monkeypatch):
    """fedhive's ServerApp is a user of fedhive.flower's engine (EngineRun): the same hostile replies are rejected
    under the same counter names through either front door, and the model stays finite."""
    from fedhive.server import app as server_app

    runs = []
    real = F.EngineRun.run
    monkeypatch.setattr(F.EngineRun, "run", lambda self: runs.append(self) or real(self))
    kinds = ["nan", "wrong_shape", "examples_inf", "no_tensors"]
    client, sent = _hostile_node_12(kinds)
    app_result = server_app.run(FakeGrid((11, 12, 13), client), _app_config(tmp_path))
    assert len(runs) == 1 and sent == kinds
    client, sent = _hostile_node_12(kinds)
    strategy = F.FedAsync(min_available_nodes=3)
    flower_result = strategy.start(grid=FakeGrid((11, 12, 13), client), initial_arrays=initial(), num_rounds=8,
                                   timeout=30)
    assert len(runs) == 2 and sent == kinds

    def rejected(counters):
        return {k: v for k, v in counters.items() if k.startswith("rejected")}

    assert rejected(app_result.counters) == rejected(strategy.counters), (app_result.counters, strategy.counters)
    assert rejected(strategy.counters)["rejected"] == len(kinds)
    assert all(np.isfinite(p).all() for p in app_result.params)
    assert all(np.isfinite(flower_result.arrays[n].numpy()).all() for n in NAMES)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_the_server_app_stops_its_store_and_metrics_when_too_few_clients_come(tmp_path):
    """Too few clients: a clear error, and the model store and the metrics endpoint it started are stopped (they
    used to outlive the failed run, holding their ports)."""
    from fedhive.server import app as server_app

    client, _ = _hostile_node_12([])
    store_port, metrics_port = _free_port(), _free_port()
    config = _app_config(tmp_path, strategy="fedasmu", **{"min-clients": 4, "wait-clients": 0.3,
                                                          "store-address": f"127.0.0.1:{store_port}",
                                                          "metrics-address": f"127.0.0.1:{metrics_port}"})
    with pytest.raises(RuntimeError, match="only 3 of min-clients=4 clients connected within 0.3 s"):
        server_app.run(FakeGrid((11, 12, 13), client), config)
    assert _port_is_free(store_port) and _port_is_free(metrics_port)
    status = __import__("json").loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed"


def test_fedasmu_serves_its_store_over_tls_to_fedasmu_train(tmp_path):
    """store_certificates: the model store speaks TLS; store_ca goes to the devices, and fedasmu_train fetches
    through it (the certificates are the ones deploy/certs/generate.sh makes for the SuperLink)."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    script = Path(__file__).resolve().parents[2] / "deploy" / "certs" / "generate.sh"
    shutil.copy(script, tmp_path / "generate.sh")
    subprocess.run(["bash", str(tmp_path / "generate.sh")], check=True, capture_output=True, timeout=120)
    seen: list[dict] = []

    def client(msg: Message):
        node = msg.metadata.dst_node_id
        assert msg.content["config"][M.STORE_CA] == str(tmp_path / "ca.crt")
        arrays, metrics = F.fedasmu_train(msg, lambda a, n: ([x + 0.1 * n * (0.5 * (node - 12) - x) for x in a],
                                                              {"train_loss": 1.0 / (1 + n)}))
        seen.append(metrics)
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({**metrics, "num-examples": SIZES[node]})})

    strategy = F.FedASMU(local_steps=4, min_available_nodes=3, store_ca=str(tmp_path / "ca.crt"),
                         store_certificates=(tmp_path / "server.pem", tmp_path / "server.key"))
    strategy.start(grid=FakeGrid(tuple(SIZES), client), initial_arrays=initial(), num_rounds=6, timeout=30)
    assert any(m["fetch_version"] > m[M.VERSION] for m in seen), seen  # fetched over TLS
    for bad in ("cert.pem", ("cert.pem",), ("", "key"), (1, 2)):
        with pytest.raises(ValueError, match="store_certificates must be"):
            F.FedASMU(store_certificates=bad)


@pytest.mark.parametrize("config, error", [
    ({"local-steps": -1}, "local steps"),
    ({"local-steps": "4"}, "local steps"),
    ({"local-steps": 2.5}, "local steps"),
    ({"local-steps": 4, M.VERSION: -2}, M.VERSION),
    ({"local-steps": 4, M.VERSION: "0"}, M.VERSION),
    ({"local-steps": 4, "fetch_step": 2, M.STORE_ADDRESS: "127.0.0.1:1", "mu_beta": float("nan")}, "mu_beta"),
    ({"local-steps": 4, "fetch_step": 2, M.STORE_ADDRESS: "127.0.0.1:1", "gamma": 0.0}, "gamma"),
    ({"local-steps": 4, "fetch_step": 2, M.STORE_ADDRESS: "127.0.0.1:1", "upsilon": "0.5"}, "upsilon"),
    ({"local-steps": 4, "fetch_step": 2, M.STORE_ADDRESS: "127.0.0.1:1", "local_meta_lr": -1.0}, "local_meta_lr"),
])
def test_fedasmu_train_refuses_a_hostile_config_naming_the_key(config, error):
    """What the server sent crossed the network: a bad value is a ValueError naming it, before any training."""
    msg = Message(RecordDict({"arrays": initial(), "config": ConfigRecord(config)}), dst_node_id=11,
                  message_type="train")
    calls = []
    with pytest.raises(ValueError, match=error):
        F.fedasmu_train(msg, lambda a, n: (calls.append(n) or a, {"loss": 0.5}))
    assert calls == []


@pytest.mark.parametrize("store", ["not an address", "x" * 100_000, "127.0.0.1:1", "[::1"])
def test_fedasmu_train_trains_on_when_the_store_cannot_be_reached(store):
    """An unreachable or malformed store address (or a fetch_step outside the steps): the task trains all its steps
    without the fetch and still replies."""
    config = {"local-steps": 4, "fetch_step": 2, M.STORE_ADDRESS: store, M.STORE_TOKEN: 7, M.VERSION: 0}
    msg = Message(RecordDict({"arrays": initial(), "config": ConfigRecord(config)}), dst_node_id=11,
                  message_type="train")
    calls = []
    arrays, metrics = F.fedasmu_train(msg, lambda a, n: (calls.append(n) or [x + 1 for x in a], {"loss": 0.5}))
    assert sum(calls) == 4 and metrics["beta"] == 0 and np.all(arrays["fc.bias"].numpy() == 2)


@pytest.mark.parametrize("arrays, error", [
    ({"w": np.zeros(3)}, "must be a flwr.app.ArrayRecord"),
    (None, "must be a flwr.app.ArrayRecord"),
    (ArrayRecord(), "initial_arrays is empty"),
    (ArrayRecord({"w": Array(np.array([0.0, np.nan], np.float32))}), "initial_arrays 'w' is not finite"),
    (ArrayRecord({"w": Array(np.array([np.inf], np.float64))}), "initial_arrays 'w' is not finite"),
])
def test_start_refuses_bad_initial_arrays_before_anything_runs(arrays, error):
    grid = FakeGrid(tuple(SIZES), Clients())
    with pytest.raises((TypeError, ValueError), match=error):
        F.FedAsync(min_available_nodes=3).start(grid=grid, initial_arrays=arrays, num_rounds=2, timeout=30)
    assert grid.pushed == {}


def test_fedavg_samples_each_round_as_flowers_fedavg():
    """fraction_train / min_train_nodes: each round trains max(int(N·fraction_train), min_train_nodes) of the N
    connected nodes, as Flower's FedAvg samples them (its sample_nodes)."""
    sizes = {10 + i: 50 + i for i in range(7)}
    clients = Clients(sizes)
    strategy = F.FedAvg(fraction_train=0.5, min_train_nodes=2, min_available_nodes=3,
                        round_timeout=None)  # no deadline: millisecond tasks under load
    strategy.start(grid=FakeGrid(tuple(sizes), clients), initial_arrays=initial(), num_rounds=4, timeout=30)
    by_round: dict[int, int] = {}
    for config in clients.configs:
        by_round[config["server-round"]] = by_round.get(config["server-round"], 0) + 1
    assert by_round == {1: 3, 2: 3, 3: 3, 4: 3}, by_round  # int(7 · 0.5) = 3
    clients = Clients(sizes)
    strategy = F.FedAvg(fraction_train=0.1, min_train_nodes=2, min_available_nodes=3, round_timeout=None)
    strategy.start(grid=FakeGrid(tuple(sizes), clients), initial_arrays=initial(), num_rounds=3, timeout=30)
    assert len(clients.configs) == 3 * 2  # int(0.7) = 0 -> min_train_nodes
    with pytest.raises(ValueError, match="use Flower's min_train_nodes"):
        F.FedAvg(min_sample=2)
