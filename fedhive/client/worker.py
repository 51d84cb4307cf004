"""The warm worker: a :class:`~fedhive.client.trainer.Trainer` served on a Unix socket by ``fedhive agent``.

Flower starts a fresh ClientApp process for every message; importing torch and loading the data in each would cost
seconds per task. The agent keeps one Trainer alive and the ClientApp hands it the request over the socket.

Frames: an 8-byte big-endian length and a JSON header, then an 8-byte length and a safetensors file of the arrays
(:mod:`fedhive.proto.modelfile`); the reply is framed the same way, its header ``{"ok": false, "error": ...}`` on
failure. No pickle crosses the socket. The socket file is created with mode 0600.

Limits (everything on the socket is untrusted):

- a header is at most :data:`MAX_HEADER` bytes and must be a JSON object; a body at most :data:`MAX_BODY` bytes
  (``Worker(max_body=...)``). A larger length claim is refused with an error frame before anything is read or
  allocated, and bodies are read in pieces as they arrive, never allocated at the claimed size up front;
- a request must arrive whole within :data:`IO_TIMEOUT` seconds of its first byte being expected, and the reply
  must be taken within as long; a stalled connection is then closed;
- any bad frame (length, JSON, safetensors) gets an error frame ``{"ok": false, "error": "bad frame: ..."}`` and
  the connection is closed;
- every connection has its own thread (at most :data:`MAX_CONNECTIONS` at once; one more gets a "busy" error
  frame), so a stalled connection never blocks another ClientApp. The trainer still runs one request at a time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedhive.proto.modelfile import decode, encode
from fedhive.strategies.params import integer, number

from .trainer import Trainer

log = logging.getLogger("fedhive.worker")

_LEN = struct.Struct(">Q")
#: Largest header (JSON) a frame may claim, in bytes.
MAX_HEADER = 16 << 20
#: Largest body (safetensors file) a frame may claim by default, in bytes (``Worker(max_body=...)``).
MAX_BODY = 256 << 20
#: Seconds a request may take to arrive, or a reply to be taken, before the worker closes the connection.
IO_TIMEOUT = 60.0
#: Connections served at once; one more is answered with a "busy" error frame.
MAX_CONNECTIONS = 16
_PIECE = 1 << 20


class WorkerError(RuntimeError):
    """The worker answered with an error (its message says which), sent a bad reply, or the socket broke or timed
    out after the request was sent."""


class FrameError(ValueError):
    """A frame that breaks the format or its limits (the message says which)."""


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """``n`` bytes, read in pieces (memory grows only as data arrives); ``deadline`` (monotonic) bounds the wait."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out reading a frame")
            sock.settimeout(left)
        piece = sock.recv(min(n - len(buf), _PIECE))
        if not piece:
            raise ConnectionError("the other side closed the socket")
        buf += piece
    return bytes(buf)


def send_frame(sock: socket.socket, header: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> None:
    head = json.dumps(header).encode()
    body = encode(arrays) if arrays else b""
    sock.sendall(_LEN.pack(len(head)) + head + _LEN.pack(len(body)))
    if body:
        sock.sendall(body)


def _length(sock: socket.socket, limit: int, what: str, deadline: float | None) -> int:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size, deadline))
    if n > limit:
        raise FrameError(f"frame {what} of {n} bytes is larger than the limit of {limit} bytes")
    return n


def recv_frame(sock: socket.socket, *, max_body: int = MAX_BODY, deadline: float | None = None
               ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One frame: ``(header, arrays)``.

    Raises
    ------
    FrameError
        A length claim over :data:`MAX_HEADER` or ``max_body`` (refused before reading on), a header that is not a
        JSON object, or a body that is not a model file of :mod:`fedhive.proto.modelfile`.
    ConnectionError, TimeoutError
        The socket closed, or ``deadline`` (``time.monotonic()``) passed.
    """
    n = _length(sock, MAX_HEADER, "header", deadline)
    try:
        header = json.loads(_recv_exact(sock, n, deadline))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FrameError(f"frame header must be a JSON object, got {type(header).__name__}")
    m = _length(sock, max_body, "body", deadline)
    if not m:
        return header, []
    try:
        arrays = decode(_recv_exact(sock, m, deadline))
    except ValueError as exc:
        raise FrameError(f"frame body is not a model file: {exc}") from exc
    return header, arrays


def _error_frame(sock: socket.socket, message: str) -> None:
    try:
        send_frame(sock, {"ok": False, "error": message}, [])
    except OSError:  # the other side is gone or stalled: nothing more to do
        pass


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        try:
            req, arrays = recv_frame(sock, max_body=server.max_body, deadline=time.monotonic() + server.io_timeout)
        except FrameError as exc:
            log.warning("bad frame on the worker socket: %s", exc)
            sock.settimeout(server.io_timeout)
            _error_frame(sock, f"bad frame: {exc}")
            return
        except OSError as exc:  # closed, reset or stalled: no one to answer
            log.warning("worker connection dropped while reading a request: %s", exc)
            return
        try:
            with server.train_lock:
                reply, out = server.trainer.handle(req, arrays)
            reply = {"ok": True, **reply}
        except Exception as exc:  # any failure goes back to the ClientApp, which raises it to Flower (code 2)
            log.exception("worker request %s failed", req.get("op"))
            reply, out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, []
        sock.settimeout(server.io_timeout)
        try:
            send_frame(sock, reply, out)
        except OSError as exc:
            log.warning("worker reply to %s not delivered: %s", req.get("op"), exc)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, trainer: Trainer, *, max_body: int, io_timeout: float,
                 max_connections: int) -> None:
        self.trainer = trainer
        self.max_body = max_body
        self.io_timeout = io_timeout
        self.train_lock = threading.Lock()  # the trainer runs one request at a time, as before
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        super().__init__(path, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("worker busy: %d connections open; refusing one", self.max_connections)
            request.settimeout(1.0)
            _error_frame(request, f"worker busy: {self.max_connections} connections already open")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Worker:
    """Serves ``trainer`` on the Unix socket ``path`` from background threads (one per connection, at most
    ``max_connections``; the trainer itself runs one request at a time).

    Parameters
    ----------
    max_body : int
        Largest model file a request may carry, in bytes (default :data:`MAX_BODY`).
    io_timeout : float
        Seconds a request may take to arrive and a reply to be taken (default :data:`IO_TIMEOUT`).
    max_connections : int
        Connections served at once (default :data:`MAX_CONNECTIONS`).
    """

    def __init__(self, path: str | Path, trainer: Trainer, *, max_body: int = MAX_BODY,
                 io_timeout: float = IO_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        max_body = integer("max_body (bytes)", max_body, low=0)
        io_timeout = number("io_timeout (seconds)", io_timeout, low=0, low_open=True)
        max_connections = integer("max_connections", max_connections, low=1)
        self.path = str(path)
        if os.path.exists(self.path):
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            self._server = _Server(self.path, trainer, max_body=max_body, io_timeout=io_timeout,
                                   max_connections=max_connections)
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


def call(path: str, header: Mapping[str, Any], arrays: Sequence[np.ndarray] = (), timeout: float | None = None,
         *, max_body: int = MAX_BODY) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Send one request to the worker at ``path`` and return its reply.

    ``timeout``: seconds for the whole call, connecting, sending, the work and the reply (None: no limit).

    Raises
    ------
    WorkerError
        The worker reported an error, its reply broke the frame format or limits, or the connection broke or timed
        out after it was made (the worker may have started the work: do not run it again elsewhere).
    OSError
        The socket does not exist or nothing listens on it (nothing was sent).
    """
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            send_frame(sock, header, arrays)
            reply, out = recv_frame(sock, max_body=max_body, deadline=deadline)
        except TimeoutError as exc:
            raise WorkerError(f"the worker at {path} did not answer within {timeout} s") from exc
        except (OSError, FrameError) as exc:
            raise WorkerError(f"the worker at {path} broke off: {type(exc).__name__}: {exc}") from exc
    if not reply.pop("ok", False):
        raise WorkerError(reply.get("error", "the worker failed without saying why"))
    return reply, out
