"""``scripts/setup-resources.sh --project redis`` with a stub ``az`` first on PATH: the stub records
every call (arguments exactly as received) and answers with canned output, so the script's
conversation with Azure is checked without reaching Azure."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "setup-resources.sh"
KEY = "cAnNedPrimaryKey0123456789abcdefghijklmnop+/Q="
OID = "9f8e7d6c-5b4a-4321-8fed-cba987654321"

STUB = r"""#!/usr/bin/env bash
# Stub Azure CLI: records its arguments, answers from files in $STATE.
STATE='@STATE@'
printf '%q ' "$@" >>"$STATE/calls"; printf '\n' >>"$STATE/calls"
name=""; prev=""
for a in "$@"; do [[ $prev == --name ]] && name=$a; prev=$a; done
args="$*"
case $args in
  "account show -o none")
    [[ -e $STATE/logged-out ]] && { echo "Please run 'az login' to setup account." >&2; exit 1; }
    exit 0 ;;
  "group exists --name "*) cat "$STATE/group-exists" 2>/dev/null || echo false ;;
  "group create "*)
    echo true >"$STATE/group-exists"
    echo '{"properties":{"provisioningState":"Succeeded"}}' ;;
  "redis show --name "*" -o none")
    [[ -e $STATE/cache ]] && exit 0
    echo "ERROR: (ResourceNotFound) The Resource was not found." >&2; exit 3 ;;
  "redis create "*) touch "$STATE/cache"; echo '{"provisioningState":"Creating"}' ;;
  "redis show "*"--query provisioningState -o tsv")
    n=$(( $(cat "$STATE/polls" 2>/dev/null || echo 0) + 1 )); echo $n >"$STATE/polls"
    line=$(sed -n "${n}p" "$STATE/states"); [[ -n $line ]] || line=$(tail -n1 "$STATE/states")
    echo "$line" ;;
  "redis show "*"--query hostName -o tsv") echo "$name.redis.cache.windows.net" ;;
  "redis show "*"--query sslPort -o tsv") echo 6380 ;;
  "redis show "*"aad-enabled"*) cat "$STATE/aad" 2>/dev/null || echo false ;;
  "redis list-keys "*"--query primaryKey -o tsv") echo '@KEY@' ;;
  "redis update "*) echo true >"$STATE/aad"; echo '{}' ;;
  "ad signed-in-user show --query id -o tsv") echo '@OID@' ;;
  "ad signed-in-user show --query userPrincipalName -o tsv") echo dev@example.com ;;
  "redis access-policy-assignment create "*) echo '{"provisioningState":"Succeeded"}' ;;
  *) echo "stub az: unexpected call: $args" >&2; exit 9 ;;
esac
"""


@dataclass
class Az:
    state: Path
    bin: Path

    def calls(self) -> list[list[str]]:
        text = (self.state / "calls").read_text() if (self.state / "calls").exists() else ""
        return [shlex.split(line) for line in text.splitlines()]

    def commands(self) -> list[str]:
        """The calls as `az group create`-style verbs, in order."""
        out = []
        for c in self.calls():
            words = [w for w in c if not w.startswith("-")]
            out.append(
                " ".join(
                    words[:3] if words[:2] == ["redis", "access-policy-assignment"] else words[:2]
                )
            )
        return out


@pytest.fixture
def az(tmp_path: Path) -> Az:
    state, bin_dir = tmp_path / "az-state", tmp_path / "az-bin"
    state.mkdir()
    bin_dir.mkdir()
    (state / "states").write_text("Creating\nCreating\nSucceeded\n")
    stub = bin_dir / "az"
    stub.write_text(STUB.replace("@STATE@", str(state)).replace("@KEY@", KEY).replace("@OID@", OID))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return Az(state, bin_dir)


def run(az: Az, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REDISLEASING")}
    env["PATH"] = f"{az.bin}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def find(calls: list[list[str]], *prefix: str) -> list[str]:
    matches = [c for c in calls if c[: len(prefix)] == list(prefix)]
    assert len(matches) == 1, (prefix, calls)
    return matches[0]


def opt(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def saved(d: Path) -> dict[str, object]:
    path = d / "appsettings.Local.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    section = json.loads(path.read_text())["RedisLeasing"]
    assert isinstance(section, dict)
    return section


def test_access_key_mode_with_the_samples_defaults(az: Az, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    r = run(az, app, "--project", "redis", "--poll-interval", "0")
    assert r.returncode == 0, r.stderr
    calls = az.calls()
    assert az.commands() == [
        "account show",
        "redis show",  # does it exist? no
        "group exists",
        "group create",
        "redis create",
        "redis show",  # provisioningState: Creating
        "redis show",  # Creating
        "redis show",  # Succeeded
        "redis show",  # hostName
        "redis show",  # sslPort
        "redis list-keys",
    ]
    create = find(calls, "redis", "create")
    assert (opt(create, "--name"), opt(create, "--resource-group")) == (
        "myrediscache",
        "pranshu-rg",
    )
    assert (opt(create, "--location"), opt(create, "--sku"), opt(create, "--vm-size")) == (
        "eastus",
        "Basic",
        "C0",
    )
    assert "--redis-configuration" not in create
    group = find(calls, "group", "create")
    assert (opt(group, "--name"), opt(group, "--location")) == ("pranshu-rg", "eastus")
    keys = find(calls, "redis", "list-keys")
    assert opt(keys, "--query") == "primaryKey" and opt(keys, "-o") == "tsv"
    assert saved(app) == {
        "ConnectionString": f"myrediscache.redis.cache.windows.net:6380,password={KEY},ssl=True",
        "KeyPrefix": "lease:",
        "Database": 0,
    }
    assert (app / ".gitignore").read_text() == "appsettings.Local.json\n"
    assert KEY not in r.stdout + r.stderr
    assert "Creating" in r.stdout and "ready" in r.stdout
    # Run again: the cache exists, nothing is created, the file is replaced, the line not added.
    (az.state / "polls").unlink()
    (az.state / "states").write_text("Succeeded\n")
    r = run(az, app, "--project", "redis", "--key-prefix", "app:", "--database", "2")
    assert r.returncode == 0, r.stderr
    assert [c[:2] for c in az.calls()].count(["redis", "create"]) == 1
    assert saved(app)["KeyPrefix"] == "app:" and saved(app)["Database"] == 2
    assert (app / ".gitignore").read_text() == "appsettings.Local.json\n"
    assert sorted(p.name for p in app.iterdir()) == [".gitignore", "appsettings.Local.json"]


def test_entra_mode_enables_entra_and_gives_the_signed_in_user_a_policy(
    az: Az, tmp_path: Path
) -> None:
    (az.state / "group-exists").write_text("true\n")
    (az.state / "cache").touch()  # an existing cache, Entra not enabled yet
    (az.state / "states").write_text("Succeeded\nUpdating\nSucceeded\n")
    ignore = tmp_path / ".gitignore"
    ignore.write_text("*.log")  # no final newline
    args = ("--project", "redis", "--auth", "entra", "--name", "leases-cache")
    r = run(az, tmp_path, *args, "--resource-group", "rg2", "--poll-interval", "0")
    assert r.returncode == 0, r.stderr
    calls = az.calls()
    assert ["redis", "create"] not in [c[:2] for c in calls]
    update = find(calls, "redis", "update")
    assert opt(update, "--set") == "redisConfiguration.aad-enabled=true"
    assert (opt(update, "--name"), opt(update, "--resource-group")) == ("leases-cache", "rg2")
    policy = find(calls, "redis", "access-policy-assignment", "create")
    assert opt(policy, "--object-id") == OID
    assert opt(policy, "--policy-name") == "Data Contributor"
    assert opt(policy, "--object-id-alias") == "dev@example.com"
    assert opt(policy, "--name") == "leases-cache"
    # The policy is assigned after the update finished provisioning.
    order = az.commands()
    assert order.index("redis access-policy-assignment create") > order.index("redis update")
    assert order.count("redis show") >= 6
    assert saved(tmp_path) == {
        "Endpoint": "leases-cache.redis.cache.windows.net:6380",
        "KeyPrefix": "lease:",
        "Database": 0,
    }
    assert "list-keys" not in json.dumps(calls)
    assert ignore.read_text() == "*.log\nappsettings.Local.json\n"


def test_a_new_cache_in_entra_mode_is_created_with_entra_enabled(az: Az, tmp_path: Path) -> None:
    (az.state / "aad").write_text("true\n")
    r = run(az, tmp_path, "--project", "redis", "--auth", "entra", "--poll-interval", "0")
    assert r.returncode == 0, r.stderr
    create = find(az.calls(), "redis", "create")
    assert json.loads(opt(create, "--redis-configuration")) == {"aad-enabled": "true"}
    assert ["redis", "update"] not in [c[:2] for c in az.calls()]


def test_failed_provisioning_stops_without_writing(az: Az, tmp_path: Path) -> None:
    (az.state / "states").write_text("Creating\nFailed\n")
    r = run(az, tmp_path, "--project", "redis", "--poll-interval", "0")
    assert r.returncode == 1
    assert "Failed" in r.stderr and "myrediscache" in r.stderr
    assert not (tmp_path / "appsettings.Local.json").exists()
    assert "list-keys" not in json.dumps(az.calls())


def test_waiting_gives_up_after_the_timeout(az: Az, tmp_path: Path) -> None:
    (az.state / "states").write_text("Creating\n")
    r = run(az, tmp_path, "--project", "redis", "--poll-interval", "0", "--timeout", "3")
    assert r.returncode == 1
    assert "still 'Creating'" in r.stderr and "run this again" in r.stderr
    polls = int((az.state / "polls").read_text())
    assert 3 <= polls <= 5
    assert not (tmp_path / "appsettings.Local.json").exists()


def test_not_signed_in_says_az_login(az: Az, tmp_path: Path) -> None:
    (az.state / "logged-out").touch()
    r = run(az, tmp_path, "--project", "redis")
    assert r.returncode == 1
    assert "az login" in r.stderr
    assert az.commands() == ["account show"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--project is required"),
        (("--project", "blob"), "only --project redis"),
        (("--project", "redis", "--auth", "password"), "--auth must be key or entra"),
        (("--project", "redis", "--database", "16"), "--database must be 0-15"),
        (("--project", "redis", "--name", "-bad-"), "--name must be"),
        (("--project", "redis", "--frobnicate"), "unknown argument"),
        (("--project", "redis", "--name"), "--name needs a value"),
    ],
)
def test_bad_arguments_are_refused_before_calling_azure(
    az: Az, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    r = run(az, tmp_path, *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert az.calls() == []


def test_help_lists_the_options() -> None:
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for option in ("--project", "--name", "--resource-group", "--location", "--sku", "--auth"):
        assert option in r.stdout
    assert "set -euo" not in r.stdout
