"""The ``leasing`` command against a real redis-server (and the embedded store, and PostgreSQL):
inspect, list, --json, release --force (with and without a terminal), keys of the .NET origin,
keys that are not leases, configure, and errors that are messages, not tracebacks."""

from __future__ import annotations

import json
import os
import pty
import re
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import distributed_leasing as dl
import pytest
from demo_helpers import LEASING, RedisServer, demo_redis, free_port, leasing
from distributed_leasing import _wizard, cli
from etcd_server import EtcdCluster
from postgres_server import POSTGRES_PASSWORD, PostgresServer

__all__ = ["demo_redis"]  # fixture

METADATA = {
    "instanceId": "us-east-1",
    "region": "us-east",
    "hostname": "MACHINE-NAME",
    "startTime": "2025-12-25T21:00:00Z",
}


def fields(output: str) -> dict[str, str]:
    """``Label:   value`` lines of ``leasing inspect`` as a dict."""
    out = {}
    for line in output.splitlines():
        m = re.match(r"^([A-Z][A-Za-z ]+):\s+(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def client(demo_redis: RedisServer) -> dl.LeaseClient:
    return dl.LeaseClient.connect_sync(demo_redis.url)


@pytest.fixture
def name() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def held(client: dl.LeaseClient, name: str) -> Iterator[dl.Lease]:
    lease = client.acquire_sync(name, duration=30, metadata=METADATA)
    yield lease
    lease.release_sync()


def test_console_script_is_installed(demo_redis: RedisServer) -> None:
    assert LEASING.exists(), "pip install should create the 'leasing' console script"
    result = leasing("--help")
    assert result.returncode == 0
    for command in ("inspect", "list", "release", "configure"):
        assert command in result.stdout


def test_inspect_shows_the_holder(demo_redis: RedisServer, held: dl.Lease, name: str) -> None:
    result = leasing("--url", demo_redis.url, "inspect", name)
    assert result.returncode == 0, result.stderr
    f = fields(result.stdout)
    assert f["Lease"] == name
    assert f["Holder"] == "us-east-1 (us-east)"
    assert f["Lease ID"] == held.lease_id
    assert f["Fencing token"] == str(held.fencing_token)
    assert f["Acquired at"] == held.acquired_at.strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{held.acquired_at.microsecond // 1000:03d}Z"
    )
    ttl = re.fullmatch(r"(\d+\.\d)s", f["TTL"])
    assert ttl is not None and 0 < float(ttl.group(1)) <= 30
    for key, value in METADATA.items():
        assert re.search(rf"^  {key}:\s+{re.escape(value)}$", result.stdout, re.M)


def test_inspect_json(demo_redis: RedisServer, held: dl.Lease, name: str) -> None:
    result = leasing("inspect", name, "--json", "--url", demo_redis.url)  # options after
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == name
    assert data["holder"] == "us-east-1 (us-east)"
    assert data["lease_id"] == held.lease_id
    assert data["fencing_token"] == held.fencing_token
    assert data["metadata"] == METADATA
    assert 0 < data["ttl"] <= 30
    acquired = datetime.strptime(data["acquired_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((acquired - held.acquired_at).total_seconds()) < 0.001


def test_inspect_a_lease_nobody_holds(demo_redis: RedisServer, name: str) -> None:
    result = leasing("--url", demo_redis.url, "inspect", name)
    assert result.returncode == 0
    assert result.stdout.strip() == f"Lease {name!r} is not held."
    result = leasing("--url", demo_redis.url, "inspect", name, "--json")
    assert json.loads(result.stdout) is None


def test_list_table_prefix_and_json(demo_redis: RedisServer, client: dl.LeaseClient) -> None:
    base = f"list-{uuid.uuid4().hex[:6]}"
    leases = [
        client.acquire_sync(f"{base}-a", metadata={"instanceId": "us-east-1", "region": "us-east"}),
        client.acquire_sync(f"{base}-b", metadata={"instanceId": "eu-west-1"}),
        client.acquire_sync(f"other-{base}"),
    ]
    try:
        result = leasing("--url", demo_redis.url, "list", f"{base}-")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == [
            "NAME",
            "HOLDER",
            "LEASE",
            "ID",
            "FENCING",
            "TTL",
            "ACQUIRED",
            "AT",
        ]
        assert len(lines) == 3
        assert lines[1].startswith(f"{base}-a ") and "us-east-1 (us-east)" in lines[1]
        assert lines[2].startswith(f"{base}-b ") and "eu-west-1" in lines[2]
        assert leases[0].lease_id[:8] in lines[1]
        everything = leasing("--url", demo_redis.url, "list")
        assert f"other-{base}" in everything.stdout
        data = json.loads(leasing("--url", demo_redis.url, "list", base, "--json").stdout)
        assert [d["name"] for d in data] == [f"{base}-a", f"{base}-b"]
        assert data[1]["holder"] == "eu-west-1"
    finally:
        for lease in leases:
            lease.release_sync()
    result = leasing("--url", demo_redis.url, "list", f"{base}-")
    assert result.stdout.strip() == f"No leases held whose name starts with '{base}-'."
    assert json.loads(leasing("--url", demo_redis.url, "list", base, "--json").stdout) == []


def test_key_written_by_the_dotnet_origin(demo_redis: RedisServer, name: str) -> None:
    key = f"lease:{name}"
    demo_redis.cli(
        "HSET",
        key,
        "leaseId",
        "abc123-def456-ghi789",
        "acquiredAt",
        "2025-12-25T21:00:00.000Z",
        "meta_instanceId",
        "us-east-1",
        "meta_region",
        "us-east",
        "meta_hostname",
        "MACHINE-NAME",
        "meta_startTime",
        "2025-12-25T21:00:00Z",
    )
    demo_redis.cli("EXPIRE", key, "30")
    try:
        result = leasing("--url", demo_redis.url, "inspect", name)
        assert result.returncode == 0, result.stderr
        f = fields(result.stdout)
        assert f["Holder"] == "us-east-1 (us-east)"
        assert f["Lease ID"] == "abc123-def456-ghi789"
        assert f["Acquired at"] == "2025-12-25T21:00:00.000Z"
        assert f["Fencing token"] == "none (written by the .NET origin)"
        data = json.loads(leasing("--url", demo_redis.url, "inspect", name, "--json").stdout)
        assert data["fencing_token"] is None
        assert data["metadata"] == METADATA
        table = leasing("--url", demo_redis.url, "list", name).stdout
        assert re.search(rf"^{name}\s+us-east-1 \(us-east\)\s+abc123-d\s+-\s", table, re.M)
        assert "none (written by the .NET origin)" in table
    finally:
        demo_redis.cli("DEL", key)


def test_an_orphan_of_the_dotnet_origin_is_shown_as_one_and_deleted_by_release_force(
    demo_redis: RedisServer, client: dl.LeaseClient, name: str
) -> None:
    # The .NET origin's meta_* fields, written after its key expired: no lease, no TTL.
    key = f"lease:{name}"
    demo_redis.cli("HSET", key, "meta_instanceId", "dotnet-1", "meta_region", "eu-west")
    try:
        result = leasing("--url", demo_redis.url, "inspect", name)
        assert result.returncode == 0, result.stderr  # before: "not a lease", exit 1
        f = fields(result.stdout)
        assert f["Holder"] == "nobody (an orphan left by dotnet-1 (eu-west))"
        assert (f["Lease ID"], f["TTL"]) == ("none", "no expiry")
        assert re.search(r"^  instanceId:\s+dotnet-1$", result.stdout, re.M)
        assert f"({cli.ORPHAN_NOTE})" in result.stdout
        data = json.loads(leasing("--url", demo_redis.url, "inspect", name, "--json").stdout)
        assert (data["orphan"], data["holder"], data["lease_id"]) == (True, None, "")
        assert data["metadata"] == {"instanceId": "dotnet-1", "region": "eu-west"}
        table = leasing("--url", demo_redis.url, "list", name).stdout
        assert re.search(rf"^{name}\s+orphan\s+-\s+-\s+no expiry\s+unknown$", table, re.M)
        assert f"(HOLDER 'orphan': {cli.ORPHAN_NOTE})" in table
        listed = json.loads(leasing("--url", demo_redis.url, "list", name, "--json").stdout)
        assert [(d["name"], d["orphan"]) for d in listed] == [(name, True)]
        result = leasing("--url", demo_redis.url, "release", name, "--force", "--yes")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"Deleted the orphan of lease {name!r} (left by dotnet-1 (eu-west))."
        )
        assert demo_redis.cli("EXISTS", key).strip() == "0"
        # A lease is never shown as an orphan.
        lease = client.acquire_sync(name, duration=30, metadata=METADATA)
        data = json.loads(leasing("--url", demo_redis.url, "inspect", name, "--json").stdout)
        assert (data["orphan"], data["lease_id"]) == (False, lease.lease_id)
        assert lease.release_sync() is True
    finally:
        demo_redis.cli("DEL", key)


def test_key_that_is_not_a_lease_is_a_clear_error(demo_redis: RedisServer, name: str) -> None:
    demo_redis.cli("SET", f"lease:{name}", "hello")
    try:
        result = leasing("--url", demo_redis.url, "inspect", name)
        assert result.returncode == 1
        assert result.stderr.startswith("leasing: ")
        assert "something other than a lease" in result.stderr
        assert "Traceback" not in result.stderr
        # list skips it rather than failing
        listed = leasing("--url", demo_redis.url, "list", name)
        assert listed.returncode == 0
        assert listed.stdout.startswith("No leases held")
    finally:
        demo_redis.cli("DEL", f"lease:{name}")


# -- release ---------------------------------------------------------------------------------------


def wait_lost(lease: dl.Lease, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not lease.is_lost:
        time.sleep(0.05)
    return lease.is_lost


def test_release_without_force_is_refused(
    demo_redis: RedisServer, client: dl.LeaseClient, held: dl.Lease, name: str
) -> None:
    result = leasing("--url", demo_redis.url, "release", name, "--yes")
    assert result.returncode == 2
    assert "--force" in result.stderr and "Traceback" not in result.stderr
    info = client.inspect_sync(name)
    assert info is not None and info.lease_id == held.lease_id


def test_release_force_yes(demo_redis: RedisServer, client: dl.LeaseClient, name: str) -> None:
    lease = client.acquire_sync(name, duration=3, renew_interval=0.5, metadata=METADATA)
    result = leasing("--url", demo_redis.url, "release", name, "--force", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Released lease {name!r} (was held by us-east-1 (us-east))."
    assert client.inspect_sync(name) is None
    assert wait_lost(lease)  # its holder finds out at its next renewal
    assert lease.lost_reason == "missing"


def test_release_force_without_terminal_needs_yes(
    demo_redis: RedisServer, client: dl.LeaseClient, held: dl.Lease, name: str
) -> None:
    result = leasing("--url", demo_redis.url, "release", name, "--force")
    assert result.returncode == 2
    assert "--yes" in result.stderr and "not a terminal" in result.stderr
    assert "Release lease" not in result.stdout  # no prompt
    info = client.inspect_sync(name)
    assert info is not None and info.lease_id == held.lease_id


@pytest.mark.parametrize(("answer", "released"), [("n", False), ("", False), ("y", True)])
def test_release_force_asks_at_a_terminal(
    demo_redis: RedisServer, client: dl.LeaseClient, name: str, answer: str, released: bool
) -> None:
    lease = client.acquire_sync(name, duration=30, metadata=METADATA)
    master, slave = pty.openpty()
    try:
        os.write(master, f"{answer}\n".encode())
        result = leasing("--url", demo_redis.url, "release", name, "--force", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
        lease.release_sync()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Release lease {name!r} held by us-east-1 (us-east)? [y/N] ")
    assert ("Released lease" in result.stdout) == released
    assert ("Not released." in result.stdout) == (not released)


def test_release_a_lease_nobody_holds(demo_redis: RedisServer, name: str) -> None:
    result = leasing("--url", demo_redis.url, "release", name, "--force")
    assert result.returncode == 0
    assert "not held" in result.stdout


# -- stores, configuration, errors -----------------------------------------------------------------


def test_embedded_store_and_key_prefix(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/leases.db"
    c = dl.LeaseClient.connect_sync(url)
    lease = c.acquire_sync("batch", metadata={"instanceId": "worker-7", "region": "local"})
    try:
        result = leasing("--url", url, "inspect", "batch")
        assert result.returncode == 0, result.stderr
        assert fields(result.stdout)["Holder"] == "worker-7 (local)"
        assert fields(result.stdout)["Fencing token"] == str(lease.fencing_token)
        assert "batch" in leasing("--url", url, "list").stdout
    finally:
        lease.release_sync()


def test_postgres_store_inspect_list_and_release_force(
    postgres_server: PostgresServer, name: str
) -> None:
    url = postgres_server.url
    c = dl.LeaseClient.connect_sync(url)
    assert c.kind == "postgres"
    lease = c.acquire_sync(name, duration=3, renew_interval=0.5, metadata=METADATA)
    result = leasing("--url", url, "inspect", name)
    assert result.returncode == 0, result.stderr
    f = fields(result.stdout)
    assert f["Holder"] == "us-east-1 (us-east)"
    assert f["Lease ID"] == lease.lease_id
    assert f["Fencing token"] == str(lease.fencing_token)
    listed = json.loads(leasing("--url", url, "list", name, "--json").stdout)
    assert [d["name"] for d in listed] == [name]
    assert listed[0]["metadata"] == METADATA
    result = leasing("--url", url, "release", name, "--force", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Released lease {name!r} (was held by us-east-1 (us-east))."
    assert c.inspect_sync(name) is None
    assert wait_lost(lease)
    assert lease.lost_reason == "missing"
    assert "not held" in leasing("--url", url, "release", name, "--force").stdout
    # The password is never shown, not even in an error.
    bad = leasing("--url", url.replace(POSTGRES_PASSWORD, "Wr0ngS3cret"), "list")
    assert bad.returncode != 0 and "Wr0ngS3cret" not in bad.stdout + bad.stderr
    assert "127.0.0.1" in bad.stderr


def test_etcd_store_inspect_list_and_release_force(etcd_cluster: EtcdCluster, name: str) -> None:
    url = etcd_cluster.url
    c = dl.LeaseClient.connect_sync(url)
    assert c.kind == "etcd"
    lease = c.acquire_sync(name, duration=3, renew_interval=0.5, metadata=METADATA)
    result = leasing("--url", url, "inspect", name)
    assert result.returncode == 0, result.stderr
    f = fields(result.stdout)
    assert f["Holder"] == "us-east-1 (us-east)"
    assert f["Lease ID"] == lease.lease_id
    assert f["Fencing token"] == str(lease.fencing_token)
    listed = json.loads(leasing("--url", url, "list", name, "--json").stdout)
    assert [d["name"] for d in listed] == [name]
    assert listed[0]["metadata"] == METADATA
    result = leasing("--url", url, "release", name, "--force", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Released lease {name!r} (was held by us-east-1 (us-east))."
    assert c.inspect_sync(name) is None
    assert wait_lost(lease)
    assert lease.lost_reason == "missing"
    assert "not held" in leasing("--url", url, "release", name, "--force").stdout


def test_key_prefix_option(demo_redis: RedisServer, name: str) -> None:
    c = dl.LeaseClient.connect_sync(demo_redis.url, key_prefix="app:")
    lease = c.acquire_sync(name, metadata={"instanceId": "x"})
    try:
        assert demo_redis.cli("EXISTS", f"app:{name}").strip() == "1"
        assert name in leasing("--url", demo_redis.url, "--key-prefix", "app:", "list").stdout
        assert name not in leasing("--url", demo_redis.url, "list").stdout
    finally:
        lease.release_sync()


def test_unreachable_store_is_a_message(tmp_path: Path) -> None:
    result = leasing("--url", f"redis://127.0.0.1:{free_port()}", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("leasing: ")
    assert "Traceback" not in result.stderr


def test_nothing_configured_says_how(tmp_path: Path) -> None:
    result = leasing("--dir", str(tmp_path), "list", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("leasing: ")
    assert "--url" in result.stderr
    assert "Traceback" not in result.stderr


def write_local_config(directory: Path, connection_string: str) -> None:
    (directory / "appsettings.Local.json").write_text(
        json.dumps({"RedisLeasing": {"ConnectionString": connection_string}})
    )


# A configuration that works, with a warning: a sqlite URL's parameters are not used.
IGNORED_PARAMETERS = "parameters after '?' in a sqlite URL are not used (ignored)"


def test_config_warnings_are_plain_lines(tmp_path: Path) -> None:
    write_local_config(tmp_path, f"sqlite://{tmp_path}/leases.db?mode=rwc")
    result = leasing("--dir", str(tmp_path), "list", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "No leases held.\n"), result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: RedisLeasing:ConnectionString (from "), line
    assert line.endswith(f": {IGNORED_PARAMETERS}"), line
    # not Python's `cli.py:150: ConfigWarning: ...` and the source line under it
    assert "ConfigWarning" not in line and ".py:" not in line


def test_plain_warnings_only_inside_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_local_config(tmp_path, f"sqlite://{tmp_path}/leases.db?mode=rwc")
    shown = warnings.showwarning
    assert cli.main(["--dir", str(tmp_path), "list"]) == 0
    assert warnings.showwarning is shown
    assert capsys.readouterr().err.endswith(f": {IGNORED_PARAMETERS}\n")
    # A program using the library gets the warning as a warning, with its category.
    with pytest.warns(dl.ConfigWarning, match=re.escape(IGNORED_PARAMETERS)):
        dl.LeaseClient.from_config(tmp_path).close_sync()


def test_in_memory_sqlite_is_refused_with_a_sqlite_fix(tmp_path: Path) -> None:
    by_url = leasing("--url", "sqlite::memory:", "list", cwd=tmp_path)
    write_local_config(tmp_path, "sqlite::memory:")
    by_config = leasing("--dir", str(tmp_path), "list", cwd=tmp_path)
    for result in (by_url, by_config):
        assert result.returncode == 1
        assert result.stderr.startswith("leasing: "), result.stderr
        assert "in-memory SQLite database" in result.stderr
        assert "like sqlite:///var/lib/myapp/leases.db" in result.stderr
        # no Redis form (StackExchange's host:port,password=...,ssl=... or a redis:// URL)
        for redis_hint in ("ssl=", "password=", "redis://"):
            assert redis_hint not in result.stderr, result.stderr
    assert "appsettings.Local.json" in by_config.stderr


def test_configure_without_a_terminal_needs_no_clone(tmp_path: Path) -> None:
    result = leasing("configure", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "not a terminal" in result.stderr
    # What a pip user can do: write the file, set a variable, or the az commands themselves.
    assert str(tmp_path / "appsettings.Local.json") in result.stderr
    assert "RedisLeasing__ConnectionString" in result.stderr
    assert "az redis create --name NAME" in result.stderr
    assert "az redis list-keys --name NAME" in result.stderr
    # The repository's script only as an aside for those with a clone.
    assert re.search(r"a clone of the project's repository also has\s+scripts/", result.stderr)
    assert not [
        line for line in result.stderr.splitlines() if "scripts/" in line and "clone" not in line
    ], result.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["inspect"]) == 2
    assert "NAME" in capsys.readouterr().err


def test_configure_delegates_to_the_wizard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []

    def main(directory: str) -> int:
        calls.append(directory)
        return 0

    monkeypatch.setattr(_wizard, "main", main)
    assert cli.main(["configure", "--dir", str(tmp_path)]) == 0
    assert calls == [str(tmp_path)]


def test_main_in_process_prints_inspect(
    demo_redis: RedisServer, held: dl.Lease, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--url", demo_redis.url, "inspect", name]) == 0
    assert fields(capsys.readouterr().out)["Lease ID"] == held.lease_id


# -- release: only the holder that was shown (issue 12) ---------------------------------------


class _Terminal:
    """A stdin that says it is a terminal (the answer comes from the patched ``_confirm``)."""

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return "y\n"


def test_release_force_never_removes_a_holder_it_did_not_show(
    demo_redis: RedisServer,
    client: dl.LeaseClient,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = client.acquire_sync(name, duration=30, metadata=METADATA)
    successor: list[dl.Lease] = []

    def confirm_after_the_lease_changed_hands(question: str) -> bool:
        # While the administrator reads the prompt, the shown holder's lease is freed and
        # someone else takes it.
        assert "us-east-1 (us-east)" in question
        assert client.force_release_sync(name)
        successor.append(
            client.acquire_sync(name, duration=30, metadata={"instanceId": "eu-west-1"})
        )
        return True

    monkeypatch.setattr(cli, "_confirm", confirm_after_the_lease_changed_hands)
    monkeypatch.setattr(sys, "stdin", _Terminal())
    code = cli.main(["--url", demo_redis.url, "release", name, "--force"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert "changed hands" in err and "eu-west-1" in err and "nothing was released" in err
    info = client.inspect_sync(name)
    assert info is not None and info.lease_id == successor[0].lease_id, "the successor was removed"
    successor[0].release_sync()
    first.release_sync()


def test_release_force_refuses_an_empty_key_prefix(demo_redis: RedisServer, name: str) -> None:
    app_key = f"user:{name}"
    demo_redis.cli("HSET", app_key, "leaseId", "not-a-lease", "acquiredAt", "2025-01-01")
    try:
        result = leasing(
            "--url", demo_redis.url, "--key-prefix", "", "release", app_key, "--force", "--yes"
        )
        assert result.returncode == cli.EXIT_USAGE
        assert "empty key prefix" in result.stderr and "--allow-empty-prefix" in result.stderr
        assert demo_redis.cli("EXISTS", app_key).strip() == "1"
    finally:
        demo_redis.cli("DEL", app_key)


def test_release_force_leaves_an_application_hash_alone(demo_redis: RedisServer, name: str) -> None:
    app_key = f"user:{name}"
    demo_redis.cli("HSET", app_key, "name", "Ada")
    try:
        result = leasing(
            "--url",
            demo_redis.url,
            "--key-prefix",
            "",
            "release",
            app_key,
            "--force",
            "--yes",
            "--allow-empty-prefix",
        )
        assert result.returncode == cli.EXIT_ERROR, result.stdout
        assert "not a lease" in result.stderr
        assert demo_redis.cli("HGET", app_key, "name").strip() == "Ada"
    finally:
        demo_redis.cli("DEL", app_key)


# -- someone else's text cannot forge output (issue 12, defect 8) ------------------------------

# Each would forge or hide output if printed raw: a new line, a carriage return that overwrites
# the line, terminal escape sequences (clear screen, colour), a bidi override that reverses what
# follows, a zero-width space, a line separator, a tab.
FORGED_ID = "abc\nHolder:         admin (trusted)"
FORGED = {
    "instanceId": "evil\r\nLease ID:       00000000-forged",
    "region": "\x1b[2J\x1b[31mred",
    "note": "\u202eesrever\u200b\u2028\tend",
    "plain": "C:\\path\\n is fine",  # printable: shown as is
    "quoted": "'looks like an escape\\n'",  # starts with a quote: shown as a literal
}
BAD_CHARS = ("\x1b", "\r", "\u202e", "\u200b", "\u2028", "\t")


def forged_lease(demo_redis: RedisServer, name: str) -> str:
    """A lease record written by someone else (as the .NET origin would): any lease id."""
    key = f"lease:{name}"
    pairs = [x for k, v in FORGED.items() for x in (f"meta_{k}", v)]
    demo_redis.cli(
        "HSET", key, "leaseId", FORGED_ID, "acquiredAt", "2025-12-25T21:00:00.000Z", *pairs
    )
    demo_redis.cli("EXPIRE", key, "60")
    return key


def assert_no_raw(output: str) -> None:
    for c in BAD_CHARS:
        assert c not in output, (c, output)


def test_inspect_escapes_control_and_format_characters(demo_redis: RedisServer, name: str) -> None:
    key = forged_lease(demo_redis, name)
    try:
        result = leasing("--url", demo_redis.url, "inspect", name)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert_no_raw(out)
        lines = out.splitlines()
        # Lease, Holder, Lease ID, Acquired at, Fencing token, TTL, Metadata:, 5 entries.
        assert len(lines) == 12, out
        assert [line.split(":")[0] for line in lines].count("Holder") == 1
        assert [line.split(":")[0] for line in lines].count("Lease ID") == 1
        f = fields(out)
        assert f["Lease ID"] == repr(FORGED_ID)
        assert f["Holder"] == f"{FORGED['instanceId']!r} ({FORGED['region']!r})"
        for k, v in FORGED.items():
            shown = v if k == "plain" else repr(v)
            assert re.search(rf"^  {k}:\s+{re.escape(shown)}$", out, re.M), (k, out)
        # --json stays exact.
        data = json.loads(leasing("--url", demo_redis.url, "inspect", name, "--json").stdout)
        assert data["lease_id"] == FORGED_ID
        assert data["metadata"] == FORGED
        assert data["holder"] == f"{FORGED['instanceId']} ({FORGED['region']})"
    finally:
        demo_redis.cli("DEL", key)


def test_list_escapes_names_ids_and_holders(demo_redis: RedisServer, name: str) -> None:
    # A key name with an escape sequence and a newline (someone else's key under the prefix).
    odd = f"{name}-\x1b[2J\nforged-row"
    keys = [forged_lease(demo_redis, name), forged_lease(demo_redis, odd)]
    try:
        result = leasing("--url", demo_redis.url, "list", name)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert_no_raw(out)
        lines = out.splitlines()
        assert len(lines) == 4, out  # the header, two rows, the note on FENCING '-'
        assert lines[3].startswith("(FENCING '-': ")
        assert lines[1].startswith(f"{name} ") and lines[2].startswith(repr(odd))
        for row in lines[1:3]:
            assert repr(FORGED_ID[:8]) in row and repr(FORGED["instanceId"]) in row, row
        data = json.loads(leasing("--url", demo_redis.url, "list", name, "--json").stdout)
        assert [d["name"] for d in data] == [name, odd]
        assert all(d["lease_id"] == FORGED_ID for d in data)
    finally:
        for key in keys:
            demo_redis.cli("DEL", key)


def test_release_prompt_and_refusal_escape_the_holder(
    demo_redis: RedisServer, client: dl.LeaseClient, name: str
) -> None:
    metadata = {"instanceId": "x? [y/N] y\nReleased lease 'other'", "region": "\x1b[8m"}
    lease = client.acquire_sync(name, duration=30, metadata=metadata)
    holder = f"{metadata['instanceId']!r} ({metadata['region']!r})"
    try:
        refused = leasing("--url", demo_redis.url, "release", name, "--force")
        assert refused.returncode == 2
        assert f"is held by {holder};" in refused.stderr, refused.stderr
        assert_no_raw(refused.stderr)
        assert refused.stderr.count("\n") == 1, refused.stderr
        master, slave = pty.openpty()
        try:
            os.write(master, b"n\n")
            result = leasing("--url", demo_redis.url, "release", name, "--force", stdin=slave)
        finally:
            os.close(slave)
            os.close(master)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"Release lease {name!r} held by {holder}? [y/N] Not released.\n"
    finally:
        lease.release_sync()


# -- leasing semaphore (issue 25) -----------------------------------------------------------------


@pytest.fixture
def permits(client: dl.LeaseClient, name: str) -> Iterator[list[dl.Permit]]:
    held = [
        client.acquire_permit_sync(name, 3, duration=30, metadata={"instanceId": f"w{i}"})
        for i in range(2)
    ]
    yield held
    for p in held:
        p.release_sync()


def test_semaphore_inspect_json_and_text(
    demo_redis: RedisServer, permits: list[dl.Permit], name: str
) -> None:
    result = leasing("--url", demo_redis.url, "semaphore", "inspect", name, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["name"], out["limit"], out["held"]) == (name, 3, 2)
    assert [(h["slot"], h["lease_id"], h["holder"]) for h in out["holders"]] == [
        (p.slot, p.lease_id, f"w{i}") for i, p in enumerate(permits)
    ]
    assert [h["fencing_token"] for h in out["holders"]] == [p.fencing_token for p in permits]
    text = leasing("--url", demo_redis.url, "semaphore", "inspect", name)
    assert text.returncode == 0, text.stderr
    assert fields(text.stdout)["Limit"] == "3" and permits[1].lease_id in text.stdout
    unused = leasing("--url", demo_redis.url, "semaphore", "inspect", f"{name}-x", "--json")
    assert unused.returncode == 0 and json.loads(unused.stdout) is None
    # The permits are no leases: `leasing list` does not show them.
    assert name not in leasing("--url", demo_redis.url, "list").stdout


def test_semaphore_list_by_prefix_json_and_text(
    demo_redis: RedisServer, client: dl.LeaseClient, permits: list[dl.Permit], name: str
) -> None:
    # Under the prefix `name`: `name` (2 of 3 held) and `name-idle` (limit 5, none held); a
    # lease under it and a semaphore that only contains it are not listed.
    assert client.set_semaphore_limit_sync(f"{name}-idle", 5) is None
    assert client.set_semaphore_limit_sync(f"other-{name}", 2) is None
    lease = client.acquire_sync(f"{name}-lease")
    try:
        result = leasing("--url", demo_redis.url, "semaphore", "list", name, "--json")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert [(s["name"], s["limit"], s["held"]) for s in out] == [
            (name, 3, 2),
            (f"{name}-idle", 5, 0),
        ]
        assert [h["lease_id"] for h in out[0]["holders"]] == [p.lease_id for p in permits]
        assert out[1]["holders"] == []
        table = leasing("--url", demo_redis.url, "semaphore", "list", name)
        assert table.returncode == 0, table.stderr
        assert [line.split() for line in table.stdout.splitlines()] == [
            ["NAME", "LIMIT", "HELD"],
            [name, "3", "2"],
            [f"{name}-idle", "5", "0"],
        ]
        everything = json.loads(
            leasing("--url", demo_redis.url, "semaphore", "list", "--json").stdout
        )
        names = [s["name"] for s in everything]
        assert {name, f"{name}-idle", f"other-{name}"} <= set(names)
        assert f"{name}-lease" not in names and names == sorted(names)
        none = leasing("--url", demo_redis.url, "semaphore", "list", f"{name}-none")
        assert none.returncode == 0, none.stderr
        assert none.stdout == f"No semaphores whose name starts with {name + '-none'!r}.\n"
        empty = leasing("--url", demo_redis.url, "semaphore", "list", f"{name}-none", "--json")
        assert json.loads(empty.stdout) == []
    finally:
        lease.release_sync()


def test_semaphore_set_limit_refuses_without_terminal_and_yes(
    demo_redis: RedisServer, client: dl.LeaseClient, permits: list[dl.Permit], name: str
) -> None:
    result = leasing("--url", demo_redis.url, "semaphore", "set-limit", name, "1")
    assert result.returncode == 2
    assert "--yes" in result.stderr and "not a terminal" in result.stderr
    info = client.semaphore_info_sync(name)
    assert info is not None and info.limit == 3
    done = leasing("--url", demo_redis.url, "semaphore", "set-limit", name, "1", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": name, "changed": True, "limit": 1, "previous": 3}
    info = client.semaphore_info_sync(name)
    assert info is not None and info.limit == 1 and len(info.holders) == 2  # nobody evicted
    bad = leasing("--url", demo_redis.url, "semaphore", "set-limit", name, "0", "--yes")
    assert bad.returncode == 1 and "semaphore limit 0 is out of range" in bad.stderr


@pytest.mark.parametrize(("answer", "changed"), [("n", False), ("y", True)])
def test_semaphore_set_limit_asks_at_a_terminal(
    demo_redis: RedisServer,
    client: dl.LeaseClient,
    permits: list[dl.Permit],
    name: str,
    answer: str,
    changed: bool,
) -> None:
    master, slave = pty.openpty()
    try:
        os.write(master, f"{answer}\n".encode())
        result = leasing("--url", demo_redis.url, "semaphore", "set-limit", name, "5", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Set the limit of semaphore {name!r} (limit 3, 2 held)")
    info = client.semaphore_info_sync(name)
    assert info is not None and info.limit == (5 if changed else 3)


def test_semaphore_release_force_needs_yes_without_terminal_and_removes_the_shown_holder(
    demo_redis: RedisServer, client: dl.LeaseClient, name: str
) -> None:
    victim = client.acquire_permit_sync(name, 2, duration=3, renew_interval=0.5)
    other = client.acquire_permit_sync(name, 2, duration=30)
    try:
        args = ("--url", demo_redis.url, "semaphore", "release", name, "--slot", str(victim.slot))
        unforced = leasing(*args)
        assert unforced.returncode == 2 and "--force" in unforced.stderr
        refused = leasing(*args, "--force")
        assert refused.returncode == 2
        assert "--yes" in refused.stderr and "not a terminal" in refused.stderr
        assert not victim.is_lost
        done = leasing(*args, "--force", "--yes", "--json")
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert (out["released"], out["slot"]) == (True, victim.slot)
        assert out["holder"]["lease_id"] == victim.lease_id
        assert wait_lost(victim)  # its holder finds out at its next renewal
        assert victim.lost_reason == "missing"
        assert not other.is_lost
        again = leasing(*args, "--force", "--yes", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["released"] is False
    finally:
        other.release_sync()


def test_semaphore_release_never_removes_a_holder_it_did_not_show(
    demo_redis: RedisServer,
    client: dl.LeaseClient,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = client.acquire_permit_sync(name, 1, duration=30, metadata={"instanceId": "w-first"})
    successor: list[dl.Permit] = []

    def confirm_after_the_slot_changed_hands(question: str) -> bool:
        assert f"permit 0 of semaphore {name!r} held by w-first" in question
        assert client.force_release_permit_sync(name, 0)
        successor.append(client.acquire_permit_sync(name, 1, duration=30))
        return True

    monkeypatch.setattr(cli, "_confirm", confirm_after_the_slot_changed_hands)
    monkeypatch.setattr(sys, "stdin", _Terminal())
    code = cli.main(
        ["--url", demo_redis.url, "semaphore", "release", name, "--slot", "0", "--force"]
    )
    assert code == 2
    assert "changed hands" in capsys.readouterr().err
    info = client.semaphore_info_sync(name)
    assert info is not None and [h.lease_id for h in info.holders] == [successor[0].lease_id]
    assert not first.release_sync()  # its slot is the successor's: a late release frees nothing
    info = client.semaphore_info_sync(name)
    assert info is not None and [h.lease_id for h in info.holders] == [successor[0].lease_id]
    successor[0].release_sync()
