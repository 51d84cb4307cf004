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


class FetchError(RuntimeError):
    """The model store refused the request or sent a broken model."""


def fetch_model(address: str, token: str, min_version: int, *, root_certificates: str | Path | bytes | None = None,
                timeout: float = 60.0) -> tuple[int, list[np.ndarray] | None, int]:
    """Ask the store at ``address`` for its model if newer than ``min_version``.

    Returns
    -------
    (version, params or None, bytes received)
        ``params`` is None when the store's model (of ``version``) is not newer.

    Raises
    ------
    FetchError
        Wrong token (UNAUTHENTICATED), store unreachable, or a model whose checksum does not match.
    """
    if root_certificates is not None:
        pem = root_certificates if isinstance(root_certificates, bytes) else Path(root_certificates).read_bytes()
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=pem))
    else:
        channel = grpc.insecure_channel(address)
    try:
        stub = pb_grpc.ModelStoreStub(channel)
        parts: list[bytes] = []
        version, total, digest, newer = -1, 0, "", False
        try:
            for chunk in stub.GetModel(pb.GetModelRequest(min_version=int(min_version)), timeout=timeout,
                                       metadata=((TOKEN_KEY, token),)):
                if chunk.offset == 0:
                    version, newer, total, digest = chunk.version, chunk.newer, chunk.total_bytes, chunk.sha256
                if not chunk.newer:
                    return int(chunk.version), None, 0
                parts.append(chunk.data)
        except grpc.RpcError as exc:
            raise FetchError(f"model store {address}: {exc.code().name}: {exc.details()}") from exc
        data = b"".join(parts)
        if not newer:
            return int(version), None, 0
        if len(data) != total or hashlib.sha256(data).hexdigest() != digest:
            raise FetchError(f"model store {address} sent {len(data)} of {total} bytes or a bad checksum")
        return int(version), decode(data), len(data)
    finally:
        channel.close()
