"""Tests of the test harness itself (redis_servers.py, tcp_proxy.py), against real servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis_servers import (
    RedisCluster,
    RedisServer,
    RedisServerError,
    RespError,
    free_port,
    free_port_with_bus,
    resp_command,
)
from tcp_proxy import TcpProxy

HERE = Path(__file__).resolve().parent


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _raw_connect(port: int, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _ping_on(sock: socket.socket) -> bytes:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    return sock.recv(64)


# ------------------------------------------------------------------------------------------
# ports
# ------------------------------------------------------------------------------------------


def test_free_ports_are_free_distinct_and_below_ephemeral_range() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for p in ports:
        assert p < lo
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_free_port_with_bus_leaves_bus_port_free() -> None:
    p = free_port_with_bus()
    assert p + 10000 < 65536
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", p))
        b.bind(("127.0.0.1", p + 10000))


# ------------------------------------------------------------------------------------------
# single server
# ------------------------------------------------------------------------------------------


def test_single_server_answers_raw_and_cli(redis_server: RedisServer, unique_name: str) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    assert resp_command("127.0.0.1", redis_server.port, "PING") == "PONG"
    with _raw_connect(redis_server.port) as s:
        assert _ping_on(s) == b"+PONG\r\n"
    assert redis_server.cli("PING").strip() == "PONG"
    assert redis_server.cli("SET", unique_name, "v1").strip() == "OK"
    assert resp_command("127.0.0.1", redis_server.port, "GET", unique_name) == b"v1"
    # private, volatile configuration
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis_server.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
    assert redis_server.command("CONFIG", "GET", "bind")[1] == b"127.0.0.1"  # type: ignore[index]
    assert redis_server.info()["tcp_port"] == str(redis_server.port)


def test_password_server(redis_server_factory: Callable[..., RedisServer]) -> None:
    srv = redis_server_factory(password="p@ss/word")
    with pytest.raises(RespError, match="NOAUTH"):
        resp_command("127.0.0.1", srv.port, "PING")
    with pytest.raises(RespError, match="WRONGPASS"):
        resp_command("127.0.0.1", srv.port, "PING", password="nope")
    assert resp_command("127.0.0.1", srv.port, "PING", password="p@ss/word") == "PONG"
    assert srv.url == f"redis://:p%40ss%2Fword@127.0.0.1:{srv.port}"
    assert srv.bare_url == f"redis://127.0.0.1:{srv.port}"
    assert srv.cli("PING").strip() == "PONG"


def test_acl_users(redis_server_factory: Callable[..., RedisServer]) -> None:
    srv = redis_server_factory(
        acl_users={"alice": "s3cret", "bob": ["on", ">pw", "~allowed:*", "+@all"]}
    )
    assert srv.command("ACL", "WHOAMI", username="alice", password="s3cret") == b"alice"
    with pytest.raises(RespError, match="WRONGPASS"):
        srv.command("PING", username="alice", password="wrong")
    assert srv.cli("ACL", "WHOAMI", user="alice", password="s3cret").strip() == "alice"
    with pytest.raises(RedisServerError, match="AUTH failed"):
        srv.cli("PING", user="alice", password="wrong")
    # rules given as a list are applied verbatim
    assert srv.command("SET", "allowed:1", "x", username="bob", password="pw") == "OK"
    with pytest.raises(RespError, match="NOPERM"):
        srv.command("SET", "other", "x", username="bob", password="pw")
    assert srv.url_for("alice", "s3cret") == f"redis://alice:s3cret@127.0.0.1:{srv.port}"


def test_tls_server(tls_redis_server: RedisServer) -> None:
    srv = tls_redis_server
    assert srv.url == f"rediss://127.0.0.1:{srv.port}"
    assert srv.ca_file is not None and srv.ca_file.exists()
    # redis-cli --tls --cacert
    out = subprocess.run(
        ["redis-cli", "--tls", "--cacert", str(srv.ca_file), "-h", "127.0.0.1",
         "-p", str(srv.port), "PING"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.stdout.strip() == "PONG", out.stderr
    assert srv.cli("PING").strip() == "PONG"
    # verified TLS from Python against our CA, by IP and by name
    assert resp_command("127.0.0.1", srv.port, "PING", ca_file=srv.ca_file) == "PONG"
    assert resp_command("localhost", srv.port, "PING", ca_file=srv.ca_file) == "PONG"
    # the system trust store does not know our CA
    ctx = ssl.create_default_context()
    with _raw_connect(srv.port) as raw, pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    # plaintext on the TLS port gets no PONG
    with _raw_connect(srv.port) as raw:
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        try:
            reply = raw.recv(64)
        except OSError:
            reply = b""
        assert b"PONG" not in reply
    env = srv.env_with_ca({"PATH": "/usr/bin"})
    assert env["SSL_CERT_FILE"] == str(srv.ca_file)
    assert os.environ.get("SSL_CERT_FILE") != str(srv.ca_file)


def test_kill_and_restart_same_port_empty_data(fresh_redis_server: RedisServer) -> None:
    srv = fresh_redis_server
    port, pid = srv.port, srv.pid
    assert pid is not None
    srv.cli("SET", "k", "v")
    srv.kill()
    assert not _pid_alive(pid)
    with pytest.raises(ConnectionRefusedError):
        _raw_connect(port).close()
    srv.restart()
    assert srv.port == port and srv.pid != pid
    assert srv.ping()
    assert srv.command("GET", "k") is None
    assert srv.command("DBSIZE") == 0


def test_pause_and_resume(fresh_redis_server: RedisServer) -> None:
    srv = fresh_redis_server
    srv.pause()
    assert srv.paused
    with _raw_connect(srv.port) as s:  # the kernel still completes the handshake
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            _ping_on(s)
        srv.resume()
        s.settimeout(5)
        assert s.recv(64) == b"+PONG\r\n"  # the PING sent while paused is answered
    assert srv.ping()


def test_stop_ends_process_and_removes_dir() -> None:
    srv = RedisServer(password="x").start()
    pid, d = srv.pid, srv.dir
    assert pid is not None and d is not None and d.is_dir()
    srv.pause()  # stop() must cope with a stopped process
    srv.stop()
    assert not _pid_alive(pid)
    assert not d.exists()
    assert not srv.is_running()
    srv.stop()  # idempotent


def test_context_manager_and_fixed_port() -> None:
    port = free_port()
    with RedisServer(port) as srv:
        assert srv.port == port and srv.ping()
        pid = srv.pid
    assert pid is not None and not _pid_alive(pid)
    # a fixed port that is taken is an error, not a silent move
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        taken = RedisServer(port)
        with pytest.raises(RedisServerError, match="Address already in use"):
            taken.start()
        assert taken.dir is None and not taken.is_running()  # temp dir removed


def _run_child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=HERE, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_atexit_hook_kills_forgotten_servers() -> None:
    child = _run_child(
        """
        from redis_servers import RedisServer
        s = RedisServer().start()
        print(s.pid, s.dir, flush=True)
        """
    )
    out, _ = child.communicate(timeout=60)
    pid_s, d = out.split()
    assert child.returncode == 0
    _wait_until(lambda: not _pid_alive(int(pid_s)), 10, "forgotten server to die")
    assert not Path(d).exists()


def test_server_dies_with_sigkilled_parent() -> None:
    child = _run_child(
        """
        import time
        from redis_servers import RedisServer
        s = RedisServer().start()
        print(s.pid, s.dir, flush=True)
        time.sleep(60)
        """
    )
    assert child.stdout is not None
    pid_s, d = child.stdout.readline().split()
    pid = int(pid_s)
    assert _pid_alive(pid)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    _wait_until(lambda: not _pid_alive(pid), 10, "orphaned server to die (PDEATHSIG)")
    shutil.rmtree(d)  # nobody else can: its owner was SIGKILLed


# ------------------------------------------------------------------------------------------
# cluster
# ------------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_cluster_three_masters_all_slots(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.nodes) == 3
    assert all(u.startswith("redis://127.0.0.1:") for u in redis_cluster.urls)
    for i in range(3):
        info = redis_cluster.cluster_info(i)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == "16384"
        assert info["cluster_known_nodes"] == "3"
    nodes = redis_cluster.nodes[0].cli("CLUSTER", "NODES").splitlines()
    assert sum("master" in line for line in nodes) == 3
    ranges = redis_cluster.slot_map(0)
    covered = sorted(s for first, last, _ in ranges for s in range(first, last + 1))
    assert covered == list(range(16384))
    assert {port for _, _, port in ranges} == {n.port for n in redis_cluster.nodes}
    # bus ports are port + 10000
    for n in redis_cluster.nodes:
        with pytest.raises(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", n.port + 10000))
    # keys land on different nodes; redis-cli -c follows MOVED
    for k in ("a", "b", "c", "{tag}x", "{tag}y"):
        out = subprocess.run(
            ["redis-cli", "-c", "-p", str(redis_cluster.nodes[0].port), "SET", f"h:{k}", k],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert out.stdout.strip() == "OK", out
    # a node that does not own the slot answers MOVED (two of the three, for any key)
    moved = 0
    for n in redis_cluster.nodes:
        try:
            assert n.command("GET", "h:a") == b"a"
        except RespError as e:
            assert str(e).startswith("MOVED ")
            moved += 1
    assert moved == 2


@pytest.mark.cluster
def test_cluster_kill_node_then_restart() -> None:
    with RedisCluster(masters=3, node_timeout_ms=1000) as cluster:
        cluster.kill_node(2)
        assert not cluster.nodes[2].is_running()

        def others_see_fail() -> bool:
            return all(cluster.cluster_info(i)["cluster_state"] == "fail" for i in (0, 1))

        _wait_until(others_see_fail, 30, "cluster_state:fail after kill_node")
        cluster.nodes[2].restart()  # keeps nodes.conf: rejoins with its slots, no data
        cluster.wait_ok(timeout=60)
        assert cluster.nodes[2].command("DBSIZE") == 0
    assert all(not n.is_running() for n in cluster.nodes) and cluster.nodes == []


# ------------------------------------------------------------------------------------------
# TCP proxy
# ------------------------------------------------------------------------------------------


def test_proxy_forwards_blackholes_heals_cuts(
    fresh_redis_server: RedisServer, tcp_proxy_factory: Callable[..., TcpProxy]
) -> None:
    proxy = tcp_proxy_factory(fresh_redis_server.port)
    assert resp_command("127.0.0.1", proxy.port, "PING") == "PONG"

    held = _raw_connect(proxy.port)
    assert _ping_on(held) == b"+PONG\r\n"

    proxy.blackhole()
    assert proxy.blackholed
    held.settimeout(0.5)
    with pytest.raises(TimeoutError):
        _ping_on(held)
    with _raw_connect(proxy.port) as newcomer:  # new connections are still accepted...
        newcomer.settimeout(0.5)
        with pytest.raises(TimeoutError):  # ...but get nothing
            _ping_on(newcomer)
        proxy.heal()
        newcomer.settimeout(5)
        assert newcomer.recv(64) == b"+PONG\r\n"  # held-back request delivered on heal
    held.settimeout(5)
    assert held.recv(64) == b"+PONG\r\n"
    assert resp_command("127.0.0.1", proxy.port, "PING") == "PONG"

    _wait_until(lambda: proxy.active_connections == 1, 5, "only `held` to remain")
    assert proxy.cut() == 1
    held.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert held.recv(64) == b""  # closed by the proxy
    held.close()
    assert resp_command("127.0.0.1", proxy.port, "PING") == "PONG"  # still accepting

    with _raw_connect(proxy.port) as s:
        assert _ping_on(s) == b"+PONG\r\n"
        assert proxy.cut(rst=True) == 1
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            s.recv(64)

    port = proxy.port
    proxy.close()
    with pytest.raises(ConnectionRefusedError):
        _raw_connect(port).close()


def test_proxy_retarget_and_upstream_down(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    a = redis_server_factory()
    b = redis_server_factory(password="pb")
    with TcpProxy(a.port) as proxy:
        assert resp_command("127.0.0.1", proxy.port, "PING") == "PONG"
        proxy.set_target(b.port)
        with pytest.raises(RespError, match="NOAUTH"):
            resp_command("127.0.0.1", proxy.port, "PING")
        b.kill()
        # upstream refused: the proxy closes the client side
        with pytest.raises((ConnectionError, OSError)):
            resp_command("127.0.0.1", proxy.port, "PING")
        assert proxy.total_connections == 3
