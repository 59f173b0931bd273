"""One moto S3 server for every test module of tests/scale that needs one.

fsspec caches its S3 clients (keyed by their options, not by the endpoint they were made for), so
a second server on another port would be reached through clients of the first: the modules share
one server for the whole session instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of moto's standalone S3 server (a real HTTP server in a thread)."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"  # loopback only
    yield f"http://{host}:{port}"
    server.stop()
