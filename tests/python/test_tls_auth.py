"""TLS and ACL authentication against real servers: certificates and host names are verified by
default, a private CA is trusted through ``ca_file=`` / ``CaFile`` (or ``SSL_CERT_FILE`` in a
process of its own), and a wrong password is a ``BackendError`` that says so without the secret."""

from __future__ import annotations

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
