"""TLS and ACL authentication against real servers: certificates and host names are verified by
default, a private CA is trusted through ``ca_file=`` / ``CaFile`` (or ``SSL_CERT_FILE`` in a
process of its own), and a wrong password is a ``BackendError`` that says so without the secret."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import distributed_leasing as dl
import pytest
import redis_servers
from redis_servers import RedisServer

SECRET = "s3cr3t-Pa55word-7e21"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RedisLeasing__* variable of the machine may change what from_config reads."""
    for name in list(os.environ):
        if name.lower().startswith("redisleasing"):
            monkeypatch.delenv(name)


def write_local(d: Path, **section: object) -> None:
    (d / "appsettings.Local.json").write_text(json.dumps({"RedisLeasing": section}))


# -- TLS -------------------------------------------------------------------------------------


def test_tls_with_the_ca_file_connects_and_leases(
    tls_redis_server: RedisServer, unique_name: str
) -> None:
    srv = tls_redis_server
    assert srv.url.startswith("rediss://")
    client = dl.LeaseClient.connect_sync(srv.url, ca_file=srv.ca_file)
    with client, client.lease(unique_name) as lease:
        info = client.inspect_sync(unique_name)
        assert info is not None and info.lease_id == lease.lease_id
    # The same server by the name in its certificate (DNS:localhost) works too.
    localhost = f"rediss://localhost:{srv.port}"
    with dl.LeaseClient.connect_sync(localhost, ca_file=srv.ca_file) as client:
        assert client.inspect_sync(unique_name) is None


def test_tls_without_the_ca_is_refused_clearly(tls_redis_server: RedisServer) -> None:
    # The machine's SSL_CERT_FILE (system roots) does not contain the throwaway test CA.
    assert os.environ.get("SSL_CERT_FILE") != str(tls_redis_server.ca_file)
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.connect_sync(tls_redis_server.url, connect_timeout=5.0)
    message = str(info.value)
    assert "certificate" in message and "CaFile" in message, message
    assert f"127.0.0.1:{tls_redis_server.port}" in message


def test_tls_trusts_ssl_cert_file_of_its_own_process(
    tls_redis_server: RedisServer, unique_name: str
) -> None:
    """Without ca_file, the system roots are used: SSL_CERT_FILE, set for this process only."""
    code = textwrap.dedent(
        f"""
        import distributed_leasing as dl
        with dl.LeaseClient.connect_sync({tls_redis_server.url!r}) as c:
            with c.lease({unique_name!r}) as lease:
                print("HELD", lease.fencing_token)
        """
    )
    ok = subprocess.run(
        [sys.executable, "-c", code],
        env=tls_redis_server.env_with_ca(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("HELD ")
    # The same program with the system roots only is refused.
    env = dict(os.environ)
    env.pop("SSL_CERT_FILE", None)
    refused = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "BackendError" in refused.stderr and "certificate" in refused.stderr


def _material_for_another_name(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate valid only for DNS:redis.other-name.test (not 127.0.0.1)."""
    openssl = redis_servers.OPENSSL_BIN
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:redis.other-name.test\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "2",
         "-subj", "/CN=other-name test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec, "-keyout", key, "-out", csr,
         "-subj", "/CN=redis.other-name.test"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "2", "-sha256", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return ca_crt, crt, key


class OtherNameTlsServer(RedisServer):
    """A TLS server whose certificate names another host: its own health check skips the host
    name (it checks the chain only)."""

    def ping(self, timeout: float = 1.0) -> bool:
        assert self.ca_file is not None
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = False
        with (
            socket.create_connection((self.host, self.port), timeout=timeout) as raw,
            ctx.wrap_socket(raw) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


@pytest.fixture
def other_name_tls_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    monkeypatch.setattr(redis_servers, "_make_tls_material", _material_for_another_name)
    with OtherNameTlsServer(tls=True) as srv:
        yield srv


def test_tls_wrong_host_name_is_refused(other_name_tls_server: RedisServer) -> None:
    srv = other_name_tls_server
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.connect_sync(srv.url, ca_file=srv.ca_file, connect_timeout=5.0)
    message = str(info.value)
    assert "certificate" in message and "host name" in message, message
    assert "127.0.0.1" in message


def test_ca_file_key_with_stackexchange_tls_and_acl_user(
    redis_server_factory: Callable[..., RedisServer],
    tmp_path: Path,
    clean_env: None,
    unique_name: str,
) -> None:
    srv = redis_server_factory(tls=True, acl_users={"alice": SECRET})
    assert srv.ca_file is not None
    ca = tmp_path / "certs" / "redis-ca.pem"
    ca.parent.mkdir()
    ca.write_bytes(srv.ca_file.read_bytes())
    write_local(
        tmp_path,
        ConnectionString=f"127.0.0.1:{srv.port},ssl=True,user=alice,password={SECRET}",
        CaFile="certs/redis-ca.pem",
    )
    with dl.LeaseClient.from_config(tmp_path) as client, client.lease(unique_name) as lease:
        assert SECRET not in repr(lease)
        assert srv.cli("HGET", f"lease:{unique_name}", "leaseId").strip() == lease.lease_id
    # Without CaFile the same configuration is refused (certificate), not silently insecure.
    write_local(
        tmp_path,
        ConnectionString=f"127.0.0.1:{srv.port},ssl=True,user=alice,password={SECRET}",
    )
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.from_config(tmp_path)
    assert "certificate" in str(info.value)
    assert SECRET not in str(info.value)


# -- ACL users and passwords ---------------------------------------------------------------------


def test_wrong_password_in_stackexchange_connection_string_says_authentication_failed(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path, clean_env: None
) -> None:
    srv = redis_server_factory(acl_users={"alice": SECRET})
    wrong = "wrong-" + SECRET
    write_local(tmp_path, ConnectionString=f"127.0.0.1:{srv.port},user=alice,password={wrong}")
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.from_config(tmp_path)
    e = info.value
    assert e.kind == "auth"
    assert "authentication" in str(e) and "failed" in str(e)
    for text in (str(e), repr(e), repr(e.args)):
        assert SECRET not in text and wrong not in text
    # The right password works, and the user really is alice.
    write_local(tmp_path, ConnectionString=f"127.0.0.1:{srv.port},user=alice,password={SECRET}")
    with dl.LeaseClient.from_config(tmp_path) as client:
        assert SECRET not in repr(client)
        with client.lease("acl-lease-se"):
            clients = srv.cli("CLIENT", "LIST")
            assert " user=alice " in clients


def test_wrong_user_is_refused_like_a_wrong_password(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path, clean_env: None
) -> None:
    srv = redis_server_factory(acl_users={"alice": SECRET})
    write_local(tmp_path, ConnectionString=f"127.0.0.1:{srv.port},user=bob,password={SECRET}")
    with pytest.raises(dl.BackendError) as info:
        dl.LeaseClient.from_config(tmp_path)
    assert info.value.kind == "auth"
    assert SECRET not in str(info.value)


def test_a_user_without_dangerous_commands_can_lease(
    redis_server_factory: Callable[..., RedisServer], unique_name: str
) -> None:
    """Azure's "Data Contributor" access policy denies @dangerous commands (INFO among them) but
    allows CLUSTER INFO: connecting must not need INFO."""
    rules = ["on", f">{SECRET}", "~*", "&*", "+@all", "-@dangerous", "+cluster|info"]
    srv = redis_server_factory(acl_users={"contributor": rules})
    denied = srv.cli("INFO", user="contributor", password=SECRET)
    assert "NOPERM" in denied, denied
    with dl.LeaseClient.connect_sync(srv.url_for("contributor", SECRET)) as client:
        assert client.kind == "redis"
        with client.lease(unique_name) as lease:
            info = client.inspect_sync(unique_name)
            assert info is not None and info.lease_id == lease.lease_id


# -- The documented ACL rule (issue 12, defect 9) ------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
# What the library tries and does without (README, "ACL users and passwords").
TOLERATED_REFUSALS = {"info", "cluster|info", "client|setinfo"}


def readme_acl_rule(marker: str) -> list[str]:
    """The rules of the ``ACL SETUSER <user> ...`` line in the README's text block after
    ``<!-- marker``, without the user name."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(f"<!-- {marker}") :]
    block = after.split("```text\n", 1)[1].split("```", 1)[0]
    words = block.replace("\\\n", " ").split()
    assert words[:2] == ["ACL", "SETUSER"], block
    return words[3:]


def base_rule(password: str) -> list[str]:
    rules = readme_acl_rule("acl-rule:")
    assert ">PASSWORD" in rules
    return [f">{password}" if r == ">PASSWORD" else r for r in rules]


def rule_commands() -> str:
    """The documented rule after `reset on >PASSWORD`: what error messages quote."""
    rules = readme_acl_rule("acl-rule:")
    return " ".join(rules[rules.index(">PASSWORD") + 1 :])


def acl_log(srv: RedisServer, user: str) -> set[str]:
    """The objects (commands, keys, channels) the server refused to ``user``, per its ACL LOG."""
    entries = srv.command("ACL", "LOG", "128")
    assert isinstance(entries, list)
    refused = set()
    for entry in entries:
        fields = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else v
            )
            for k, v in zip(entry[::2], entry[1::2], strict=True)
        }
        if fields["username"] == user:
            refused.add(str(fields["object"]))
    return refused


async def every_operation(url: str, name: str, *, flush: Callable[[], object]) -> None:
    """Acquire (each path), renew, release, a notified wait, inspect, list and force_release,
    before and after the server forgets the scripts (``flush``: SCRIPT LOAD again)."""
    holder = await dl.LeaseClient.connect(url, operation_timeout=5.0)
    waiter = await dl.LeaseClient.connect(url, operation_timeout=5.0)
    for round in range(2):
        n = f"{name}-{round}"
        lease = await holder.acquire(n, duration=10, renew_interval=0.2, metadata={"r": "1"})
        await lease.renew()
        await asyncio.sleep(0.5)  # background renewals (renew_many)
        assert lease.renewals >= 2 and not lease.is_lost, lease.lost_reason
        assert await waiter.try_acquire(n) is None
        info = await waiter.inspect(n)
        assert info is not None and info.lease_id == lease.lease_id
        assert [i.name for i in await waiter.list(name)] == [n]
        notices = dl.metrics()["leasing.wait.notifications.total"]
        waiting = asyncio.ensure_future(waiter.acquire(n, wait=20.0))
        await asyncio.sleep(0.5)
        await lease.release()
        second = await waiting
        assert dl.metrics()["leasing.wait.notifications.total"] > notices  # woken, not polled
        assert await holder.force_release(n)
        assert await holder.inspect(n) is None
        assert second.lease_id != lease.lease_id
        # The synchronous paths (their own connection per thread).
        sync = holder.acquire_sync(n + "-sync", wait=1.0)
        sync.renew_sync()
        assert holder.inspect_sync(n + "-sync") is not None
        assert [i.name for i in holder.list_sync(n + "-sync")] == [n + "-sync"]
        sync.release_sync()
        other = holder.try_acquire_sync(n + "-sync")
        assert other is not None
        assert holder.force_release_sync(n + "-sync")
        flush()


def test_a_user_with_exactly_the_readmes_acl_rule_runs_every_operation(
    redis_server_factory: Callable[..., RedisServer], unique_name: str
) -> None:
    srv = redis_server_factory(acl_users={"leasing": base_rule(SECRET)})
    # The rule really is narrow: no other command, no other key.
    assert "NOPERM" in srv.cli("SET", "lease:x", "1", user="leasing", password=SECRET)
    assert "NOPERM" in srv.cli("EVAL", "return 1", "0", user="leasing", password=SECRET)
    assert "NOPERM" in srv.cli("EVALSHA", "0" * 40, "1", "other:x", user="leasing", password=SECRET)
    srv.command("ACL", "LOG", "RESET")
    asyncio.run(
        every_operation(
            srv.url_for("leasing", SECRET), unique_name, flush=lambda: srv.cli("SCRIPT", "FLUSH")
        )
    )
    # Nothing was refused on the way (a refused PUBLISH inside a script would be silent).
    assert acl_log(srv, "leasing") <= TOLERATED_REFUSALS


def test_the_readmes_acl_rule_covers_a_long_wait(
    redis_server_factory: Callable[..., RedisServer], unique_name: str
) -> None:
    """A wait longer than the subscription's health check (PING every 10 s), then the
    unsubscribe 2 s after the last waiter left."""
    srv = redis_server_factory(acl_users={"leasing": base_rule(SECRET)})
    url = srv.url_for("leasing", SECRET)

    async def main() -> None:
        holder = await dl.LeaseClient.connect(url)
        waiter = await dl.LeaseClient.connect(url)
        lease = await holder.acquire(unique_name, duration=30)
        notices = dl.metrics()["leasing.wait.notifications.total"]
        waiting = asyncio.ensure_future(waiter.acquire(unique_name, wait=30.0))
        await asyncio.sleep(11.0)
        await lease.release()
        await (await waiting).release()
        assert dl.metrics()["leasing.wait.notifications.total"] > notices
        await asyncio.sleep(3.0)

    srv.command("ACL", "LOG", "RESET")
    asyncio.run(main())
    assert srv.cli("PUBSUB", "CHANNELS").strip() == ""  # unsubscribed
    assert acl_log(srv, "leasing") <= TOLERATED_REFUSALS


def test_the_readmes_acl_rule_on_a_cluster(
    redis_cluster: redis_servers.RedisCluster, unique_name: str
) -> None:
    user = f"leasing-{unique_name[-12:]}"
    rules = base_rule(SECRET) + readme_acl_rule("acl-rule-cluster")
    for node in redis_cluster.nodes:
        assert node.cli("ACL", "SETUSER", user, *rules).strip() == "OK"
    try:
        url = redis_cluster.nodes[0].url_for(user, SECRET)

        def flush() -> None:
            for node in redis_cluster.nodes:
                node.cli("SCRIPT", "FLUSH")

        asyncio.run(every_operation(url, unique_name, flush=flush))
        for node in redis_cluster.nodes:
            assert acl_log(node, user) <= TOLERATED_REFUSALS
    finally:
        for node in redis_cluster.nodes:
            node.cli("ACL", "DELUSER", user)


def without(rules: list[str], rule: str) -> list[str]:
    assert rule in rules, rule
    return [r for r in rules if r != rule]


def server_version(srv: RedisServer) -> tuple[int, ...]:
    return tuple(int(p) for p in srv.info("server")["redis_version"].split(".")[:2])


@pytest.mark.parametrize(
    ("missing", "operation"),
    [
        ("+scan", "list"),
        ("+evalsha", "acquire"),
        ("+script|load", "acquire"),  # the server has not loaded the scripts yet
        ("+hset", "acquire"),  # inside the acquire script
        ("+del", "release"),  # inside the release script
        ("+incr", "acquire"),  # inside the acquire script, under pcall (not a fencing problem)
        ("+hexists", "force_release"),  # inside the force_release script
        ("~lease:*", "acquire"),  # the key pattern
    ],
)
def test_a_user_missing_part_of_the_rule_is_told_what_is_missing(
    redis_server_factory: Callable[..., RedisServer],
    unique_name: str,
    missing: str,
    operation: str,
) -> None:
    srv = redis_server_factory(acl_users={"leasing": without(base_rule(SECRET), missing)})
    client = dl.LeaseClient.connect_sync(srv.url_for("leasing", SECRET))
    lease = client.acquire_sync(unique_name) if operation.endswith("release") else None
    with pytest.raises(dl.BackendError) as info:
        if operation == "list":
            client.list_sync()
        elif operation == "acquire":
            client.acquire_sync(unique_name)
        elif operation == "force_release":
            client.force_release_sync(unique_name)
        else:
            assert lease is not None
            lease.release_sync()
    e = info.value
    message = str(e)
    assert e.kind == "permission", message
    assert "authentication" not in message and "password)" not in message, message
    assert rule_commands() in message, message  # quotes the README's rule
    assert SECRET not in message and SECRET not in repr(e)
    thing = missing[1:]
    if missing == "~lease:*":
        assert f"lease:{unique_name}" in message and "~lease:*" in message, message
    elif missing in ("+hset", "+del", "+incr", "+hexists") and server_version(srv) < (7, 2):
        # Redis 6.2 and 7.0 do not name a command refused inside a script.
        assert "did not say which" in message and "ACL LOG" in message, message
    else:
        assert f"'{thing}'" in message and f"+{thing}" in message, message
    refused = acl_log(srv, "leasing")
    assert (f"lease:{unique_name}" if missing == "~lease:*" else thing) in refused, refused
