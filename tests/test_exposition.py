"""The metrics endpoint takes the same HOST:PORT forms the run config accepts, IPv6 in brackets included."""

import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from fedhive.exposition import serve, stop


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::1]:0"])
def test_serves_metrics_on_ipv4_and_bracketed_ipv6(address):
    reg = CollectorRegistry()
    Counter("probe_total", "a probe", registry=reg).inc()
    handle = serve(address, reg, "metrics-address")
    try:
        host, port = handle[0].server_address[:2]
        url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
        assert "probe_total 1.0" in urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        stop(handle)


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "::1:9400", "nohost", "127.0.0.1:-1", ""])
def test_refuses_what_is_not_host_port_naming_the_setting(address):
    with pytest.raises(ValueError, match="metrics-address"):
        serve(address, CollectorRegistry(), "metrics-address")
