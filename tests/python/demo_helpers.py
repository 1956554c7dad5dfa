"""Helpers of the demo and CLI tests: a private redis-server, demo instances as real processes.

Kept independent of the shared Redis harness: a redis-server on a free loopback port, started
with Popen (so its pid is the server's) and killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
COMPETE = EXAMPLES / "compete.py"
DEMO_SCRIPT = EXAMPLES / "run-competition-demo.sh"

# Generous bounds: these tests check behaviour, not speed.
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0

# The seed's "Demo Output", verbatim (RedisLeaseSample-README.md).
SEED_WINNER = """\
================================================================================
DISTRIBUTED LOCK DEMO - REDIS
Instance ID: us-east-1
Region: us-east
================================================================================

[us-east-1] Attempting lock | Region: us-east
[us-east-1] ✓ Lock acquired | Lease: abc123de | Duration: 15s
[us-east-1] Working... [3s]
[us-east-1] Working... [6s]
[us-east-1] Working... [9s]
[us-east-1] Working... [12s]
[us-east-1] Completed | Duration: 15s | Renewals: 0
[us-east-1] Lock released""".splitlines()

SEED_LOSER = """\
================================================================================
DISTRIBUTED LOCK DEMO - REDIS
Instance ID: eu-west-1
Region: eu-west
================================================================================

[eu-west-1] Attempting lock | Region: eu-west
[eu-west-1] ✗ Lock unavailable | Held by: us-east-1 (us-east)""".splitlines()

SQLITE_TITLE = "DISTRIBUTED LOCK DEMO - SQLITE (embedded, this machine only)"


def mask(lines: Sequence[str]) -> list[str]:
    """Replaces the (random) lease id prefix with the seed's ``abc123de``."""
    return [re.sub(r"Lease: [0-9a-f]{8} ", "Lease: abc123de ", line) for line in lines]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no RedisLeasing__* configuration, UTF-8 output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RedisLeasing__")}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


LEASING = Path(sys.executable).parent / "leasing"


def leasing(
    *args: str, stdin: int | None = subprocess.DEVNULL, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the installed console script."""
    return subprocess.run(
        [str(LEASING), *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=clean_env(),
        cwd=cwd,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def group_gone(pgid: int) -> bool:
    """True when no process is left in the process group (the session) of ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group_gone(pgid):
            return True
        time.sleep(0.05)
    return group_gone(pgid)


# -- Redis ----------------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence."""

    def __init__(self, tmp: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed; these tests need a real Redis")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode} at start")
            try:
                if self.cli("PING").strip() == "PONG":
                    break
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("redis-server did not answer PING")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        """Runs ``redis-cli -p PORT ARGS...`` and returns its output."""
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def demo_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(server.proc.pid, 0)


# -- demo instances -------------------------------------------------------------------------------


class Instance:
    """A process (compete.py, or any command) in its own session, its output read line by line."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self.err_lines), daemon=True
            ),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: object, into: list[str]) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """Waits until a line of stdout contains ``text``; returns that line."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    raise AssertionError(
                        f"{text!r} not printed by {self.argv[2:]} within {timeout}s "
                        f"(exit {self.proc.poll()}):\n" + self.output()
                    )
                self._cond.wait(min(left, 0.2))

    def _reading(self) -> bool:
        return any(t.is_alive() for t in self._readers)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Waits for the exit (and the end of its output); returns the exit status."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.argv[2:]} still running after {timeout}s:\n" + self.output()
            ) from None
        for t in self._readers:
            t.join(timeout=10)
        return code

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to its whole session (a crash), then reaps it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def output(self) -> str:
        with self._cond:
            return "\n".join([*self.lines, "--- stderr:", *self.err_lines])


class Runner:
    """Starts demo instances; at teardown, fails the test if any of them (or a process it
    started) is still alive, after killing it."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[Instance] = []

    def compete(
        self,
        instance: str,
        region: str,
        *options: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Instance:
        argv = [sys.executable, str(COMPETE), "--instance", instance, "--region", region]
        return self.command([*argv, *options], cwd=cwd, env=env)

    def command(
        self, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> Instance:
        inst = Instance(argv, cwd=cwd or self.cwd, env=env or clean_env())
        self.started.append(inst)
        return inst

    def check_none_left(self) -> list[str]:
        left = []
        for inst in self.started:
            if inst.proc.poll() is None or not wait_group_gone(inst.pid, 5.0):
                left.append(" ".join(inst.argv[1:4]))
                inst.kill()
        return left


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    left = r.check_none_left()
    assert not left, f"processes left behind: {left}"


def timings(lease: float = 2, renew: float = 1, work: float = 3) -> list[str]:
    return [
        "--lease-seconds",
        f"{lease:g}",
        "--renew-seconds",
        f"{renew:g}",
        "--work-seconds",
        f"{work:g}",
    ]
