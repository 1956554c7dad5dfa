"""Shared pytest fixtures: private Redis servers, a cluster, TLS, a TCP proxy.

Every server here is a real ``redis-server`` on 127.0.0.1 started by ``redis_servers.py`` and
stopped (by pid) at teardown; an atexit hook there kills anything a crash left behind.

Session-scoped servers are shared by all tests: use unique key/lease names (``unique_name``) and
never kill/pause/restart them; take ``fresh_redis_server`` or ``redis_server_factory`` for that.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from redis_servers import RedisCluster, RedisServer  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

# ============================================================================================
# Harness fixtures (servers, cluster, proxy)
# ============================================================================================


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A plain Redis server for the whole session (no auth, no TLS). Shared: don't kill it."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def tls_redis_server() -> Iterator[RedisServer]:
    """A TLS-only Redis server for the session; its CA is ``.ca_file``, its URL ``rediss://``.

    SSL_CERT_FILE is set machine-wide: a client that reads it must be given this CA per process
    (``srv.env_with_ca()`` for a subprocess)."""
    with RedisServer(tls=True) as srv:
        yield srv


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster (no replicas, all 16384 slots covered) for the session.
    Shared: don't kill its nodes (build your own ``RedisCluster`` for that)."""
    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A new, empty Redis server for one test: free to kill, pause, restart."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """``make(**kwargs)`` starts a ``RedisServer(**kwargs)`` (password=, acl_users=, tls=,
    extra_args=...), stopped at the end of the test."""
    started: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        srv = RedisServer(**kwargs)
        started.append(srv)
        return srv.start()

    yield make
    for srv in reversed(started):
        srv.stop()


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Callable[..., TcpProxy]]:
    """``make(target_port, target_host="127.0.0.1")`` starts a :class:`TcpProxy` (``.port``,
    ``.blackhole()``, ``.heal()``, ``.cut()``), closed at the end of the test."""
    started: list[TcpProxy] = []

    def make(target_port: int, target_host: str = "127.0.0.1", **kwargs: Any) -> TcpProxy:
        proxy = TcpProxy(target_port, target_host, **kwargs)
        started.append(proxy)
        return proxy.start()

    yield make
    for proxy in reversed(started):
        proxy.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A key/lease name no other test uses: ``test-<test name>-<random>``."""
    base = request.node.name.replace("[", "-").replace("]", "")[:40]
    return f"test-{base}-{uuid.uuid4().hex[:12]}"


# ============================================================================================
# Project fixtures (stores, clients, parametrisations) go below this line.
# ============================================================================================
