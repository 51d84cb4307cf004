"""The model store: a read-only gRPC service beside the server app that hands out the current global model.

Flower cannot deliver a second message to a client in the middle of its training, but FedASMU's devices fetch the
freshest global model part-way through. They call ``GetModel(min_version)`` on this service
(``fedhive/proto/model_store.proto``): when the store's model is newer it is streamed as a safetensors file in
chunks, else the reply is one "not newer" message. The service uses the SuperLink's TLS certificate and key when TLS
is on.

Credentials are per node and per run: every call carries its node's token (metadata ``x-fedhive-token``),
``"<node id>.<HMAC-SHA256(run secret, node id)>"``, which the server sends to that node only, in its train
messages. The store recomputes the MAC from the node id in the token and compares in constant time; the run secret
(256 random bits) never leaves the server. So no node can make another node's token or the next run's from its
own, and a leaked token names the node it was given to (``refused`` counts the calls turned away,
``served_by_node`` the models served under each node's token). What this does not do: bind a token to the caller.
Whoever holds a node's token can fetch the model under it until the run ends; that binding needs TLS client
certificates or Flower's node authentication in front of the store.

The orchestrator thread publishes each new global model with :meth:`ModelStore.publish` (a reference swap); the
file is serialised exactly once per version, lazily, by the first request that needs it (concurrent requests wait
for that one encoding; :attr:`ModelStore.encodes` counts them).

Load is bounded: at most ``max_streams`` calls are served at once (gRPC's ``maximum_concurrent_rpcs``; one more is
answered RESOURCE_EXHAUSTED at once, which the device's :func:`~fedhive.client.fetch.fetch_model` raises as a
``FetchError`` and trains on without the fetch). Counters: ``served``, ``not_newer``, ``refused`` (missing,
malformed or wrong token),
``failed`` (the model could not be encoded: INTERNAL).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from concurrent import futures
from pathlib import Path
from typing import Iterator, Sequence

import grpc
import numpy as np

from fedhive.proto import model_store_pb2 as pb
from fedhive.proto import model_store_pb2_grpc as pb_grpc
from fedhive.proto.modelfile import encode
from fedhive.runconfig import host_port
from fedhive.strategies.params import integer

log = logging.getLogger("fedhive.model_store")

TOKEN_KEY = "x-fedhive-token"
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20


_TOKEN_DOMAIN = b"fedhive model store node token v1:"
_MAX_TOKEN = 128  # "<node id: at most 20 digits>.<64 hex digits>", with room to spare; longer is refused unread


def new_secret() -> str:
    """A fresh run secret (256 random bits, hex)."""
    return secrets.token_hex(32)


def node_token(secret: str, node_id: int) -> str:
    """The model-store token of ``node_id`` under the run ``secret``: ``"<node id>.<HMAC-SHA256 hex>"``."""
    node = int(node_id)
    if node < 0 or node >= 1 << 64:
        raise ValueError(f"a node id is an unsigned 64-bit integer, got {node_id!r}")
    mac = hmac.new(secret.encode(), _TOKEN_DOMAIN + str(node).encode(), hashlib.sha256).hexdigest()
    return f"{node}.{mac}"


def token_node(secret: str, token: object) -> int | None:
    """The node id a ``token`` was issued to under ``secret``, or None when it is missing, malformed or forged."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        return None
    node, dot, _ = token.partition(".")
    if not dot or not node.isascii() or not node.isdigit() or len(node) > 20 or int(node) >= 1 << 64:
        return None
    expected = node_token(secret, int(node))
    return int(node) if hmac.compare_digest(token.encode(), expected.encode()) else None


class _Servicer(pb_grpc.ModelStoreServicer):
    def __init__(self, store: "ModelStore") -> None:
        self.store = store

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> Iterator[pb.ModelChunk]:  # noqa: N802
        node = token_node(self.store.secret, dict(context.invocation_metadata()).get(TOKEN_KEY))
        if node is None:
            with self.store._lock:
                self.store.refused += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"missing, malformed or wrong node token in metadata {TOKEN_KEY!r}; send the token this "
                          "node received in its train message of this run")
        try:
            version, data, digest = self.store.snapshot(request.min_version)
        except Exception as exc:  # a model that cannot be encoded: the device trains on without it
            self.store.failed += 1
            log.exception("model store cannot encode its model")
            context.abort(grpc.StatusCode.INTERNAL, f"the store cannot encode its model: {type(exc).__name__}")
        if data is None:
            self.store.not_newer += 1
            yield pb.ModelChunk(newer=False, version=version)
            return
        with self.store._lock:
            self.store.served += 1
            self.store.served_by_node[node] = self.store.served_by_node.get(node, 0) + 1
        chunk = request.chunk_bytes or DEFAULT_CHUNK
        chunk = max(1024, min(int(chunk), MAX_CHUNK))
        total = len(data)
        view = memoryview(data)
        for off in range(0, max(total, 1), chunk):
            first = off == 0
            yield pb.ModelChunk(newer=True, version=version, total_bytes=total if first else 0, offset=off,
                                data=bytes(view[off:off + chunk]), sha256=digest if first else "")


class ModelStore:
    """The gRPC model store of one run.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` to listen on (port 0: any free port; :attr:`address` then tells which).
    secret : str, optional
        The run secret the node tokens are derived from (default: a fresh random one; see :meth:`token_for`).
    certificates : tuple of paths, optional
        ``(certfile, keyfile)`` for TLS: the same files as the SuperLink's ``--ssl-certfile/--ssl-keyfile``.
    max_workers : int
        Threads serving calls.
    max_streams : int, optional
        Calls served at once (default ``max_workers``); more are refused with RESOURCE_EXHAUSTED.
    """

    def __init__(self, address: str = "127.0.0.1:0", *, secret: str | None = None,
                 certificates: tuple[str | Path, str | Path] | None = None, max_workers: int = 8,
                 max_streams: int | None = None) -> None:
        host_port("model store address", address, any_port=True)
        host = address.rpartition(":")[0]  # an IPv6 host keeps its brackets, as gRPC wants it
        if secret is not None and (type(secret) is not str or len(secret) < 32):
            raise ValueError("the model store secret must be a string of at least 32 characters (new_secret() makes "
                             "one)")
        self.secret = secret or new_secret()
        self.served_by_node: dict[int, int] = {}
        self.tls = certificates is not None
        self._lock = threading.Lock()
        self._version = -1
        self._params: Sequence[np.ndarray] | None = None
        self._file: tuple[int, bytes, str] | None = None
        self._encode_lock = threading.Lock()  # one encoding at a time: each version is encoded once
        self.served = 0
        self.not_newer = 0
        self.refused = 0
        self.failed = 0
        self.encodes = 0
        max_workers = integer("model store max_workers", max_workers, low=1)
        self.max_streams = integer("model store max_streams", max_workers if max_streams is None else max_streams,
                                   low=1)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="store"),
                                   options=[("grpc.max_send_message_length", MAX_CHUNK + (1 << 16))],
                                   maximum_concurrent_rpcs=self.max_streams)
        pb_grpc.add_ModelStoreServicer_to_server(_Servicer(self), self._server)
        if certificates is not None:
            cert, key = (Path(p).read_bytes() for p in certificates)
            bound = self._server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = self._server.add_insecure_port(address)
        if not bound:
            raise OSError(f"model store cannot listen on {address}; is the port in use?")
        self.address = f"{host}:{bound}"
        self._server.start()
        log.info("model store listening on %s (%s)", self.address, "TLS" if self.tls else "plain text")

    def token_for(self, node_id: int) -> str:
        """The token that node ``node_id`` sends with its calls (see the module docstring)."""
        return node_token(self.secret, node_id)

    def publish(self, params: Sequence[np.ndarray], version: int) -> None:
        """Make ``params`` (read-only arrays, not copied) the model served as ``version``."""
        with self._lock:
            if version != self._version:
                self._version = int(version)
                self._params = params
                self._file = None

    @property
    def version(self) -> int:
        return self._version

    def snapshot(self, min_version: int) -> tuple[int, bytes | None, str]:
        """``(version, file bytes or None when not newer than min_version, sha256)``."""
        with self._lock:
            version, params, cached = self._version, self._params, self._file
        if params is None or version <= min_version:
            return version, None, ""
        if cached is None or cached[0] != version:
            with self._encode_lock:
                with self._lock:
                    cached = self._file
                if cached is None or cached[0] != version:  # no one encoded it while this call waited
                    data = encode(params)
                    self.encodes += 1
                    cached = (version, data, hashlib.sha256(data).hexdigest())
                    with self._lock:
                        if self._version == version:
                            self._file = cached
        return cached[0], cached[1], cached[2]

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()
