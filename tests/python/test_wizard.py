"""The configuration wizard, driven through a pseudo-terminal (pexpect) with real answers against
real servers: it tests the connection before saving, says what failed, writes
``appsettings.Local.json`` with mode 0600, keeps it out of git, never echoes a secret, and never
prompts without a terminal."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import distributed_leasing as dl
import pexpect
import pytest
from distributed_leasing import _wizard
from fake_azure import FakeAz, azure_free_env
from redis_servers import RedisServer, free_port

SECRET = "wizard-S3cret_key+/="
LOCAL = "appsettings.Local.json"


class Wizard:
    """``leasing configure --dir D`` in a pseudo-terminal, with a transcript of its output."""

    def __init__(self, d: Path, env: dict[str, str], *args: str) -> None:
        self.transcript = io.StringIO()
        argv = ["-m", "distributed_leasing.cli", *(args or ("configure",)), "--dir", str(d)]
        self.child = pexpect.spawn(
            sys.executable,
            argv,
            env=env,
            cwd=str(d),
            encoding="utf-8",
            timeout=60,
            dimensions=(50, 250),
        )
        self.child.logfile_read = self.transcript

    def answer(self, prompt: str, text: str) -> None:
        self.child.expect_exact(prompt)
        self.child.sendline(text)

    def expect(self, text: str) -> None:
        self.child.expect_exact(text)

    def finish(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
        return status

    @property
    def text(self) -> str:
        return self.transcript.getvalue()


@pytest.fixture
def env() -> dict[str, str]:
    """The children's environment: no RedisLeasing__*, no Azure variables."""
    return azure_free_env()


@pytest.fixture
def wizards() -> Iterator[list[Wizard]]:
    made: list[Wizard] = []
    yield made
    for w in made:
        if w.child.isalive():
            w.child.terminate(force=True)


def start(made: list[Wizard], d: Path, env: dict[str, str], *args: str) -> Wizard:
    w = Wizard(d, env, *args)
    made.append(w)
    return w


def saved(d: Path) -> dict[str, object]:
    path = d / LOCAL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    section = json.loads(path.read_text())["RedisLeasing"]
    assert isinstance(section, dict)
    return section


def gitignore_lines(d: Path) -> list[str]:
    return (d / ".gitignore").read_text().splitlines()


# -- through a terminal --------------------------------------------------------------------------


def test_redis_url_with_acl_user_wrong_password_then_edit_and_save(
    redis_server_factory: Callable[..., RedisServer],
    tmp_path: Path,
    env: dict[str, str],
    wizards: list[Wizard],
    unique_name: str,
) -> None:
    srv = redis_server_factory(acl_users={"alice": SECRET})
    w = start(wizards, tmp_path, env)
    w.answer("Choose [1]:", "2")
    w.answer("Redis URL [redis://localhost:6379]:", srv.bare_url)
    w.answer("User name (ACL; empty for the default user):", "alice")
    w.answer("Password (empty for none) (input hidden):", "not-" + SECRET)
    w.answer("Key prefix [lease:]:", "")
    w.answer("Database number [0]:", "")
    w.expect("The connection test failed:")
    w.expect("authentication")
    w.answer("[r]etry the test, [e]dit the answers, [s]ave anyway, [q]uit [r]:", "e")
    # The previous answers are the defaults now.
    w.answer("Choose [2]:", "")
    w.answer(f"Redis URL [{srv.bare_url}]:", "")
    w.answer("User name (ACL; empty for the default user) [alice]:", "")
    w.answer("Password (empty for none) (input hidden):", SECRET)
    w.answer("Key prefix [lease:]:", "")
    w.answer("Database number [0]:", "3")
    w.expect("✓ Connected.")
    w.expect("Saved")
    assert w.finish() == 0
    assert SECRET not in w.text and "not-" + SECRET not in w.text
    section = saved(tmp_path)
    assert section == {
        "ConnectionString": f"redis://alice:{quote(SECRET, safe='')}@127.0.0.1:{srv.port}",
        "KeyPrefix": "lease:",
        "Database": 3,
    }
    assert gitignore_lines(tmp_path) == [LOCAL]
    # What was saved works.
    with dl.LeaseClient.from_config(tmp_path) as client, client.lease(unique_name):
        assert srv.cli("-n", "3", "EXISTS", f"lease:{unique_name}").strip() == "1"


def test_azure_access_key_mode_over_tls(
    redis_server_factory: Callable[..., RedisServer],
    tmp_path: Path,
    env: dict[str, str],
    wizards: list[Wizard],
) -> None:
    """The Azure path with a loopback host:port in place of a cache name (nothing may reach
    Azure here); the machine-wide SSL_CERT_FILE is replaced by the test CA for the child."""
    srv = redis_server_factory(tls=True, password=SECRET)
    assert srv.ca_file is not None
    env["SSL_CERT_FILE"] = str(srv.ca_file)
    w = start(wizards, tmp_path, env)
    w.answer("Choose [1]:", "1")
    w.answer("Azure Redis Cache name:", f"localhost:{srv.port}")
    w.expect("Authentication mode:")
    w.answer("Choose [1]:", "1")
    w.answer("Access key (Azure portal > Access keys) (input hidden):", SECRET)
    w.answer("Key prefix [lease:]:", "az:")
    w.answer("Database number [0]:", "")
    w.expect(f"Testing the connection to localhost:{srv.port} (access key)")
    w.expect("✓ Connected.")
    assert w.finish() == 0
    assert SECRET not in w.text
    assert saved(tmp_path) == {
        "ConnectionString": f"localhost:{srv.port},password={SECRET},ssl=True",
        "KeyPrefix": "az:",
        "Database": 0,
    }


def test_azure_entra_id_mode_with_the_azure_cli(
    redis_server_factory: Callable[..., RedisServer],
    tmp_path: Path,
    wizards: list[Wizard],
) -> None:
    srv = redis_server_factory(tls=True)
    assert srv.ca_file is not None
    az = FakeAz(tmp_path / "az", redis_port=srv.port, redis_cli=srv.cli_args(), lifetime=600)
    app = tmp_path / "app"
    app.mkdir()
    env = azure_free_env(az.bin)
    env["SSL_CERT_FILE"] = str(srv.ca_file)
    w = start(wizards, app, env)
    w.answer("Choose [1]:", "")
    w.answer("Azure Redis Cache name:", f"127.0.0.1:{srv.port}")
    w.answer("Choose [1]:", "2")
    w.answer("Key prefix [lease:]:", "")
    w.answer("Database number [0]:", "")
    w.expect("(Microsoft Entra ID)")
    w.expect("✓ Connected.")
    assert w.finish() == 0
    assert saved(app) == {"Endpoint": f"127.0.0.1:{srv.port}", "KeyPrefix": "lease:", "Database": 0}
    assert len(az.tokens()) == 1
    assert az.tokens()[0] not in w.text


def test_embedded_store_replaces_an_existing_file_and_keeps_gitignore_tidy(
    tmp_path: Path, env: dict[str, str], wizards: list[Wizard]
) -> None:
    local = tmp_path / LOCAL
    local.write_text("{}")
    local.chmod(0o644)
    (tmp_path / ".gitignore").write_text("*.pyc\n/appsettings.Local.json")  # no final newline
    w = start(wizards, tmp_path, env)
    w.answer("appsettings.Local.json exists here. Replace it? (y/n) [n]:", "y")
    w.answer("Choose [1]:", "3")
    default_db = tmp_path.resolve() / ".leases" / "leases.db"
    w.answer(f"Database file [{default_db}]:", "")
    w.expect("✓ Connected.")
    assert w.finish() == 0
    assert saved(tmp_path) == {"ConnectionString": f"sqlite://{default_db}"}
    assert gitignore_lines(tmp_path) == ["*.pyc", "/appsettings.Local.json"]
    assert default_db.exists()
    assert (default_db.parent / ".gitignore").read_text() == "*\n"


def test_declining_to_replace_changes_nothing(
    tmp_path: Path, env: dict[str, str], wizards: list[Wizard]
) -> None:
    (tmp_path / LOCAL).write_text('{"RedisLeasing": {"ConnectionString": "redis://h:1"}}')
    w = start(wizards, tmp_path, env)
    w.answer("Replace it? (y/n) [n]:", "")
    w.expect("Nothing changed.")
    assert w.finish() == 0
    assert json.loads((tmp_path / LOCAL).read_text())["RedisLeasing"]["ConnectionString"]
    assert not (tmp_path / ".gitignore").exists()


def test_unreachable_server_is_explained_and_can_be_saved_anyway(
    tmp_path: Path, env: dict[str, str], wizards: list[Wizard]
) -> None:
    port = free_port()  # nothing listens here
    w = start(wizards, tmp_path, env)
    w.answer("Choose [1]:", "2")
    w.answer("Redis URL [redis://localhost:6379]:", f"127.0.0.1:{port}")
    w.answer("User name (ACL; empty for the default user):", "")
    w.answer("Password (empty for none) (input hidden):", "")
    w.answer("Key prefix [lease:]:", "")
    w.answer("Database number [0]:", "")
    w.expect("The connection test failed:")
    w.expect(f"cannot reach Redis at 127.0.0.1:{port}")
    w.answer("[q]uit [r]:", "r")
    w.expect("Testing again")
    w.answer("[q]uit [r]:", "s")
    w.expect("Saved")
    assert w.finish() == 0
    assert saved(tmp_path)["ConnectionString"] == f"redis://127.0.0.1:{port}"


def test_quit_and_ctrl_c_save_nothing(
    tmp_path: Path, env: dict[str, str], wizards: list[Wizard]
) -> None:
    port = free_port()
    w = start(wizards, tmp_path, env)
    w.answer("Choose [1]:", "2")
    w.answer("Redis URL [redis://localhost:6379]:", f"redis://127.0.0.1:{port}")
    w.answer("User name (ACL; empty for the default user):", "")
    w.answer("Password (empty for none) (input hidden):", "")
    w.answer("Key prefix [lease:]:", "")
    w.answer("Database number [0]:", "")
    w.answer("[q]uit [r]:", "q")
    w.expect("Nothing was saved.")
    assert w.finish() == 1
    w = start(wizards, tmp_path, env)
    w.expect("Choose [1]:")
    w.child.sendcontrol("c")
    w.expect("Cancelled; nothing was saved.")
    assert w.finish() == 1
    assert not (tmp_path / LOCAL).exists()
    assert not (tmp_path / ".gitignore").exists()


def test_bad_answers_are_asked_again(
    tmp_path: Path, env: dict[str, str], wizards: list[Wizard]
) -> None:
    w = start(wizards, tmp_path, env)
    w.answer("Choose [1]:", "7")
    w.expect("Type a number from 1 to 3.")
    w.answer("Choose [1]:", "1")
    w.answer("Azure Redis Cache name:", "")
    w.expect("The cache name is required")
    w.answer("Azure Redis Cache name:", "bad name!")
    w.expect("cache name")
    w.child.sendcontrol("c")
    assert w.finish() == 1


def test_leasing_list_starts_the_wizard_when_nothing_is_configured(
    tmp_path: Path, env: dict[str, str], wizards: list[Wizard]
) -> None:
    w = start(wizards, tmp_path, env, "list")
    w.expect("Nothing is configured here yet: starting the configuration wizard.")
    w.answer("Choose [1]:", "3")
    w.answer("Database file", "")
    w.expect("Saved")
    assert w.finish() == 0  # and then listed nothing, from the saved configuration
    assert saved(tmp_path)["ConnectionString"]


def at_terminal(code: str, env: dict[str, str]) -> str:
    """Runs ``python -c code`` with a pseudo-terminal as stdin and stdout; returns its output."""
    child = pexpect.spawn(sys.executable, ["-c", code], env=env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    out = child.before or ""
    child.close()
    return out.strip()


def test_should_run_automatically_only_at_a_terminal_without_configuration(
    tmp_path: Path, env: dict[str, str]
) -> None:
    code = (
        "from distributed_leasing import _wizard; "
        f"print(_wizard.should_run_automatically({str(tmp_path)!r}))"
    )
    assert at_terminal(code, env) == "True"
    piped = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert piped.stdout.strip() == "False"
    assert at_terminal(code, dict(env, RedisLeasing__ConnectionString="redis://h:6379")) == "False"
    (tmp_path / "appsettings.json").write_text('{"RedisLeasing": {"Endpoint": "c:6380"}}')
    assert at_terminal(code, env) == "False"


def test_without_a_terminal_it_never_prompts(tmp_path: Path, env: dict[str, str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "distributed_leasing.cli", "configure", "--dir", str(tmp_path)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "not a terminal" in r.stderr and "appsettings.Local.json" in r.stderr
    assert "Choose" not in r.stdout + r.stderr
    assert not (tmp_path / LOCAL).exists()


# -- the pieces, in process ------------------------------------------------------------------


def test_azure_cache_names_become_endpoints() -> None:
    assert _wizard.azure_endpoint("myrediscache") == "myrediscache.redis.cache.windows.net:6380"
    assert _wizard.azure_endpoint("MyCache-1") == "mycache-1.redis.cache.windows.net:6380"
    assert _wizard.azure_endpoint("x.westeurope.redis.azure.net:10000") == (
        "x.westeurope.redis.azure.net:10000"
    )
    assert _wizard.azure_endpoint("host.example") == "host.example:6380"
    for bad in ("-x", "a b", "x:0", "x:70000", ""):
        with pytest.raises(ValueError):
            _wizard.azure_endpoint(bad)


def test_sections_have_the_samples_shapes() -> None:
    a = _wizard.Answers(
        store="azure", endpoint="c.redis.cache.windows.net:6380", auth="key", secret="K"
    )
    assert _wizard.section_for(a) == {
        "ConnectionString": "c.redis.cache.windows.net:6380,password=K,ssl=True",
        "KeyPrefix": "lease:",
        "Database": 0,
    }
    a.auth = "entra"
    assert _wizard.section_for(a) == {
        "Endpoint": "c.redis.cache.windows.net:6380",
        "KeyPrefix": "lease:",
        "Database": 0,
    }
    assert "K" not in repr(a)
    u = _wizard.Answers(store="url", url="rediss://h:6380", user="u@x", secret="p:w", ca_file="/c")
    assert _wizard.section_for(u)["ConnectionString"] == "rediss://u%40x:p%3Aw@h:6380"
    assert _wizard.section_for(u)["CaFile"] == "/c"


def test_local_settings_are_private_from_the_start(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        (tmp_path / LOCAL).write_text("{}")
        (tmp_path / LOCAL).chmod(0o666)
        path = _wizard.write_local_settings(tmp_path, {"ConnectionString": "redis://h:1"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"RedisLeasing": {"ConnectionString": "redis://h:1"}}
    assert [p.name for p in tmp_path.iterdir()] == [LOCAL]  # no temporary file left


def test_gitignore_gets_one_line(tmp_path: Path) -> None:
    _wizard.ensure_gitignored(tmp_path)
    _wizard.ensure_gitignored(tmp_path)
    assert gitignore_lines(tmp_path) == [LOCAL]
    (tmp_path / ".gitignore").write_text("build/")
    _wizard.ensure_gitignored(tmp_path)
    assert gitignore_lines(tmp_path) == ["build/", LOCAL]


def test_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.lower().startswith("redisleasing"):
            monkeypatch.delenv(k)
    assert not _wizard.is_configured(tmp_path)
    (tmp_path / "appsettings.json").write_text('{"RedisLeasing": {"KeyPrefix": "x:"}}')
    assert not _wizard.is_configured(tmp_path)  # the template alone configures no store
    (tmp_path / "appsettings.json").write_text("{ not json")
    assert _wizard.is_configured(tmp_path)  # let the library report the broken file
    (tmp_path / "appsettings.json").unlink()
    monkeypatch.setenv("REDISLEASING__ENDPOINT", "c:6380")
    assert _wizard.is_configured(tmp_path)
