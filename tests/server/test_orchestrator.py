"""The orchestrator over the scripted virtual transport: validation, stop conditions, membership, resume."""

import math

import numpy as np
import pytest

from fedhive.engine import Malformed, Observer, Orchestrator, Result, StopCondition, VirtualTransport
from fedhive.engine import checkpoint as ckpt
from fedhive.strategies import STRATEGIES, build
from fedhive.strategies.base import ClientInfo, Update
from scripted import durations, pull_toward, run, scenario

ALL = list(STRATEGIES)
PARAMS = {"fedbuff": {"buffer_size": 2}, "fedcompass": {"q_min": 5, "q_max": 20, "speed_model": "per_step"},
          "fedasmu": {"server_adaptation": "heuristic"}, "fedavg": {}, "fedasync": {}, "fedfix": {}}


def evaluate(params):
    return {"accuracy": float(1.0 / (1.0 + np.abs(params[0]).sum())), "loss": float(np.abs(params[0]).sum())}


class Snapshots(Observer):
    """Checks that a rejected update leaves the model and version exactly as they were."""

    def __init__(self):
        self.strategy = None
        self.last = None
        self.rejections = []

    def on_start(self, strategy, now):
        self.strategy = strategy
        self._take()

    def _take(self):
        self.last = (self.strategy.version, [p.copy() for p in self.strategy.params])

    def on_update(self, update, outcome, client, staleness, duration, now):
        self._take()

    def on_failure(self, node_id, reason, now):
        self._take()

    def on_reject(self, reason, node_id, now):
        version, params = self.last
        assert self.strategy.version == version
        assert all(a.tobytes() == b.tobytes() for a, b in zip(self.strategy.params, params))
        self.rejections.append(reason)


def corrupting(kind, bad_node=1, bad_task=3):
    """The scenario's clients, except that task ``bad_task`` replies with a malformed update of ``kind``."""
    cls, targets, speeds, init = scenario()
    good = pull_toward(targets)

    def train(node, task_id, task, params):
        u = good(node, task_id, task, params)
        if task_id != bad_task:
            return u
        p = [a.copy() for a in u.params]
        if kind == "shape":
            p[0] = np.zeros(4, np.float32)
        elif kind == "dtype":
            p[0] = p[0].astype(np.float64)
        elif kind == "non_finite":
            p[1][0, 0] = np.nan
        elif kind == "tensor_count":
            p = p[:1]
        elif kind == "unknown_node":
            return Update(99, u.base_version, p, u.num_examples, {})
        elif kind == "node_mismatch":
            return Update((node + 1) % 4, u.base_version, p, u.num_examples, {})
        elif kind == "future_version":
            return Update(node, u.base_version + 1000, p, u.num_examples, {})
        elif kind == "version_mismatch":  # says it trained from another model than the one it was sent
            return Update(node, u.base_version - 1, p, u.num_examples, {})
        elif kind == "malformed":  # the transport could not decode the reply
            return Malformed(task_id, node, "the reply has no 'arrays' record", 0.0)
        elif kind == "unknown_task":  # the real reply, and a forged one for a task never sent
            return [u, Result(12345, u, 0.0)]
        elif kind == "duplicate":
            return [u, u]
        elif kind == "num_examples":
            return Update(node, u.base_version, p, -5, {})
        return Update(node, u.base_version, p, u.num_examples, {})

    return cls, speeds, init, train


@pytest.mark.parametrize("kind", ["shape", "dtype", "non_finite", "tensor_count", "unknown_node", "node_mismatch",
                                  "future_version", "version_mismatch", "malformed", "duplicate", "num_examples",
                                  "unknown_task"])
@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff", "fedavg"])
def test_each_malformed_update_is_rejected_and_changes_nothing(kind, strategy):
    cls, speeds, init, train = corrupting(kind)
    obs = Snapshots()
    orch = Orchestrator(build(strategy, PARAMS[strategy]), VirtualTransport(cls, durations(speeds), train),
                        stop=StopCondition(max_time=20.0), observer=obs)
    res = orch.run(init)
    assert obs.rejections == [kind]
    assert res.counters[f"rejected_{kind}"] == 1
    assert res.final["version"] > 3  # the run went on


def test_a_reply_without_a_version_claim_is_taken_on_the_engines_record():
    """A stock Flower ClientApp says nothing about the version it trained from: the engine's record decides."""
    cls, targets, speeds, init = scenario()
    good = pull_toward(targets)

    def train(node, task_id, task, params):
        u = good(node, task_id, task, params)
        return Update(node, None, u.params, u.num_examples, u.metrics)

    res = Orchestrator(build("fedbuff", {"buffer_size": 2}), VirtualTransport(cls, durations(speeds), train),
                       stop=StopCondition(max_time=20.0)).run(init)
    assert res.counters.get("rejected", 0) == 0
    assert res.final["version"] > 3


@pytest.mark.parametrize("strategy", ALL)
def test_checkpoint_resume_continues_bit_identically(strategy, tmp_path):
    stop = StopCondition(max_time=40.0)
    full, _, _ = run(strategy, PARAMS[strategy], stop=stop, evaluate=evaluate, eval_every_versions=3,
                     checkpoint_dir=tmp_path / "a", checkpoint_every=4, keep_checkpoints=1000)
    files = sorted((tmp_path / "a").glob("ckpt-*.npz"))
    assert len(files) >= 3, "the run should have checkpointed several times"
    middle = files[len(files) // 2]
    cls, targets, speeds, init = scenario()
    transport = VirtualTransport(cls, durations(speeds, 0.3), pull_toward(targets))
    resumed = Orchestrator(build(strategy, PARAMS[strategy]), transport, stop=stop, evaluate=evaluate,
                           eval_every_versions=3, checkpoint_dir=tmp_path / "b", checkpoint_every=4
                           ).run(resume_from=middle)
    assert ckpt.load(middle)["strategy"]["version"] < full.final["version"]
    assert resumed.final["version"] == full.final["version"]
    assert resumed.final["client_updates"] == full.final["client_updates"]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(resumed.params, full.params))
    assert resumed.history == full.history


def test_resume_refuses_another_strategy(tmp_path):
    run("fedasync", stop=StopCondition(max_time=5.0), checkpoint_dir=tmp_path, checkpoint_every=1)
    cls, targets, speeds, _ = scenario()
    orch = Orchestrator(build("fedbuff"), VirtualTransport(cls, durations(speeds), pull_toward(targets)),
                        stop=StopCondition(max_time=10.0))
    with pytest.raises(ValueError, match="written by strategy 'fedasync'"):
        orch.run(resume_from=ckpt.latest(tmp_path))


def test_stop_conditions():
    assert run("fedasync", stop=StopCondition(max_versions=7))[0].final["version"] == 7
    r = run("fedbuff", {"buffer_size": 3}, stop=StopCondition(max_updates=10))[0]
    assert r.final["client_updates"] == 10 and r.stop_reason == "max_updates"
    r = run("fedasync", stop=StopCondition(max_time=12.5))[0]
    assert r.stop_reason == "max_time" and r.final["time"] == pytest.approx(12.5)
    moved = lambda p: {"accuracy": float(1 - np.exp(-np.abs(p[1] - 1).sum())), "loss": 0.0}  # noqa: E731
    r = run("fedasync", stop=StopCondition(target_accuracy=0.9, max_time=1000), evaluate=moved,
            eval_every_versions=1)[0]
    assert r.stop_reason == "target_accuracy" and r.history[-1]["accuracy"] >= 0.9
    assert r.history[0]["accuracy"] == 0.0 and r.history[-2]["accuracy"] < 0.9
    with pytest.raises(ValueError, match="at least one stop condition"):
        Orchestrator(build("fedavg"), None, stop=StopCondition())
    with pytest.raises(ValueError, match="max_time must be a finite number"):
        StopCondition(max_time=-1)


def test_periodic_evaluation_by_version_and_time():
    r = run("fedasync", stop=StopCondition(max_versions=20), evaluate=evaluate, eval_every_versions=5)[0]
    assert [h["version"] for h in r.history] == [0, 5, 10, 15, 20]
    assert set(r.history[0]) == {"time", "version", "accuracy", "loss", "client_updates"}
    r = run("fedasync", stop=StopCondition(max_time=10.0), evaluate=evaluate, eval_interval=2.5)[0]
    times = [h["time"] for h in r.history]
    assert times[:5] == pytest.approx([0.0, 2.5, 5.0, 7.5, 10.0])


def test_joining_client_gets_work_and_leaving_client_is_failed():
    cls, targets, speeds, init = scenario()
    targets[7] = np.full(3, 2.0)
    speeds[7] = 1.0
    seen = []

    class Watch(Observer):
        def on_dispatch(self, task, client, now):
            seen.append((task.node_id, now))

        def on_failure(self, node_id, reason, now):
            seen.append(("fail", node_id, reason, now))

    transport = VirtualTransport(cls, durations(speeds), pull_toward(targets),
                                 joins=[(5.0, ClientInfo(7, 70, "gpu"))], leaves=[(6.0, 3)])
    strat = build("fedasync")
    res = Orchestrator(strat, transport, stop=StopCondition(max_time=20.0), observer=Watch()).run(init)
    assert (7, 5.0) in seen
    assert ("fail", 3, "node_lost", 6.0) in seen
    assert not any(n == 3 and t > 6.0 for n, t, *rest in [s for s in seen if s[0] != "fail"])
    assert 7 in strat.clients and res.counters["failed_node_lost"] == 1


@pytest.mark.parametrize("name, params", [("fedfix", {}), ("fedcompass", {}),
                                          ("fedasmu", {"server_adaptation": "off"})])
def test_a_client_that_leaves_is_out_of_the_weights(name, params, tmp_path):
    """The engine tells the strategy who left (``on_leave``): the live clients' weights still sum to 1, also after
    a resume from a checkpoint taken before the client left."""
    cls, targets, speeds, init = scenario()
    transport = VirtualTransport(cls, durations(speeds), pull_toward(targets), leaves=[(6.0, 3)])
    strat = build(name, params)
    Orchestrator(strat, transport, stop=StopCondition(max_time=20.0), checkpoint_dir=tmp_path,
                 checkpoint_every=1).run(init)
    live = [c.node_id for c in cls if c.node_id != 3]
    assert strat._weight(3) == 0.0
    assert math.fsum(strat._weight(n) for n in live) == pytest.approx(1.0)
    whole = VirtualTransport(cls, durations(speeds), pull_toward(targets))  # a checkpoint while 3 is still in
    Orchestrator(build(name, params), whole, stop=StopCondition(max_time=10.0), checkpoint_dir=tmp_path / "b",
                 checkpoint_every=1).run(init)
    first = ckpt.latest(tmp_path / "b")
    again = build(name, params)
    transport = VirtualTransport([c for c in cls if c.node_id != 3], durations(speeds), pull_toward(targets))
    Orchestrator(again, transport, stop=StopCondition(max_time=21.0)).run(resume_from=first)
    assert again._weight(3) == 0.0
    assert math.fsum(again._weight(n) for n in live) == pytest.approx(1.0)


def test_failed_tasks_reach_the_strategy_and_the_client_gets_new_work():
    cls, targets, speeds, init = scenario()
    fail = lambda node, task_id, task: 0.25 if task_id in (1, 2) else None  # noqa: E731
    transport = VirtualTransport(cls, durations(speeds), pull_toward(targets), fail_after=fail)
    res = Orchestrator(build("fedavg"), transport, stop=StopCondition(max_time=30.0)).run(init)
    assert res.counters["failed_client_error"] == 2
    assert res.final["version"] >= 3


def test_transport_clock_reaches_the_strategy_in_order():
    stamps = []

    class Clock(Observer):
        def on_update(self, update, outcome, client, staleness, duration, now):
            stamps.append(now)

    run("fedbuff", {"buffer_size": 2}, observer=Clock())
    assert stamps == sorted(stamps) and len(stamps) > 10


@pytest.mark.parametrize("fanout", [False, True])
def test_every_model_change_is_reported_once_to_every_observer(fanout):
    from fedhive.engine import Fanout

    changes, updates, dispatches = [], [], []

    class Timing(Observer):
        def on_aggregate(self, seconds, now):
            changes.append((seconds, now))

    class Updates(Observer):
        def on_update(self, update, outcome, client, staleness, duration, now):
            updates.append((client.node_id, staleness, duration))

        def on_dispatch(self, task, client, now):
            dispatches.append(task.node_id)

    timing, ups = Timing(), Updates()
    observer = Fanout([timing, ups]) if fanout else timing
    res, _, _ = run("fedasync", observer=observer, stop=StopCondition(max_time=10.0))
    assert len(changes) == res.final["version"] > 5  # one report per change of the global model
    assert all(0 <= s < 1.0 for s, _ in changes)
    assert [t for _, t in changes] == sorted(t for _, t in changes)
    if fanout:
        assert len(updates) == res.final["client_updates"] and all(d > 0 and s >= 0 for _, s, d in updates)
        assert len(dispatches) >= len(updates)
    else:
        assert not updates and not dispatches


def test_tasks_sent_at_one_version_share_one_model():
    sent = []

    class Sent(Observer):
        def on_dispatch(self, task, client, now):
            sent.append(task.version)

    cls, targets, speeds, init = scenario()
    orch = Orchestrator(build("fedbuff", {"buffer_size": 4}), VirtualTransport(cls, durations(speeds),
                        pull_toward(targets)), stop=StopCondition(max_time=3.0), observer=Sent())
    orch.run(init)
    by_version = {}
    for d in orch._in_flight.values():
        by_version.setdefault(d.task.version, set()).add(id(d.params))
    assert orch.models_held == len(by_version) >= 1
    assert all(len(ids) == 1 for ids in by_version.values())  # one model object per version, not one per task
    assert len(sent) > len(cls)


@pytest.mark.parametrize("bad", [-5, True, 3.5, "7", None])
def test_num_examples_must_be_a_non_negative_integer(bad):
    cls, targets, speeds, init = scenario()
    good = pull_toward(targets)

    def train(node, task_id, task, params):
        u = good(node, task_id, task, params)
        n = bad if task_id == 3 else (np.int64(u.num_examples) if task_id == 4 else u.num_examples)
        return Update(node, u.base_version, u.params, n, {})

    obs = Snapshots()
    res = Orchestrator(build("fedasync"), VirtualTransport(cls, durations(speeds), train),
                       stop=StopCondition(max_time=20.0), observer=obs).run(init)
    assert obs.rejections == ["num_examples"]  # numpy integers (task 4) are accepted
    assert res.final["version"] > 3


class Changes(Observer):
    """Every reported model change, and every failure, with the version the strategy is at by then."""

    def __init__(self):
        self.strategy = None
        self.changes, self.failures = [], []

    def on_start(self, strategy, now):
        self.strategy = strategy

    def on_aggregate(self, seconds, now):
        self.changes.append((self.strategy.version, now))

    def on_failure(self, node_id, reason, now):
        self.failures.append((self.strategy.version, now))


class FakeStore:
    version = -1

    def __init__(self):
        self.published = []

    def publish(self, params, version):
        self.version = version
        self.published.append(version)


@pytest.mark.parametrize("strategy, params", [
    ("fedavg", {}),
    ("fedcompass", {"q_min": 5, "q_max": 20, "speed_model": "per_step"}),
])
def test_a_failure_that_closes_a_round_or_a_group_reports_and_publishes_the_model(strategy, params):
    """After its first task, the slowest client's tasks fail late (after the others of its round or group arrived,
    before the group's deadline): its failure is what closes FedAvg's round or a FedCompass group, and that model
    change is reported and published like any other (before, failures bypassed the reporting path)."""
    from fedhive.engine import Fanout
    from fedhive.server.app import StorePublisher

    cls, targets, speeds, init = scenario()
    slow = max(speeds, key=speeds.get)
    first = {}

    def fail(node, task_id, task):
        if node != slow or first.setdefault(node, task_id) == task_id:
            return None
        return 1.3 * durations(speeds)(node, task_id, task)

    transport = VirtualTransport(cls, durations(speeds), pull_toward(targets), fail_after=fail)
    watch, store = Changes(), FakeStore()
    res = Orchestrator(build(strategy, params), transport, stop=StopCondition(max_time=60.0),
                       observer=Fanout([watch, StorePublisher(store)])).run(init)
    versions = [v for v, _ in watch.changes]
    assert versions == list(range(1, res.final["version"] + 1))  # every version reported, once, in order
    assert store.published == list(range(0, res.final["version"] + 1))  # and every one published
    by_failure = [(v, t) for v, t in watch.failures if (v, t) in watch.changes]
    assert by_failure, "no model change was caused by a failure"
    assert res.counters["failed_client_error"] >= len(by_failure)


@pytest.mark.parametrize("claim", ["0", 0.0, [0], np.zeros(2), True, -1])
def test_a_version_claim_of_any_other_type_or_value_is_a_version_mismatch(claim):
    cls, targets, speeds, init = scenario()
    good = pull_toward(targets)

    def train(node, task_id, task, params):
        u = good(node, task_id, task, params)
        return Update(node, claim if task_id == 3 else u.base_version, u.params, u.num_examples, {})

    obs = Snapshots()
    res = Orchestrator(build("fedasync"), VirtualTransport(cls, durations(speeds), train),
                       stop=StopCondition(max_time=20.0), observer=obs).run(init)
    assert obs.rejections == ["version_mismatch"]  # never applied, never an exception in the loop
    assert res.final["version"] > 3


def test_every_checkpoint_counts_the_update_that_triggered_it(tmp_path):
    """FedAsync applies each update as one version: in every checkpoint (written as the model changes) the updates
    counted, the applied ones and the version agree, so a resumed run's counters stay consistent."""
    run("fedasync", stop=StopCondition(max_versions=12), checkpoint_dir=tmp_path, checkpoint_every=1,
        keep_checkpoints=1000)
    files = sorted(tmp_path.glob("ckpt-*.npz"))
    assert len(files) >= 12
    for f in files:
        state = ckpt.load(f)
        assert state["client_updates"] == state["counters"].get("update_applied", 0) == state["strategy"]["version"]


def test_fedcompass_parked_clients_are_asked_again_only_when_their_group_aggregates():
    """A client parked in an arrived group is re-asked when that group aggregates, not after every event."""
    from fedhive.strategies.fedcompass import FedCompass

    asked_while_parked: dict[int, int] = {}
    results: dict[int, int] = {}

    class Counting(FedCompass):
        def on_idle(self, client, now):
            task = super().on_idle(client, now)
            if task is None:
                asked_while_parked[client.node_id] = asked_while_parked.get(client.node_id, 0) + 1
            return task

        def on_update(self, update, sent, now):
            results[update.node_id] = results.get(update.node_id, 0) + 1
            return super().on_update(update, sent, now)

    strat = Counting(q_min=5, q_max=20, speed_model="per_step")
    res, _, _ = run(strat, n=12, jitter=0.3, stop=StopCondition(max_time=200.0))
    assert res.final["version"] > 10 and sum(asked_while_parked.values()) > 0
    # Each result parks its client at most once (the ask right after it arrives); re-asking every parked client
    # after every event (the rule without take_woken) gives several "nothing yet" per result.
    assert all(asked_while_parked[i] <= results[i] for i in asked_while_parked)


# ------------------------------------------------------------------ untrusted replies (issue 14)
def _one_bad_reply(edit, bad_task=3):
    """The scenario's clients; task ``bad_task``'s reply is ``edit(update)``."""
    cls, targets, speeds, init = scenario()
    good = pull_toward(targets)

    def train(node, task_id, task, params):
        u = good(node, task_id, task, params)
        return edit(u) if task_id == bad_task else u

    return cls, speeds, init, train


@pytest.mark.parametrize("bad", [2**62, 2**31, int(1e308), 1e308, float("inf"), float("nan"), -1, 2.5, 20.0, "7",
                                 [5], None])
@pytest.mark.parametrize("strategy", ["fedavg", "fedasync"])
def test_a_huge_or_malformed_example_count_is_a_counted_rejection(bad, strategy):
    cls, speeds, init, train = _one_bad_reply(lambda u: Update(u.node_id, u.base_version, u.params, bad, {}))
    obs = Snapshots()
    res = Orchestrator(build(strategy, PARAMS[strategy]), VirtualTransport(cls, durations(speeds), train),
                       stop=StopCondition(max_time=20.0), observer=obs).run(init)
    assert obs.rejections == ["num_examples"]
    assert res.counters["rejected_num_examples"] == 1 and res.counters["rejected"] == 1
    assert res.final["version"] > 3


def test_the_largest_accepted_example_count_is_2_31_minus_1():
    cls, speeds, init, train = _one_bad_reply(lambda u: Update(u.node_id, u.base_version, u.params, 2**31 - 1, {}))
    res = Orchestrator(build("fedasync"), VirtualTransport(cls, durations(speeds), train),
                       stop=StopCondition(max_time=20.0)).run(init)
    assert res.counters.get("rejected", 0) == 0


@pytest.mark.parametrize("value", [3e38, -3e38, 1e34])
@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff", "fedavg"])
def test_a_finite_value_that_would_overflow_an_aggregation_is_rejected(value, strategy):
    """A single 3e38 is finite: applied, FedAsync's model would be it; it is refused and the model untouched."""
    def edit(u):
        p = [a.copy() for a in u.params]
        p[1][0, 0] = value
        return Update(u.node_id, u.base_version, p, u.num_examples, {})

    cls, speeds, init, train = _one_bad_reply(edit)
    obs = Snapshots()
    res = Orchestrator(build(strategy, PARAMS[strategy]), VirtualTransport(cls, durations(speeds), train),
                       stop=StopCondition(max_time=20.0), observer=obs).run(init)
    assert obs.rejections == ["magnitude"]
    assert res.counters["rejected_magnitude"] == 1
    assert all(np.all(np.abs(p) < 1e30) for p in res.params)
    assert res.final["version"] > 3
