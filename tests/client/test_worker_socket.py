"""The warm worker's socket under bad, huge, stalled and slow peers (real Unix sockets, a stub trainer)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fedhive.client import app as client_app
from fedhive.client.worker import MAX_HEADER, Worker, WorkerError, call, recv_frame
from fedhive.proto.modelfile import encode

Q = struct.Struct(">Q")


class Stub:
    """Echoes the arrays; ``{"op": "slow", "seconds": s}`` sleeps first."""

    def __init__(self) -> None:
        self.requests = 0

    def handle(self, req, arrays):
        self.requests += 1
        if req.get("op") == "slow":
            time.sleep(float(req["seconds"]))
        return {"op": req.get("op"), "n": len(arrays)}, list(arrays)


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "w.sock", Stub(), io_timeout=5.0)
    try:
        yield w
    finally:
        w.close()


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def frame(header: bytes, body: bytes = b"") -> bytes:
    return Q.pack(len(header)) + header + Q.pack(len(body)) + body


def error_reply(s: socket.socket) -> str:
    reply, arrays = recv_frame(s)
    assert reply["ok"] is False and arrays == []
    try:
        assert s.recv(16) == b""  # and it hung up
    except ConnectionResetError:  # hung up with some of our bytes unread
        pass
    return reply["error"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_good_request_round_trips(worker):
    arrays = [np.arange(5, dtype=np.float32)]
    reply, out = call(worker.path, {"op": "echo"}, arrays, timeout=5)
    assert reply == {"op": "echo", "n": 1} and np.array_equal(out[0], arrays[0])


def test_a_header_claim_over_the_limit_is_refused_before_reading_it(worker):
    with connect(worker.path) as s:
        s.sendall(Q.pack(MAX_HEADER + 1))  # the claim alone: the worker must answer without waiting for more
        msg = error_reply(s)
    assert f"header of {MAX_HEADER + 1} bytes is larger than the limit of {MAX_HEADER} bytes" in msg
    assert worker.trainer.requests == 0


def test_a_body_claim_over_the_limit_is_refused_before_reading_it(tmp_path):
    w = Worker(tmp_path / "small.sock", Stub(), max_body=4096, io_timeout=5.0)
    try:
        with connect(w.path) as s:
            s.sendall(Q.pack(2) + b"{}" + Q.pack(4097))
            assert "body of 4097 bytes is larger than the limit of 4096 bytes" in error_reply(s)
        with connect(w.path) as s:  # 256 MiB, the claim that used to be allocated
            s.sendall(Q.pack(2) + b"{}" + Q.pack(256 << 20))
            assert "larger than the limit" in error_reply(s)
        assert w.trainer.requests == 0
        assert call(w.path, {"op": "ping"}, timeout=5)[0]["op"] == "ping"
    finally:
        w.close()


def test_a_large_claim_within_the_limit_allocates_nothing_until_data_arrives(worker):
    before = rss_bytes()
    with connect(worker.path) as s:
        s.sendall(Q.pack(2) + b"{}" + Q.pack(200 << 20) + b"x" * 100)  # 200 MiB claimed, 100 bytes sent
        time.sleep(0.5)
        grown = rss_bytes() - before
        s.shutdown(socket.SHUT_WR)
        assert s.recv(16) == b""  # the request never completed: closed without a reply
    assert grown < 50 << 20, f"RSS grew by {grown >> 20} MiB on a bare length claim"


@pytest.mark.parametrize("data, words", [
    (frame(b"not json"), "header is not JSON"),
    (frame(b"\xff\xfe"), "header is not JSON"),
    (frame(b"[1, 2]"), "header must be a JSON object, got list"),
    (frame(b'"op"'), "header must be a JSON object, got str"),
    (frame(b'{"op": "echo"}', b"\x00garbage-body"), "body is not a model file"),
    (Q.pack(1 << 63) + b"junk", "larger than the limit"),
])
def test_a_garbage_frame_gets_an_error_frame_and_the_worker_serves_on(worker, data, words):
    with connect(worker.path) as s:
        s.sendall(data)
        msg = error_reply(s)
    assert msg.startswith("bad frame: ") and words in msg
    assert worker.trainer.requests == 0
    assert call(worker.path, {"op": "ping"}, timeout=5)[0]["op"] == "ping"


def test_a_stalled_connection_does_not_block_another_client(worker):
    with connect(worker.path) as stalled:
        stalled.sendall(Q.pack(10) + b"{")  # a header promised and never finished
        t0 = time.monotonic()
        reply, out = call(worker.path, {"op": "echo"}, [np.ones(3, np.float32)], timeout=3)
        assert reply["n"] == 1 and time.monotonic() - t0 < 2.0
        # A second stalled peer (connected, silent) does not block either.
        with connect(worker.path):
            assert call(worker.path, {"op": "ping"}, timeout=3)[0]["op"] == "ping"


def test_a_stalled_connection_is_closed_after_the_io_timeout(tmp_path):
    w = Worker(tmp_path / "t.sock", Stub(), io_timeout=0.3)
    try:
        with connect(w.path) as s:
            s.sendall(Q.pack(10) + b"{")
            t0 = time.monotonic()
            assert s.recv(16) == b""
            assert 0.2 < time.monotonic() - t0 < 3.0
        # A slowloris: a byte every 0.1 s still hits the whole-request deadline.
        with connect(w.path) as s:
            t0 = time.monotonic()
            for b in Q.pack(100):
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    break
                time.sleep(0.1)
            s.settimeout(5)
            try:
                assert s.recv(16) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - t0 < 3.0
    finally:
        w.close()


def test_connections_over_the_bound_get_a_busy_frame(tmp_path):
    w = Worker(tmp_path / "b.sock", Stub(), io_timeout=5.0, max_connections=2)
    try:
        held = [connect(w.path), connect(w.path)]
        time.sleep(0.2)
        with connect(w.path) as s:
            assert "worker busy: 2 connections" in error_reply(s)
        for s in held:
            s.close()
        deadline = time.monotonic() + 5
        while True:  # the held slots free as their threads see the hang-up
            try:
                assert call(w.path, {"op": "ping"}, timeout=3)[0]["op"] == "ping"
                break
            except WorkerError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        w.close()


def test_the_client_side_call_times_out(worker):
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"did not answer within 0\.3 s"):
        call(worker.path, {"op": "slow", "seconds": 2.0}, timeout=0.3)
    assert time.monotonic() - t0 < 1.5


def test_a_broken_reply_is_a_worker_error(tmp_path):
    path = str(tmp_path / "fake.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def answer():
        conn, _ = srv.accept()
        with conn:
            recv_frame(conn)
            conn.sendall(Q.pack(1 << 62))

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(WorkerError, match="larger than the limit"):
            call(path, {"op": "ping"}, timeout=5)
    finally:
        t.join(5)
        srv.close()


def test_the_clientapp_bounds_its_worker_call_by_the_message_ttl(worker, monkeypatch):
    assert client_app._call_timeout(SimpleNamespace(metadata=SimpleNamespace(ttl=600.0))) == 600.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), None, "x"):
        assert client_app._call_timeout(SimpleNamespace(metadata=SimpleNamespace(ttl=bad))) is None
    assert client_app._call_timeout(None) is None
    local = Stub()
    monkeypatch.setattr(client_app, "_local_trainer", local)
    msg = SimpleNamespace(metadata=SimpleNamespace(ttl=0.3))
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not answer"):
        client_app._trainer_call({"worker": worker.path}, {"op": "slow", "seconds": 2.0}, [], msg)
    assert time.monotonic() - t0 < 1.5
    assert local.requests == 0  # a timed-out worker is not replaced by training here (it may still be training)


def test_worker_limits_are_checked():
    with pytest.raises(ValueError, match="max_body"):
        Worker("/tmp/unused.sock", Stub(), max_body=-1)
    with pytest.raises(ValueError, match="io_timeout"):
        Worker("/tmp/unused.sock", Stub(), io_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        Worker("/tmp/unused.sock", Stub(), max_connections=0)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda h, b: frame(h, b), st.binary(max_size=32), st.binary(max_size=64)),
    st.builds(lambda h, b: frame(json.dumps(h).encode(), b),
              st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
              st.sampled_from([b"", b"\x00" * 8, encode([np.ones(2, np.float32)])[:-3]])),
))
def test_fuzzed_frames_never_break_the_worker(shared_worker, data):
    with connect(shared_worker.path, timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    if got:
        (n,) = Q.unpack(got[:8])
        reply = json.loads(got[8:8 + n])
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    assert call(shared_worker.path, {"op": "ping"}, timeout=5)[0]["op"] == "ping"


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("fuzz") / "f.sock", Stub(), io_timeout=5.0)
    try:
        yield w
    finally:
        w.close()
