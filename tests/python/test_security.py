"""Secrets (issue #7): no password in any exception text, repr, warning, log line or CLI output,
and the local settings file is git-ignored.

The library's side at TRACE level is checked in Rust (tests/secrets_in_logs.rs captures every
span, event and log line); here a Python process runs with ``RUST_LOG=trace`` and Python logging
at its most verbose (whatever reaches stderr is checked), does everything that handles a
password, and prints the ``str`` and ``repr`` of every error, warning and object it gets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_util import subprocess_env
from redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Sx9-Pw/7e@:%+word"  # URL-special characters: also looked for percent-encoded
WRONG = "Wr0ng-4d2a/Pass"
FORMS = [SECRET, urllib.parse.quote(SECRET, safe=""), WRONG, urllib.parse.quote(WRONG, safe="")]

SCENARIO = r"""
import asyncio, logging, os, sys, time, warnings
logging.basicConfig(level=1, stream=sys.stderr, format="LOG %(name)s %(levelname)s %(message)s")
import distributed_leasing as dl

url_ok, url_wrong, dir_ok, dir_wrong, dir_bad, dir_empty, se_ok = sys.argv[1:]


def show(*objs):
    for o in objs:
        print("STR", str(o))
        print("REPR", repr(o))
        for attr in ("args", "holder", "kind", "name", "reason", "__notes__"):
            if hasattr(o, attr):
                print("ATTR", attr, repr(getattr(o, attr)))


def refused(call):
    try:
        call()
    except (dl.LeaseError, ValueError, TypeError) as e:
        show(e)
    else:
        raise AssertionError("expected an error")


warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    refused(lambda: dl.LeaseClient.connect_sync(url_wrong))
    client = dl.LeaseClient.from_config(dir_ok)
    show(client)
    lease = client.acquire_sync("sec", duration=1.0, renew_interval=0.2, metadata={"i": "x"})
    show(lease)
    time.sleep(0.6)
    lease.renew_sync()
    show(lease, client.inspect_sync("sec"), *client.list_sync())
    refused(lambda: client.acquire_sync("sec"))
    show(lease.release_sync())

    async def main():
        other = await dl.LeaseClient.connect(url_ok)
        show(other)
        async with other.lease("sec-async", duration=1.0, renew_interval=0.2) as held:
            await asyncio.sleep(0.5)
            show(held, await other.inspect("sec-async"))
        try:
            await dl.LeaseClient.connect(url_wrong)
        except dl.LeaseError as e:
            show(e)

    asyncio.run(main())
    refused(lambda: dl.LeaseClient.from_config(dir_wrong))
    refused(lambda: dl.LeaseClient.from_config(dir_bad))
    refused(lambda: dl.LeaseClient.connect_sync(url_ok + "/notadb"))
    refused(lambda: dl.LeaseClient.connect_sync(url_ok.replace("redis://", "redis+x://")))
    show(dl.LeaseClient.connect_sync(se_ok))  # the configuration's form works here too
    refused(lambda: dl.LeaseClient.connect_sync(se_ok + ",defaultDatabase=x"))  # not echoed
    os.environ["RedisLeasing__ConnectionString"] = se_ok
    show(dl.LeaseClient.from_config(dir_empty))
    os.environ["RedisLeasing__ConnectionString"] = se_ok + ",defaultDatabase=x"
    refused(lambda: dl.LeaseClient.from_config(dir_empty))
for w in caught:
    show(w.message)
print("DONE", len(caught), "warnings")
"""


def assert_no_secret(text: str) -> None:
    for form in FORMS:
        leaks = [line for line in text.splitlines() if form in line]
        assert not leaks, f"{form!r} leaked:\n" + "\n".join(leaks)


def write_config(directory: Path, connection_string: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "appsettings.Local.json").write_text(
        json.dumps({"RedisLeasing": {"ConnectionString": connection_string}})
    )
    return directory


@pytest.fixture
def secret_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_server_factory(acl_users={"alice": SECRET})


def se_string(srv: RedisServer, password: str, extra: str = "") -> str:
    return f"127.0.0.1:{srv.port},user=alice,password={password},ssl=False{extra}"


def test_no_secret_in_errors_reprs_warnings_or_logs(
    secret_server: RedisServer, tmp_path: Path
) -> None:
    srv = secret_server
    args = [
        srv.url_for("alice", SECRET),
        srv.url_for("alice", WRONG),
        str(write_config(tmp_path / "ok", se_string(srv, SECRET, ",bogusOption=1"))),
        str(write_config(tmp_path / "wrong", se_string(srv, WRONG))),
        str(write_config(tmp_path / "bad", se_string(srv, SECRET, ",defaultDatabase=x"))),
        str(write_config(tmp_path / "empty", "")),
        se_string(srv, SECRET),
    ]
    (tmp_path / "empty" / "appsettings.Local.json").unlink()
    env = subprocess_env()
    env["RUST_LOG"] = "trace"
    env["RUST_BACKTRACE"] = "1"
    r = subprocess.run(
        [sys.executable, "-c", SCENARIO, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "DONE" in r.stdout
    # The scenario did meet every kind of message it was meant to.
    assert "authentication" in r.stdout
    assert "ConfigError" in r.stdout and "BackendError" in r.stdout
    assert "LeaseUnavailable" in r.stdout
    assert "bogusOption" in r.stdout  # the warning about the unknown option
    assert_no_secret(r.stdout)
    assert_no_secret(r.stderr)
    if os.environ.get("SHOW_SECURITY_SCENARIO"):
        print(r.stdout, r.stderr)


def test_no_secret_in_cli_output(secret_server: RedisServer, tmp_path: Path) -> None:
    srv = secret_server
    ok = write_config(tmp_path / "ok", se_string(srv, SECRET))
    wrong = write_config(tmp_path / "wrong", se_string(srv, WRONG))
    bad = write_config(tmp_path / "bad", se_string(srv, SECRET, ",defaultDatabase=x"))
    url_ok, url_wrong = srv.url_for("alice", SECRET), srv.url_for("alice", WRONG)
    srv.cli("HSET", "lease:held", "leaseId", "x", "acquiredAt", "2025-12-25T21:00:00.000Z",
            "meta_instanceId", "cli", user="alice", password=SECRET)  # fmt: skip
    runs = [
        ["--dir", str(ok), "inspect", "held"],
        ["--dir", str(ok), "inspect", "--json", "held"],
        ["--dir", str(ok), "list"],
        ["--dir", str(ok), "release", "held", "--force", "--yes"],
        ["--dir", str(wrong), "list"],
        ["--dir", str(bad), "list"],
        ["--url", url_ok, "list", "--json"],
        ["--url", url_wrong, "inspect", "held"],
        ["--url", url_ok + "/notadb", "list"],
        ["--url", url_ok, "no-such-command"],
    ]
    outputs = []
    for argv in runs:
        r = subprocess.run(
            [sys.executable, "-m", "distributed_leasing.cli", *argv],
            capture_output=True,
            text=True,
            env={**subprocess_env(), "RUST_LOG": "trace"},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        outputs.append(r.returncode)
        assert "Traceback" not in r.stderr, r.stderr
        assert_no_secret(r.stdout)
        assert_no_secret(r.stderr)
    # The commands did run: successes and each kind of failure.
    assert outputs[:4] == [0, 0, 0, 0], outputs
    assert outputs[4] == outputs[5] == 1 and outputs[-1] == 2, outputs


def test_local_settings_file_is_git_ignored() -> None:
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "appsettings.Local.json" in [line.strip() for line in gitignore]
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return  # not a git checkout (an sdist): the line above is all there is to check
    local = "appsettings.Local.json"
    for path in (local, f"examples/{local}", f"some/deeper/dir/{local}"):
        r = subprocess.run(
            [git, "check-ignore", "-q", "--no-index", path], cwd=ROOT, capture_output=True
        )
        assert r.returncode == 0, f"{path} is not git-ignored"
    # The shared template is not ignored: it carries no secret and is committed.
    r = subprocess.run(
        [git, "check-ignore", "-q", "--no-index", "appsettings.json"], cwd=ROOT, capture_output=True
    )
    assert r.returncode == 1
