"""Microsoft Entra ID mode (``Endpoint`` without a password), for real: child processes whose
only credentials are fakes on loopback (a fake ``az`` first on PATH, or a loopback HTTPS token
endpoint for the service principal), against a real Redis whose ACL user, named after the
token's ``oid``, accepts only the newest token.

Each scenario runs in a process of its own, with every ``AZURE_*``, ``IDENTITY_*``, ``MSI_*`` and
``IMDS_*`` variable removed, so that no credential of the chain can reach anything else (the
instance metadata service in particular)."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis_servers
from fake_azure import SCOPE, FakeAz, azure_free_env
from redis_servers import RedisServer

pytestmark = pytest.mark.slow


def run_child(
    code: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write_endpoint_config(d: Path, port: int) -> None:
    (d / "appsettings.Local.json").write_text(
        json.dumps({"RedisLeasing": {"Endpoint": f"127.0.0.1:{port}", "UseSsl": False}})
    )


ROTATIONS = """
import json, subprocess, sys, time
import distributed_leasing as dl

port, state, cli = sys.argv[1], sys.argv[2], sys.argv[3]

def tokens():
    try:
        return open(state + "/tokens").read().split()
    except FileNotFoundError:
        return []

client = dl.LeaseClient.from_config(".")
lease = client.acquire_sync("entra-py", duration=3.0, renew_interval=1.0)
steps = []

def wait(what, pred, timeout):
    end = time.monotonic() + timeout
    while not pred():
        if lease.is_lost:
            sys.exit(f"lease lost while waiting for {what}: {lease.lost_reason}")
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)
    steps.append(what)

def renewed(what):
    r = lease.renewals
    wait(what, lambda: lease.renewals >= r + 2, 20)

wait("three rotations", lambda: len(tokens()) >= 4, 60)
renewed("renewals after the rotations")
killed = subprocess.run(
    [cli, "-p", port, "CLIENT", "KILL", "TYPE", "normal"], capture_output=True, text=True
).stdout.strip()
renewed("renewals after the kill")
n = len(tokens())
wait("a rotation after the kill", lambda: len(tokens()) > n, 30)
renewed("renewals after that rotation")
holder = client.inspect_sync("entra-py")
print(json.dumps({
    "steps": steps,
    "killed": killed,
    "lost": lease.is_lost,
    "holder_is_us": holder is not None and holder.lease_id == lease.lease_id,
    "released": lease.release_sync(),
    "repr": repr(lease) + repr(client),
}))
"""


def test_lease_is_held_across_token_rotations_and_a_killed_connection(
    fresh_redis_server: RedisServer, tmp_path: Path
) -> None:
    srv = fresh_redis_server
    az = FakeAz(tmp_path / "az", redis_port=srv.port, lifetime=6)
    work = tmp_path / "app"
    work.mkdir()
    write_endpoint_config(work, srv.port)
    cli = shutil.which("redis-cli")
    assert cli is not None
    r = subprocess.run(
        [sys.executable, "-c", ROTATIONS, str(srv.port), str(az.state), cli],
        env=azure_free_env(az.bin),
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"stdout: {r.stdout}\nstderr: {r.stderr}"
    out = json.loads(r.stdout)
    assert out["lost"] is False and out["holder_is_us"] is True and out["released"] is True
    assert out["killed"] not in ("", "0"), out
    tokens = az.tokens()
    assert len(tokens) >= 5, tokens
    assert set(az.calls()) == {f"account get-access-token -o json --scope {SCOPE}"}
    # The live connection re-authenticated with every new token (not only at reconnection).
    stats = srv.cli("INFO", "commandstats")
    auths = int(stats.split("cmdstat_auth:calls=", 1)[1].split(",", 1)[0])
    assert auths >= len(tokens), (auths, len(tokens))
    # The first token is dead: only the newest one opens the ACL user.
    reply = srv.cli("AUTH", az.oid, tokens[0])
    assert "WRONGPASS" in reply, reply
    # No token anywhere in what the child printed (repr of the lease and the client included).
    for t in tokens:
        assert t not in r.stdout and t not in r.stderr
        assert t.rsplit(".", 1)[1] not in r.stdout + r.stderr


def test_no_credential_at_all_says_what_to_do_and_never_probes_imds(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"  # no az here, and PATH has nothing else
    empty_bin.mkdir()
    env = azure_free_env()
    env["PATH"] = str(empty_bin)
    write_endpoint_config(tmp_path, 6379)
    started = time.monotonic()
    r = run_child(
        """
        import distributed_leasing as dl
        try:
            dl.LeaseClient.from_config(".")
        except dl.BackendError as e:
            print(type(e).__name__, e.kind, "|", e)
        """,
        env,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("BackendError auth | Microsoft Entra ID"), r.stdout
    for expected in (
        "EnvironmentCredential",
        "WorkloadIdentityCredential",
        "ManagedIdentityCredential",
        "instance metadata service is never probed",
        "AzureCliCredential",
        "az not found",
        "az login",
        "password=KEY",
    ):
        assert expected in r.stdout, (expected, r.stdout)
    # No 169.254.169.254 probe, no multi-second timeout: the chain gave up at once.
    assert time.monotonic() - started < 60


def test_identity_without_access_to_the_cache_names_its_object_id(
    fresh_redis_server: RedisServer, tmp_path: Path
) -> None:
    srv = fresh_redis_server
    az = FakeAz(tmp_path / "az", redis_port=None)  # tokens, but no ACL user for them
    write_endpoint_config(tmp_path, srv.port)
    r = run_child(
        """
        import distributed_leasing as dl
        try:
            dl.LeaseClient.from_config(".")
        except dl.BackendError as e:
            print(e.kind, "|", e)
        """,
        azure_free_env(az.bin),
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("auth | authentication to Redis"), r.stdout
    assert az.oid in r.stdout and "access-policy-assignment" in r.stdout, r.stdout
    assert "AzureCliCredential" in r.stdout
    for t in az.tokens():
        assert t not in r.stdout + r.stderr


# -- the environment service principal, against a loopback HTTPS token endpoint -----------------


class TokenEndpoint:
    """``POST /<tenant>/oauth2/v2.0/token`` over HTTPS on 127.0.0.1, as Entra ID answers it.

    ``mint(form)`` returns ``(status, json_body)``."""

    def __init__(self, directory: Path, mint: Callable[[dict[str, str]], tuple[int, Any]]):
        self.ca_file, cert, key = redis_servers._make_tls_material(directory)
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                outer.requests.append((self.path, form))
                status, body = mint(form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def jwt(claims: dict[str, Any]) -> str:
    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    header = b64(b'{"alg":"none"}')
    return f"{header}.{b64(json.dumps(claims).encode())}.c2ln{time.time_ns()}"


@pytest.fixture
def token_endpoint_factory(tmp_path: Path) -> Iterator[Callable[..., TokenEndpoint]]:
    made: list[TokenEndpoint] = []

    def make(mint: Callable[[dict[str, str]], tuple[int, Any]]) -> TokenEndpoint:
        d = tmp_path / f"sts{len(made)}"
        d.mkdir()
        made.append(TokenEndpoint(d, mint))
        return made[-1]

    yield make
    for e in made:
        e.close()


SP_SECRET = "sp-Secret~value-1234567890"
SP_OID = "7c1e5a3b-2d4f-4e6a-8b9c-0a1b2c3d4e5f"


def sp_env(endpoint: TokenEndpoint, poison_az: Path) -> dict[str, str]:
    env = azure_free_env(poison_az)
    env.update(
        AZURE_TENANT_ID="11111111-2222-3333-4444-555555555555",
        AZURE_CLIENT_ID="app-client-id",
        AZURE_CLIENT_SECRET=SP_SECRET,
        AZURE_AUTHORITY_HOST=f"https://127.0.0.1:{endpoint.port}",
        SSL_CERT_FILE=str(endpoint.ca_file),
    )
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        env.pop(proxy, None)
    return env


def test_service_principal_from_the_environment_comes_first(
    fresh_redis_server: RedisServer,
    tmp_path: Path,
    token_endpoint_factory: Callable[..., TokenEndpoint],
    unique_name: str,
) -> None:
    srv = fresh_redis_server
    issued: list[str] = []

    def mint(form: dict[str, str]) -> tuple[int, Any]:
        token = jwt({"aud": "https://redis.azure.com", "oid": SP_OID})
        srv.cli("ACL", "SETUSER", SP_OID, "on", "resetpass", f">{token}", "~*", "&*", "+@all")
        issued.append(token)
        return 200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token}

    endpoint = token_endpoint_factory(mint)
    # An az that would also work: the chain must not get that far.
    az = FakeAz(tmp_path / "az", redis_port=srv.port)
    write_endpoint_config(tmp_path, srv.port)
    r = run_child(
        f"""
        import distributed_leasing as dl
        with dl.LeaseClient.from_config(".") as c:
            with c.lease({unique_name!r}) as lease:
                print("HELD", lease.fencing_token)
        """,
        sp_env(endpoint, az.bin),
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HELD"), r.stdout
    assert az.calls() == [], "the Azure CLI was asked although a service principal is set"
    [(path, form)] = endpoint.requests
    assert path == "/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
    assert form["grant_type"] == "client_credentials" and form["scope"] == SCOPE
    assert form["client_id"] == "app-client-id" and form["client_secret"] == SP_SECRET
    for secret in (SP_SECRET, *issued):
        assert secret not in r.stdout + r.stderr


def test_a_failing_service_principal_is_reported_not_replaced_by_the_cli(
    fresh_redis_server: RedisServer,
    tmp_path: Path,
    token_endpoint_factory: Callable[..., TokenEndpoint],
) -> None:
    def refuse(form: dict[str, str]) -> tuple[int, Any]:
        return 401, {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
        }

    endpoint = token_endpoint_factory(refuse)
    az = FakeAz(tmp_path / "az", redis_port=fresh_redis_server.port)
    write_endpoint_config(tmp_path, fresh_redis_server.port)
    r = run_child(
        """
        import distributed_leasing as dl
        try:
            dl.LeaseClient.from_config(".")
        except dl.BackendError as e:
            print(e.kind, "|", e)
        """,
        sp_env(endpoint, az.bin),
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("auth | Microsoft Entra ID"), r.stdout
    assert "ClientSecretCredential" in r.stdout and "AADSTS7000215" in r.stdout, r.stdout
    assert az.calls() == []
    assert SP_SECRET not in r.stdout + r.stderr
