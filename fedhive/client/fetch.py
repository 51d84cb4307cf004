"""The device side of the model store: fetch the global model if it is newer than the one being trained."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np

from fedhive.proto import model_store_pb2 as pb
from fedhive.proto import model_store_pb2_grpc as pb_grpc
from fedhive.proto.modelfile import decode

TOKEN_KEY = "x-fedhive-token"


#: Seconds a device's whole fetch may take by default (it is part-way through training; a stuck store must not
#: hold it).
FETCH_TIMEOUT = 20.0
#: Largest model file a device accepts from the store by default, in bytes.
MAX_MODEL_BYTES = 1 << 30


class FetchError(RuntimeError):
    """Every way a fetch can fail: the store refused the request, was unreachable or too slow, sent a broken model
    (size, offsets, checksum or file format), or the CA file could not be read."""


def fetch_model(address: str, token: str, min_version: int, *, root_certificates: str | Path | bytes | None = None,
                timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_MODEL_BYTES
                ) -> tuple[int, list[np.ndarray] | None, int]:
    """Ask the store at ``address`` for its model if newer than ``min_version``.

    ``timeout`` bounds the whole call (seconds); ``max_bytes`` is the largest model file accepted.

    Returns
    -------
    (version, params or None, bytes received)
        ``params`` is None when the store's model (of ``version``) is not newer.

    Raises
    ------
    FetchError
        Wrong token (UNAUTHENTICATED), store unreachable or past ``timeout`` (UNAVAILABLE, DEADLINE_EXCEEDED), the
        store busy (RESOURCE_EXHAUSTED), a CA file that cannot be read, or a model that is larger than
        ``max_bytes``, out of order, fails its checksum or is not a model file.
    """
    if root_certificates is not None and not isinstance(root_certificates, bytes):
        try:
            root_certificates = Path(root_certificates).read_bytes()
        except OSError as exc:
            raise FetchError(f"model store CA file {str(root_certificates)!r} cannot be read: "
                             f"{exc.strerror or exc}") from exc
    try:
        if root_certificates is not None:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root_certificates))
        else:
            channel = grpc.insecure_channel(address)
    except (ValueError, TypeError, grpc.RpcError) as exc:
        raise FetchError(f"model store {address!r}: cannot open a channel: {exc}") from exc
    try:
        stub = pb_grpc.ModelStoreStub(channel)
        parts: list[bytes] = []
        received, first = 0, True
        version, total, digest, newer = -1, 0, "", False
        try:
            for chunk in stub.GetModel(pb.GetModelRequest(min_version=int(min_version)), timeout=timeout,
                                       metadata=((TOKEN_KEY, token),)):
                if first:
                    first = False
                    version, newer, total, digest = chunk.version, chunk.newer, chunk.total_bytes, chunk.sha256
                    if newer and not 0 <= total <= max_bytes:
                        raise FetchError(f"model store {address} announced a model of {total} bytes; the limit is "
                                         f"{max_bytes} bytes")
                if not chunk.newer:
                    return int(chunk.version), None, 0
                if chunk.offset != received or received + len(chunk.data) > total:
                    raise FetchError(f"model store {address} sent a chunk at offset {chunk.offset} of "
                                     f"{len(chunk.data)} bytes after {received} of {total} bytes")
                parts.append(chunk.data)
                received += len(chunk.data)
        except grpc.RpcError as exc:
            raise FetchError(f"model store {address}: {exc.code().name}: {exc.details()}") from exc
        data = b"".join(parts)
        if not newer:
            return int(version), None, 0
        if len(data) != total or hashlib.sha256(data).hexdigest() != digest:
            raise FetchError(f"model store {address} sent {len(data)} of {total} bytes or a bad checksum")
        try:
            return int(version), decode(data), len(data)
        except ValueError as exc:
            raise FetchError(f"model store {address} sent a file that is not a model: {exc}") from exc
    finally:
        channel.close()
