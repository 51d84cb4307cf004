"""The warm worker: a :class:`~fedhive.client.trainer.Trainer` served on a Unix socket by ``fedhive agent``.

Flower starts a fresh ClientApp process for every message; importing torch and loading the data in each would cost
seconds per task. The agent keeps one Trainer alive and the ClientApp hands it the request over the socket.

Frames: an 8-byte big-endian length and a JSON header, then an 8-byte length and a safetensors file of the arrays
(:mod:`fedhive.proto.modelfile`); the reply is framed the same way, its header ``{"ok": false, "error": ...}`` on
failure. No pickle crosses the socket. The socket file is created with mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedhive.proto.modelfile import decode, encode

from .trainer import Trainer

log = logging.getLogger("fedhive.worker")

_LEN = struct.Struct(">Q")
MAX_HEADER = 16 << 20


class WorkerError(RuntimeError):
    """The worker answered with an error (its message says which) or the socket broke."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the other side closed the socket")
        got += k
    return bytes(buf)


def send_frame(sock: socket.socket, header: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> None:
    head = json.dumps(header).encode()
    body = encode(arrays) if arrays else b""
    sock.sendall(_LEN.pack(len(head)) + head + _LEN.pack(len(body)))
    if body:
        sock.sendall(body)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if n > MAX_HEADER:
        raise ValueError(f"frame header of {n} bytes is larger than {MAX_HEADER}")
    header = json.loads(_recv_exact(sock, n))
    (m,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    arrays = decode(_recv_exact(sock, m)) if m else []
    return header, arrays


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        trainer: Trainer = self.server.trainer  # type: ignore[attr-defined]
        try:
            req, arrays = recv_frame(self.request)
        except (ConnectionError, ValueError) as exc:
            log.warning("bad request on the worker socket: %s", exc)
            return
        try:
            reply, out = trainer.handle(req, arrays)
            reply = {"ok": True, **reply}
        except Exception as exc:  # any failure goes back to the ClientApp, which raises it to Flower (code 2)
            log.exception("worker request %s failed", req.get("op"))
            reply, out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, []
        send_frame(self.request, reply, out)


class _Server(socketserver.UnixStreamServer):
    def __init__(self, path: str, trainer: Trainer) -> None:
        self.trainer = trainer
        super().__init__(path, _Handler)


class Worker:
    """Serves ``trainer`` on the Unix socket ``path`` from a background thread (one request at a time)."""

    def __init__(self, path: str | Path, trainer: Trainer) -> None:
        self.path = str(path)
        if os.path.exists(self.path):
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            self._server = _Server(self.path, trainer)
        finally:
            os.umask(old)
        self.trainer = trainer
        self._thread = threading.Thread(target=self._server.serve_forever, name="fedhive-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def call(path: str, header: Mapping[str, Any], arrays: Sequence[np.ndarray] = (), timeout: float | None = None
         ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Send one request to the worker at ``path`` and return its reply.

    Raises
    ------
    WorkerError
        The worker reported an error.
    OSError
        The socket does not exist or nothing listens on it.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        send_frame(sock, header, arrays)
        reply, out = recv_frame(sock)
    if not reply.pop("ok", False):
        raise WorkerError(reply.get("error", "the worker failed without saying why"))
    return reply, out
