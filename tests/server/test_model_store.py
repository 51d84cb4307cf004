"""The gRPC model store (a real server on 127.0.0.1), the device-side fetch_model, and the model file format."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedhive.client.fetch import FetchError, fetch_model
from fedhive.proto import model_store_pb2 as pb
from fedhive.proto import model_store_pb2_grpc as pb_grpc
from fedhive.proto.modelfile import decode, encode
from fedhive.server.model_store import TOKEN_KEY, ModelStore, node_token, token_node


def small_model() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32),
            np.array([[np.nan, -0.0, np.inf]], dtype=np.float32)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def raw_chunks(store: ModelStore, min_version: int, chunk_bytes: int = 0, token: str | None = None):
    with grpc.insecure_channel(store.address) as ch:
        stub = pb_grpc.ModelStoreStub(ch)
        return list(stub.GetModel(pb.GetModelRequest(min_version=min_version, chunk_bytes=chunk_bytes),
                                  metadata=((TOKEN_KEY, store.token_for(7) if token is None else token),), timeout=10))


# --------------------------------------------------------------------------- store and fetch
def test_address_has_the_bound_port_and_a_fresh_secret_per_store(store):
    host, _, port = store.address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    other = ModelStore("127.0.0.1:0")
    try:
        assert len(store.secret) == 64 and other.secret != store.secret and other.address != store.address
        assert store.token_for(7) != other.token_for(7)  # a token of one run is not the next run's
    finally:
        other.stop()


def test_each_node_has_its_own_token():
    secret = "s" * 64
    tokens = {n: node_token(secret, n) for n in (0, 1, 2, 7, 2**64 - 1)}
    assert len(set(tokens.values())) == 5
    for n, t in tokens.items():
        assert t.startswith(f"{n}.") and token_node(secret, t) == n
        assert token_node("t" * 64, t) is None  # another run's secret
    # Swapping the node id of a token for another's does not make that node's token.
    assert token_node(secret, "2." + tokens[1].partition(".")[2]) is None
    for n in (-1, 2**64, "x"):
        with pytest.raises(ValueError):
            node_token(secret, n)


@pytest.mark.parametrize("token", [None, b"1.00", 1, "", ".", "1.", ".abc", "-1.abc", "+1.abc", " 1.abc", "1 .abc",
                                   "\u0661.abc", "1" * 21 + ".abc", "99999999999999999999.abc", "1." + "a" * 200,
                                   "x" * 10_000])
def test_malformed_tokens_are_refused_without_error(token):
    assert token_node("s" * 64, token) is None


@pytest.mark.parametrize("secret", ["short", 123, b"x" * 64])
def test_a_weak_or_odd_secret_is_refused(secret):
    with pytest.raises(ValueError, match="secret"):
        ModelStore("127.0.0.1:0", secret=secret)


def test_the_store_counts_what_it_serves_to_each_node(store):
    store.publish(small_model(), 3)
    fetch_model(store.address, store.token_for(5), min_version=0)
    fetch_model(store.address, store.token_for(5), min_version=0)
    fetch_model(store.address, store.token_for(9), min_version=0)
    assert store.served_by_node == {5: 2, 9: 1} and store.served == 3


@pytest.mark.parametrize("address", ["9300", ":9300", "host:", "host:port"])
def test_bad_listen_address_is_refused(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        ModelStore(address)


def test_nothing_is_newer_before_the_first_publish(store):
    assert store.version == -1
    assert fetch_model(store.address, store.token_for(7), min_version=-1) == (-1, None, 0)
    assert fetch_model(store.address, store.token_for(7), min_version=5) == (-1, None, 0)
    chunks = raw_chunks(store, -1)
    assert len(chunks) == 1 and chunks[0].newer is False and chunks[0].data == b""
    assert store.not_newer == 3 and store.served == 0


def test_published_model_arrives_bit_for_bit(store):
    model = small_model()
    store.publish(model, 3)
    assert store.version == 3
    version, got, nbytes = fetch_model(store.address, store.token_for(7), min_version=1)
    assert version == 3 and nbytes == len(encode(model)) > 0
    assert len(got) == len(model) and all(same_bits(a, b) for a, b in zip(got, model))
    assert store.served == 1


def test_not_newer_when_the_device_already_has_the_version(store):
    store.publish(small_model(), 3)
    assert fetch_model(store.address, store.token_for(7), min_version=3) == (3, None, 0)
    assert fetch_model(store.address, store.token_for(7), min_version=10) == (3, None, 0)
    assert store.not_newer == 2 and store.served == 0


@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_wrong_or_empty_token_is_unauthenticated(store, token):
    store.publish(small_model(), 3)
    with pytest.raises(FetchError, match="UNAUTHENTICATED"):
        fetch_model(store.address, token, min_version=1)
    assert store.refused == 1 and store.served == 0
    # The right token still works afterwards.
    assert fetch_model(store.address, store.token_for(7), min_version=1)[0] == 3
    assert store.refused == 1


def test_refusals_are_counted(store):
    store.publish(small_model(), 1)
    good = store.token_for(7)
    for token in ("a", "", good[:-1], good + "0", "8." + good.partition(".")[2]):
        with pytest.raises(FetchError, match="UNAUTHENTICATED"):
            fetch_model(store.address, token, min_version=0)
    with pytest.raises(grpc.RpcError) as info:
        raw_chunks(store, 0, token="nope")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert store.refused == 6 and store.served == 0 and store.not_newer == 0


def test_a_3mb_model_arrives_in_several_chunks_intact(store):
    rng = np.random.default_rng(1)
    model = [rng.standard_normal(700_000).astype(np.float32), rng.integers(0, 9, (50, 1000)).astype(np.int64)]
    size = len(encode(model))
    assert size > 3_000_000
    store.publish(model, 2)
    chunk = 1 << 20
    chunks = raw_chunks(store, 0, chunk_bytes=chunk)
    assert len(chunks) == -(-size // chunk) >= 3
    assert all(c.newer and c.version == 2 for c in chunks)
    assert [c.offset for c in chunks] == [i * chunk for i in range(len(chunks))]
    assert all(len(c.data) == chunk for c in chunks[:-1]) and 0 < len(chunks[-1].data) <= chunk
    assert chunks[0].total_bytes == size and all(c.total_bytes == 0 and c.sha256 == "" for c in chunks[1:])
    import hashlib

    data = b"".join(c.data for c in chunks)
    assert hashlib.sha256(data).hexdigest() == chunks[0].sha256
    assert all(same_bits(a, b) for a, b in zip(decode(data), model))
    # fetch_model reassembles it (server default chunk of 1 MiB).
    version, got, nbytes = fetch_model(store.address, store.token_for(7), min_version=0)
    assert version == 2 and nbytes == size and all(same_bits(a, b) for a, b in zip(got, model))


def test_tiny_chunk_requests_are_raised_to_the_minimum(store):
    model = [np.arange(2000, dtype=np.float32)]  # ~8 KB
    store.publish(model, 1)
    chunks = raw_chunks(store, 0, chunk_bytes=10)
    assert all(len(c.data) == 1024 for c in chunks[:-1])
    assert len(chunks) == -(-chunks[0].total_bytes // 1024) > 1
    assert same_bits(decode(b"".join(c.data for c in chunks))[0], model[0])


def test_later_fetches_see_the_newest_version(store):
    first = small_model()
    store.publish(first, 3)
    assert fetch_model(store.address, store.token_for(7), 2)[0] == 3
    second = [a * 2 for a in first]
    store.publish(second, 4)
    version, got, _ = fetch_model(store.address, store.token_for(7), 3)
    assert version == 4 and all(same_bits(a, b) for a, b in zip(got, second))
    assert fetch_model(store.address, store.token_for(7), 4) == (4, None, 0)
    # A device on version 1 gets the newest one, not the one after its own.
    version, got, _ = fetch_model(store.address, store.token_for(7), 1)
    assert version == 4 and all(same_bits(a, b) for a, b in zip(got, second))


def test_snapshot_serialises_once_per_version(store):
    model = small_model()
    store.publish(model, 1)
    v1, data1, digest1 = store.snapshot(0)
    v2, data2, digest2 = store.snapshot(0)
    assert v1 == v2 == 1 and data1 is data2 and digest1 == digest2 and len(digest1) == 64
    store.publish([a + 1 for a in model], 2)
    v3, data3, digest3 = store.snapshot(0)
    assert v3 == 2 and data3 != data1 and digest3 != digest1


def test_unreachable_store_is_a_fetch_error():
    s = ModelStore("127.0.0.1:0")
    address, token = s.address, s.token_for(7)
    s.stop()
    with pytest.raises(FetchError, match="UNAVAILABLE"):
        fetch_model(address, token, 0, timeout=2.0)


# --------------------------------------------------------------------------- model files
def test_model_file_round_trip_keeps_dtypes_shapes_order_and_0d():
    arrays = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array(2.5, dtype=np.float64),  # 0-d
        np.array(-7, dtype=np.int64),  # 0-d
        np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        np.array([1, 0, 255], dtype=np.uint8),
        np.array([True, False]),
        np.array([0.5, -1.25], dtype=np.float16),
        np.zeros((0, 3), dtype=np.float32),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # not C-contiguous
        np.arange(10, dtype=np.int16)[::2],  # strided view
    ]
    data = encode(arrays)
    assert isinstance(data, bytes)
    back = decode(data)
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back):
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    assert back[1].ndim == 0 and back[1] == 2.5 and back[2] == -7
    assert decode(encode([])) == []


def test_model_file_keeps_more_than_ten_arrays_in_order():
    arrays = [np.full(i + 1, i, dtype=np.int32) for i in range(12)]
    assert [int(a[0]) for a in decode(encode(arrays))] == list(range(12))


@pytest.mark.parametrize("garbage", [b"", b"\x00garbage", b"\xff" * 64, b"{not json at all}",
                                     (20).to_bytes(8, "little") + b'{"x": 1}' + b" " * 12])
def test_decoding_garbage_raises_value_error(garbage):
    with pytest.raises(ValueError):
        decode(garbage)


def test_decoding_a_foreign_safetensors_file_raises_value_error():
    from safetensors.numpy import save

    with pytest.raises(ValueError, match="named"):
        decode(save({"weight": np.zeros(2, np.float32)}))
    with pytest.raises(ValueError, match="named"):
        decode(save({"00000": np.zeros(2, np.float32), "00002": np.zeros(2, np.float32)}))


def test_store_over_tls_with_the_superlinks_certificate(tmp_path):
    """The store serves TLS with the certificate deploy/certs/generate.sh makes for the SuperLink."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    script = Path(__file__).resolve().parents[2] / "deploy" / "certs" / "generate.sh"
    shutil.copy(script, tmp_path / "generate.sh")
    subprocess.run(["bash", str(tmp_path / "generate.sh")], check=True, capture_output=True, timeout=120)
    s = ModelStore("127.0.0.1:0", certificates=(tmp_path / "server.pem", tmp_path / "server.key"))
    try:
        s.publish([np.ones(4, np.float32)], 2)
        version, got, _ = fetch_model(s.address, s.token_for(7), 0, root_certificates=tmp_path / "ca.crt")
        assert version == 2 and np.array_equal(got[0], np.ones(4, np.float32))
        with pytest.raises(FetchError):  # plain text against a TLS store fails
            fetch_model(s.address, s.token_for(7), 0, timeout=5)
    finally:
        s.stop()


# --------------------------------------------------------------------------- concurrency, limits, every fetch error
def test_concurrent_fetches_encode_each_version_once(store, monkeypatch):
    import threading
    import time

    from fedhive.server import model_store as ms

    real = ms.encode

    def slow_encode(arrays):  # a slow encoding widens the race the lock must close
        time.sleep(0.2)
        return real(arrays)

    monkeypatch.setattr(ms, "encode", slow_encode)
    model = small_model()
    store.publish(model, 1)
    results, start = [], threading.Barrier(8)

    def fetch():
        start.wait()
        results.append(fetch_model(store.address, store.token_for(7), 0, timeout=20))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and all(v == 1 and all(same_bits(a, b) for a, b in zip(got, model))
                                     for v, got, _ in results)
    assert store.encodes == 1 and store.served == 8
    store.publish([a + 1 for a in model], 2)
    assert fetch_model(store.address, store.token_for(7), 1)[0] == 2 and store.encodes == 2


def test_streams_beyond_the_bound_are_refused_and_raised_as_fetch_errors(monkeypatch):
    import threading

    from fedhive.server import model_store as ms

    gate = threading.Event()
    real = ms.encode
    monkeypatch.setattr(ms, "encode", lambda arrays: (gate.wait(10), real(arrays))[1])
    s = ModelStore("127.0.0.1:0", max_streams=1)
    try:
        assert s.max_streams == 1
        s.publish(small_model(), 1)
        held = threading.Thread(target=fetch_model, args=(s.address, s.token_for(7), 0), kwargs={"timeout": 20})
        held.start()
        import time

        deadline = time.monotonic() + 5
        while s.served == 0 and time.monotonic() < deadline:  # the first call is inside the store
            time.sleep(0.02)
        with pytest.raises(FetchError, match="RESOURCE_EXHAUSTED"):
            fetch_model(s.address, s.token_for(7), 0, timeout=5)
        gate.set()
        held.join(20)
    finally:
        gate.set()
        s.stop()


def test_a_model_that_cannot_be_encoded_is_internal_and_counted(store):
    store.publish([object()], 1)  # not an array
    with pytest.raises(FetchError, match="INTERNAL"):
        fetch_model(store.address, store.token_for(7), 0, timeout=5)
    assert store.failed == 1 and store.served == 0
    store.publish(small_model(), 2)
    assert fetch_model(store.address, store.token_for(7), 0)[0] == 2


def test_a_missing_ca_file_is_a_fetch_error_naming_it(store, tmp_path):
    missing = tmp_path / "no-such-ca.crt"
    with pytest.raises(FetchError, match="no-such-ca.crt"):
        fetch_model(store.address, store.token_for(7), 0, root_certificates=missing, timeout=2)
    with pytest.raises(FetchError):  # a CA file that is not PEM: the handshake fails
        bad = tmp_path / "bad.crt"
        bad.write_bytes(b"not a certificate")
        fetch_model(store.address, store.token_for(7), 0, root_certificates=bad, timeout=2)


class _Liar(pb_grpc.ModelStoreServicer):
    """A store that sends whatever chunks it is given."""

    def __init__(self, chunks):
        self.chunks = chunks

    def GetModel(self, request, context):  # noqa: N802
        yield from self.chunks


def _liar(chunks):
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ModelStoreServicer_to_server(_Liar(chunks), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _chunk(data, total=None, offset=0, digest=None):
    import hashlib

    return pb.ModelChunk(newer=True, version=5, total_bytes=len(data) if total is None else total, offset=offset,
                         data=data, sha256=hashlib.sha256(data).hexdigest() if digest is None else digest)


@pytest.mark.parametrize("chunks, words", [
    ([_chunk(b"\x00garbage model bytes")], "not a model"),
    ([_chunk(b"\xff" * 64)], "not a model"),
    ([_chunk(b"abc", digest="0" * 64)], "bad checksum"),
    ([_chunk(b"abc", total=10)], "3 of 10 bytes"),
    ([_chunk(b"abcdef", total=3)], "offset 0 of 6 bytes after 0 of 3"),
    ([_chunk(b"abc", total=6), pb.ModelChunk(newer=True, version=5, offset=7, data=b"def")], "offset 7"),
    ([_chunk(b"abc", total=1 << 40)], "limit"),
])
def test_a_broken_model_from_the_store_is_a_fetch_error(chunks, words):
    server, address = _liar(chunks)
    try:
        with pytest.raises(FetchError, match=words):
            fetch_model(address, "t", 0, timeout=5)
    finally:
        server.stop(None)


def test_a_stuck_store_is_a_fetch_error_within_the_deadline():
    import socket
    import time

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)  # accepts TCP, never speaks HTTP/2
    try:
        t0 = time.monotonic()
        with pytest.raises(FetchError):
            fetch_model(f"127.0.0.1:{lsock.getsockname()[1]}", "t", 0, timeout=1.0)
        assert time.monotonic() - t0 < 5
    finally:
        lsock.close()


def test_the_default_fetch_deadline_is_short():
    import inspect

    from fedhive.client import fetch

    assert inspect.signature(fetch_model).parameters["timeout"].default == fetch.FETCH_TIMEOUT <= 30


@pytest.mark.parametrize("address", ["127.0.0.1:70000", "::1:0", "[nope]:0"])
def test_bad_listen_ports_and_unbracketed_ipv6_are_refused(address):
    with pytest.raises(ValueError, match="model store address must be HOST:PORT"):
        ModelStore(address)


def test_the_store_listens_on_ipv6_in_brackets():
    try:
        s = ModelStore("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert s.address.startswith("[::1]:")
        s.publish(small_model(), 1)
        assert fetch_model(s.address, s.token_for(7), 0, timeout=5)[0] == 1
    finally:
        s.stop()
