"""The competition demo (examples/compete.py, examples/run-competition-demo.sh) as real processes,
on a real redis-server and on the embedded SQLite store: the seed's output line for line, exit
codes, signals, lost leases, the five scenarios, and no process left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from demo_helpers import (
    COMPETE,
    DEMO_SCRIPT,
    SEED_LOSER,
    SEED_WINNER,
    SQLITE_TITLE,
    Instance,
    RedisServer,
    Runner,
    clean_env,
    demo_redis,
    group_gone,
    mask,
    runner,
    timings,
    wait_group_gone,
)
from etcd_server import EtcdCluster
from postgres_server import PostgresServer

__all__ = ["demo_redis", "runner"]  # fixtures

POSTGRES_TITLE = "DISTRIBUTED LOCK DEMO - POSTGRES"
ETCD_TITLE = "DISTRIBUTED LOCK DEMO - ETCD"

pytestmark = pytest.mark.slow


def fresh(prefix: str = "lock") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# The stores the demo runs on, each as the URL its fixtures give: adding a store is one line.
DEMO_STORES: dict[str, Callable[[pytest.FixtureRequest, pytest.TempPathFactory], str]] = {
    "redis": lambda request, _: request.getfixturevalue("demo_redis").url,
    "sqlite": lambda _, tmp: f"sqlite://{tmp.mktemp('leases')}/leases.db",
    "postgres": lambda request, _: request.getfixturevalue("postgres_server").url,
    "etcd": lambda request, _: request.getfixturevalue("etcd_cluster").url,
}


@pytest.fixture(params=list(DEMO_STORES))
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return DEMO_STORES[request.param](request, tmp_path_factory)


def winner_and_loser(
    runner: Runner, url: str, lock: str, *options: str
) -> tuple[Instance, Instance]:
    common = ["--url", url, "--lock-name", lock, *options]
    winner = runner.compete("us-east-1", "us-east", *common)
    winner.wait_for("Lock acquired")
    loser = runner.compete("eu-west-1", "eu-west", *common)
    return winner, loser


# -- output, line for line ------------------------------------------------------------------------


def test_seed_output_line_for_line_on_redis(runner: Runner, demo_redis: RedisServer) -> None:
    # The seed's defaults: 15 s of work, a 30 s lease renewed every 20 s, so 0 renewals.
    winner, loser = winner_and_loser(runner, demo_redis.url, fresh())
    assert loser.wait() == 3
    assert mask(loser.lines) == SEED_LOSER
    assert winner.wait() == 0
    assert mask(winner.lines) == SEED_WINNER
    assert winner.err_lines == [] and loser.err_lines == []


def test_winner_and_loser_output_on_embedded_store(runner: Runner, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/leases.db"
    winner, loser = winner_and_loser(runner, url, fresh(), "--work-seconds", "7")
    assert loser.wait() == 3
    assert mask(loser.lines) == [
        SQLITE_TITLE if line.startswith("DISTRIBUTED LOCK DEMO") else line for line in SEED_LOSER
    ]
    assert winner.wait() == 0
    expected = [
        SQLITE_TITLE if line.startswith("DISTRIBUTED LOCK DEMO") else line.replace("15s", "7s")
        for line in SEED_WINNER
        if "[9s]" not in line and "[12s]" not in line
    ]
    assert mask(winner.lines) == expected


def test_winner_and_loser_output_on_postgres(
    runner: Runner, postgres_server: PostgresServer
) -> None:
    lock = fresh()
    winner, loser = winner_and_loser(runner, postgres_server.url, lock, "--work-seconds", "7")
    # The loser names the holder, from the refused acquire's own answer.
    assert loser.wait() == 3
    assert mask(loser.lines) == [
        POSTGRES_TITLE if line.startswith("DISTRIBUTED LOCK DEMO") else line for line in SEED_LOSER
    ]
    row = postgres_server.psql(
        "SELECT metadata->>'instanceId', metadata->>'region' FROM distributed_leasing.leases"
        " WHERE name = :'name' AND expires_at > now()",
        {"name": lock},
    )
    assert row == "us-east-1|us-east"
    assert winner.wait() == 0
    expected = [
        POSTGRES_TITLE if line.startswith("DISTRIBUTED LOCK DEMO") else line.replace("15s", "7s")
        for line in SEED_WINNER
        if "[9s]" not in line and "[12s]" not in line
    ]
    assert mask(winner.lines) == expected
    assert winner.err_lines == [] and loser.err_lines == []
    assert (
        postgres_server.psql(
            "SELECT expires_at = '-infinity' FROM distributed_leasing.leases WHERE name = :'name'",
            {"name": lock},
        )
        == "t"
    )  # released: the row stays, marked released (not merely expired)


def test_winner_and_loser_output_on_etcd(runner: Runner, etcd_cluster: EtcdCluster) -> None:
    lock = fresh()
    winner, loser = winner_and_loser(runner, etcd_cluster.url, lock, "--work-seconds", "7")
    # The loser names the holder, from the refused acquire's own answer.
    assert loser.wait() == 3
    assert mask(loser.lines) == [
        ETCD_TITLE if line.startswith("DISTRIBUTED LOCK DEMO") else line for line in SEED_LOSER
    ]
    record = json.loads(etcd_cluster.etcdctl("get", f"lease:{lock}", "--print-value-only"))
    assert (record["metadata"]["instanceId"], record["metadata"]["region"]) == (
        "us-east-1",
        "us-east",
    )
    assert winner.wait() == 0
    expected = [
        ETCD_TITLE if line.startswith("DISTRIBUTED LOCK DEMO") else line.replace("15s", "7s")
        for line in SEED_WINNER
        if "[9s]" not in line and "[12s]" not in line
    ]
    assert mask(winner.lines) == expected
    assert winner.err_lines == [] and loser.err_lines == []
    assert etcd_cluster.etcdctl("get", f"lease:{lock}").strip() == ""  # released


def test_metadata_and_renewals_as_the_seed_stores_them(
    runner: Runner, demo_redis: RedisServer
) -> None:
    lock = fresh()
    inst = runner.compete(
        "us-east-1",
        "us-east",
        "--url",
        demo_redis.url,
        "--lock-name",
        lock,
        *timings(lease=2, renew=0.5, work=4),
    )
    acquired = inst.wait_for("Lock acquired")
    fields = demo_redis.cli("HGETALL", f"lease:{lock}").splitlines()
    record = dict(zip(fields[::2], fields[1::2], strict=True))
    short_id = re.search(r"Lease: ([0-9a-f]{8}) ", acquired)
    assert short_id is not None
    assert record["leaseId"].startswith(short_id.group(1))
    assert record["meta_instanceId"] == "us-east-1"
    assert record["meta_region"] == "us-east"
    assert record["meta_hostname"] == os.uname().nodename
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["meta_startTime"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["acquiredAt"])
    assert int(record["fencingToken"]) >= 1
    assert 0 < int(demo_redis.cli("PTTL", f"lease:{lock}")) <= 2000
    assert inst.wait() == 0
    completed = inst.wait_for("Completed")
    renewals = re.search(r"Renewals: (\d+)$", completed)
    assert renewals is not None and int(renewals.group(1)) >= 3  # every 0.5 s for 4 s
    assert inst.lines[-1] == "[us-east-1] Lock released"
    assert demo_redis.cli("EXISTS", f"lease:{lock}").strip() == "0"


def test_wait_acquires_when_the_holder_releases(runner: Runner, store_url: str) -> None:
    lock = fresh()
    winner, waiter = winner_and_loser(runner, store_url, lock, *timings(work=3), "--wait", "30")
    assert winner.wait() == 0
    assert waiter.wait() == 0
    assert any("✓ Lock acquired" in line for line in waiter.lines)
    assert waiter.lines[-1] == "[eu-west-1] Lock released"


# -- signals, loss, errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_releases_the_lease(
    runner: Runner, store_url: str, sig: signal.Signals, code: int
) -> None:
    lock = fresh()
    # A 60 s lease: if it were not released, the next instance could not take it.
    inst = runner.compete(
        "us-east-1",
        "us-east",
        "--url",
        store_url,
        "--lock-name",
        lock,
        *timings(lease=60, renew=20, work=60),
    )
    inst.wait_for("Lock acquired")
    inst.signal(sig)
    assert inst.wait() == code
    assert inst.lines[-1] == "[us-east-1] Interrupted | Lock released"
    assert not any("Completed" in line for line in inst.lines)
    nxt = runner.compete(
        "eu-west-1", "eu-west", "--url", store_url, "--lock-name", lock, *timings(work=1)
    )
    assert nxt.wait() == 0, nxt.output()


def test_sigint_while_waiting_gives_up_without_the_lock(
    runner: Runner, demo_redis: RedisServer
) -> None:
    lock = fresh()
    opts = ["--url", demo_redis.url, "--lock-name", lock]
    holder = runner.compete("us-east-1", "us-east", *opts, *timings(lease=60, renew=20, work=60))
    holder.wait_for("Lock acquired")
    waiter = runner.compete("eu-west-1", "eu-west", *opts, "--wait", "60")
    waiter.wait_for("Attempting lock")
    time.sleep(1.0)  # now inside the wait
    waiter.signal(signal.SIGINT)
    assert waiter.wait() == 130
    assert waiter.lines[-1] == "[eu-west-1] Interrupted"
    assert demo_redis.cli("HGET", f"lease:{lock}", "meta_instanceId").strip() == "us-east-1"
    holder.signal(signal.SIGINT)
    assert holder.wait() == 130
    assert demo_redis.cli("EXISTS", f"lease:{lock}").strip() == "0"


def test_lost_lease_stops_the_work(runner: Runner, demo_redis: RedisServer) -> None:
    lock = fresh()
    inst = runner.compete(
        "us-east-1",
        "us-east",
        "--url",
        demo_redis.url,
        "--lock-name",
        lock,
        *timings(lease=2, renew=0.5, work=60),
    )
    inst.wait_for("Lock acquired")
    assert demo_redis.cli("DEL", f"lease:{lock}").strip() == "1"  # an administrator's mistake
    assert inst.wait() == 4
    assert inst.lines[-1] == "[us-east-1] ✗ Lock lost | Reason: missing"
    assert not any("Completed" in line or "Lock released" in line for line in inst.lines)


def test_unreachable_store_is_a_clear_error(runner: Runner) -> None:
    from demo_helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}"  # nobody listens there
    inst = runner.compete("us-east-1", "us-east", "--url", url, "--work-seconds", "1")
    assert inst.wait() == 1
    err = "\n".join(inst.err_lines)
    assert "[us-east-1] ✗ Error |" in err
    assert "Traceback" not in err


def test_bad_arguments_exit_2(runner: Runner) -> None:
    inst = runner.compete("us-east-1", "us-east", "--work-seconds", "-3")
    assert inst.wait() == 2
    assert "--work-seconds" in "\n".join(inst.err_lines)


# -- store selection ------------------------------------------------------------------------------


def test_without_configuration_the_demo_uses_the_embedded_store(
    runner: Runner, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    sub = repo / "sub"
    sub.mkdir()
    lock = fresh()
    winner = runner.compete("us-east-1", "us-east", "--lock-name", lock, *timings(work=4), cwd=sub)
    winner.wait_for("Lock acquired")
    loser = runner.compete("eu-west-1", "eu-west", "--lock-name", lock, cwd=repo)
    assert loser.wait() == 3  # both found the same store: the repository's
    assert winner.wait() == 0
    db = repo / ".leases" / "leases.db"
    assert db.exists()
    assert (repo / ".leases" / ".gitignore").read_text() == "*\n"
    for inst in (winner, loser):
        assert inst.lines[1] == SQLITE_TITLE
        note = next(line for line in inst.lines if "no configuration found" in line)
        assert f"using the embedded store sqlite://{db}" in note
        assert "for one machine only" in note
        assert inst.lines.index(note) < inst.lines.index("", 1)  # inside the banner


def test_broken_configuration_is_an_error_not_a_fallback(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / "appsettings.Local.json").write_text(
        json.dumps(
            {
                "RedisLeasing": {
                    "ConnectionString": "redis://127.0.0.1:1",
                    "DefaultLeaseDuration": "banana",
                }
            }
        )
    )
    inst = runner.compete("us-east-1", "us-east", "--work-seconds", "1", cwd=tmp_path)
    assert inst.wait() == 1
    assert not (tmp_path / ".leases").exists()
    assert not any("embedded" in line for line in inst.lines)
    assert "Traceback" not in "\n".join(inst.err_lines)


def _load_compete(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("compete_under_test", COMPETE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_configure_delegates_to_the_wizard(monkeypatch: pytest.MonkeyPatch) -> None:
    compete = _load_compete(monkeypatch)
    calls: list[str] = []

    def main(directory: str) -> int:
        calls.append(directory)
        return 5

    monkeypatch.setattr(compete._wizard, "main", main)
    assert compete.main(["--configure", "--instance", "x"]) == 5  # the wizard's failure stops it
    assert calls == ["."]


# -- the four scenarios ---------------------------------------------------------------------------


def test_scenario_1_simultaneous_start(runner: Runner, store_url: str) -> None:
    lock = fresh()
    opts = ["--url", store_url, "--lock-name", lock, *timings(work=4)]
    a = runner.compete("us-east-1", "us-east", *opts)
    b = runner.compete("eu-west-1", "eu-west", *opts)
    codes = sorted([a.wait(), b.wait()])
    assert codes == [0, 3], a.output() + "\n" + b.output()
    loser = a if a.proc.returncode == 3 else b
    winner_name = "eu-west-1 (eu-west)" if loser is a else "us-east-1 (us-east)"
    assert loser.lines[-1].endswith(f"✗ Lock unavailable | Held by: {winner_name}")


def test_scenario_2_takeover_after_a_crash(runner: Runner, store_url: str) -> None:
    lock = fresh()
    first = runner.compete(
        "us-east-1",
        "us-east",
        "--url",
        store_url,
        "--lock-name",
        lock,
        *timings(lease=2, renew=1, work=60),
        "--progress-seconds",
        "1",
    )
    first.wait_for("Working...")
    first.kill()  # SIGKILL: no release
    assert first.proc.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    second = runner.compete(
        "eu-west-1",
        "eu-west",
        "--url",
        store_url,
        "--lock-name",
        lock,
        *timings(lease=2, renew=1, work=1),
        "--wait",
        "30",
    )
    second.wait_for("✓ Lock acquired")
    assert time.monotonic() - t0 < 30
    assert second.wait() == 0
    assert second.lines[-1] == "[eu-west-1] Lock released"


def test_scenario_3_three_regions(runner: Runner, store_url: str) -> None:
    lock = fresh()
    opts = ["--url", store_url, "--lock-name", lock, *timings(work=4)]
    names = [("us-east-1", "us-east"), ("eu-west-1", "eu-west"), ("ap-south-1", "ap-south")]
    insts = [runner.compete(n, r, *opts) for n, r in names]
    codes = [i.wait() for i in insts]
    assert sorted(codes) == [0, 3, 3], "\n".join(i.output() for i in insts)
    winner = names[codes.index(0)]
    for inst, code in zip(insts, codes, strict=True):
        if code == 3:
            assert inst.lines[-1].endswith(f"Held by: {winner[0]} ({winner[1]})")


def test_scenario_4_expiry_after_a_crash(runner: Runner, store_url: str) -> None:
    lock = fresh()
    lease = 6.0  # long enough for the check right after the crash to see it still held
    opts = ["--url", store_url, "--lock-name", lock]
    first = runner.compete("us-east-1", "us-east", *opts, *timings(lease=lease, renew=1, work=60))
    first.wait_for("Lock acquired")
    first.kill()
    early = runner.compete("eu-west-1", "eu-west", *opts, *timings(work=1))
    assert early.wait() == 3
    assert early.lines[-1] == "[eu-west-1] ✗ Lock unavailable | Held by: us-east-1 (us-east)"
    time.sleep(lease + 1)  # the crashed holder's lease expires by itself
    late = runner.compete("eu-west-1", "eu-west", *opts, *timings(work=1))
    assert late.wait() == 0, late.output()


# -- the scenario script --------------------------------------------------------------------------


# The whole script on the embedded store and on Redis (the README's two); each scenario runs on
# every store above. DEMO_ALL_STORES=1 runs the whole script on PostgreSQL and etcd too (~25 s
# each here).
SCRIPT_STORES = ["embedded", "redis"]
if os.environ.get("DEMO_ALL_STORES") == "1":
    SCRIPT_STORES += [s for s in DEMO_STORES if s not in ("sqlite", "redis")]


@pytest.fixture(params=SCRIPT_STORES)
def script_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The script's environment: nothing configured (the embedded store), or DEMO_URL."""
    env = clean_env(PYTHON=sys.executable)
    if request.param != "embedded":
        env["DEMO_URL"] = DEMO_STORES[request.param](request, tmp_path_factory)
    yield env


def test_demo_script_runs_the_five_scenarios(
    runner: Runner, script_env: dict[str, str], tmp_path: Path
) -> None:
    t0 = time.monotonic()
    script = runner.command(["bash", str(DEMO_SCRIPT)], env=script_env)
    assert script.wait(timeout=180) == 0, script.output()
    verdicts = [line for line in script.lines if line.startswith("Scenario ")]
    assert [v.split(":")[0] for v in verdicts] == [
        "Scenario 1 (simultaneous start)",
        "Scenario 2 (takeover)",
        "Scenario 3 (three regions)",
        "Scenario 4 (expiry)",
        "Scenario 5 (leader election)",
    ]
    assert all(": PASS — " in v for v in verdicts), verdicts
    assert verdicts[0].endswith("1 winner, 1 loser")
    assert verdicts[2].endswith("1 winner, 2 losers")
    assert any("✗ Lock unavailable | Held by:" in line for line in script.lines)
    # Every loser names a holder that is one of the demo's instances.
    held_by = [line.split("Held by: ")[1] for line in script.lines if "Held by: " in line]
    assert len(held_by) >= 3  # scenario 1's loser, scenario 3's two, scenario 4's early one
    assert all(re.fullmatch(r"(us-east|eu-west|ap-south)-\d \(\1\)", h) for h in held_by), held_by
    # Scenario 5: a follower took over from the killed leader with a higher term.
    election = re.search(
        r"us-east-5 \(term (\d+)\) killed with SIGKILL; (eu-west|ap-south)-5 elected with term "
        r"(\d+) after [\d.]+s; (eu-west|ap-south)-5 followed it",
        verdicts[4],
    )
    assert election is not None, verdicts[4]
    assert int(election[3]) > int(election[1]) and election[2] != election[4]
    assert time.monotonic() - t0 < 150  # "under a minute" on a quiet machine; generous here
    assert wait_group_gone(script.pid)  # every instance it started is gone
    embedded = "DEMO_URL" not in script_env
    assert any("no configuration found" in line for line in script.lines) == embedded
    assert (tmp_path / ".leases" / "leases.db").exists() == embedded


def test_demo_script_fails_when_a_scenario_fails(runner: Runner, tmp_path: Path) -> None:
    # A store nobody can reach: every instance fails, so no scenario can pass.
    from demo_helpers import free_port

    env = clean_env(PYTHON=sys.executable, DEMO_URL=f"redis://127.0.0.1:{free_port()}")
    script = runner.command(["bash", str(DEMO_SCRIPT)], env=env)
    assert script.wait(timeout=180) != 0
    verdicts = [line for line in script.lines if line.startswith("Scenario ")]
    assert len(verdicts) == 5 and all(": FAIL — " in v for v in verdicts), verdicts
    assert wait_group_gone(script.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_script_stopped_midway_kills_its_instances(
    runner: Runner, tmp_path: Path, sig: signal.Signals
) -> None:
    script = runner.command(["bash", str(DEMO_SCRIPT)], env=clean_env(PYTHON=sys.executable))
    script.wait_for("--- Scenario 2", timeout=120)  # a 60 s instance is running now
    time.sleep(1.0)
    children = subprocess.run(
        ["pgrep", "-s", str(script.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 2  # the script and its instance(s)
    script.signal(sig)
    assert script.wait(timeout=60) != 0
    assert wait_group_gone(script.pid), "an instance outlived the script"
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert group_gone(script.pid)
