"""Shared pytest fixtures: private Redis servers, a cluster, TLS, a TCP proxy, PostgreSQL, etcd.

Every server here is a real ``redis-server`` on 127.0.0.1 started by ``redis_servers.py`` (or a
real PostgreSQL started by ``postgres_server.py``, or a real 3-member etcd cluster started by
``etcd_server.py``) and stopped (by pid) at teardown; an atexit
hook there kills anything a crash left behind.

Session-scoped servers are shared by all tests: use unique key/lease names (``unique_name``) and
never kill/pause/restart them; take ``fresh_redis_server`` or ``redis_server_factory`` for that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from etcd_server import EtcdCluster, etcd_installed  # noqa: E402
from postgres_server import PostgresServer, postgres_bin_dir  # noqa: E402
from redis_servers import RedisCluster, RedisServer  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

# A run started in the background of a non-interactive shell (`nohup bash .ci/run &`) inherits
# SIGINT ignored, and so would every process the tests start: bash cannot trap a signal ignored
# at its start, and Python installs no KeyboardInterrupt handler for it, so the tests of Ctrl-C
# (the demo script, `leasing leader --watch`, the wizard, an interrupted wait) would see it
# ignored. A handler here is reset to the default in the children at exec, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (superuser with a password, no TLS). Shared: don't
    kill it. Skipped only when PostgreSQL is not installed outside CI (in CI it must be)."""
    if postgres_bin_dir() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    with PostgresServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster for the session (no auth, no TLS). Shared: don't kill its
    members. Skipped only when etcd is not installed outside CI (in CI it must be)."""
    if not etcd_installed() and not os.environ.get("CI"):
        pytest.skip("etcd not found (apt-get install etcd-server etcd-client)")
    with EtcdCluster() as cluster:
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


class StoreUnderTest:
    """One store for store-parametrised tests: its URL, and how to make a lease lost behind the
    library's back (delete the key or the row, as an operator or an expiry would)."""

    def __init__(self, kind: str, url: str, make_lost: Callable[[str], None]) -> None:
        self.kind = kind
        self.url = url
        self.make_lost = make_lost

    def __repr__(self) -> str:
        return f"<store {self.kind} {self.url}>"


_DELETE_ROW = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=10)
with con:
    cur = con.execute("DELETE FROM leases WHERE name = ?", (sys.argv[2],))
con.close()
print(cur.rowcount)
"""


def _sqlite_make_lost(path: Path) -> Callable[[str], None]:
    def make_lost(name: str) -> None:
        # In another process, as an operator would: two SQLite libraries in one process (this
        # interpreter's and the extension's bundled one) share the process's POSIX locks, so
        # closing this one's connection would drop the other's locks and let SQLite delete the
        # write-ahead log under it.
        out = subprocess.run(
            [sys.executable, "-c", _DELETE_ROW, str(path), name],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "1", f"no row for lease {name!r} in {path}"

    return make_lost


@pytest.fixture(params=["sqlite", "redis", "redis-cluster", "postgres", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """Every store in turn: a fresh SQLite file, the session's Redis, the session's cluster, the
    session's PostgreSQL, the session's etcd cluster."""
    if request.param == "sqlite":
        db = tmp_path / "leases.db"
        yield StoreUnderTest("sqlite", f"sqlite://{db}", _sqlite_make_lost(db))
    elif request.param == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")

        def make_lost_redis(name: str) -> None:
            assert srv.cli("DEL", f"lease:{name}").strip() == "1"

        yield StoreUnderTest("redis", srv.url, make_lost_redis)
    elif request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")

        def make_lost_postgres(name: str) -> None:
            deleted = pg.psql(
                "DELETE FROM distributed_leasing.leases"
                " WHERE key_prefix = 'lease:' AND name = :'name' RETURNING 1",
                {"name": name},
            )
            assert deleted == "1", f"no row for lease {name!r}"

        yield StoreUnderTest("postgres", pg.url, make_lost_postgres)
    elif request.param == "etcd":
        etcd: EtcdCluster = request.getfixturevalue("etcd_cluster")

        def make_lost_etcd(name: str) -> None:
            # The key only: its etcd lease stays, as after an operator's `etcdctl del`.
            deleted = etcd.etcdctl("del", f"lease:{name}")
            assert deleted == "1", f"no key for lease {name!r}"

        yield StoreUnderTest("etcd", etcd.url, make_lost_etcd)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")

        def make_lost_cluster(name: str) -> None:
            node = cluster.nodes[0]
            out = subprocess.run(
                [*node.cli_args(), "-c", "DEL", f"lease:{{{name}}}"],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
            assert out.stdout.strip() == "1", out

        yield StoreUnderTest("redis-cluster", cluster.url, make_lost_cluster)
