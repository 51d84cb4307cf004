"""Serving a prometheus-client registry over HTTP, for the server app's and the agent's metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


def serve(address: str, registry: CollectorRegistry, option: str) -> Any:
    """Expose ``registry`` at ``http://address/metrics``; returns a handle for :func:`stop`.

    Raises
    ------
    ValueError
        ``address`` is not ``HOST:PORT`` (``option`` names the setting in the message). OSError: the port is taken.
    """
    from fedhive.runconfig import host_port

    host, port = host_port(option, address, any_port=True)
    return start_http_server(port, addr=host or "127.0.0.1", registry=registry)


def stop(handle: Any) -> None:
    """Stop a server started by :func:`serve` (``None``: nothing to stop)."""
    if handle is not None:
        server, _ = handle
        server.shutdown()
        server.server_close()
