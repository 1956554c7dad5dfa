"""Helpers of the fault and contention tests: a fencing-checking resource, figures, processes.

``FencedResource`` is the "resource that checks fencing tokens" of DESIGN.md section 4: a tiny
Lua script in Redis that remembers the highest token it has accepted and refuses any lower one.
It is importable from subprocesses too (they get this directory on ``PYTHONPATH``).

``report(name, **figures)`` prints a measured figure as one ``FIGURE {...}`` line (visible with
``pytest -s``) and appends it to the JSON-lines file named by ``$RELIABILITY_FIGURES`` if set;
``docs/reliability.md`` quotes these figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent

# KEYS[1] the highest token accepted so far, KEYS[2] a list of accepted writes
# ARGV[1] the writer's fencing token, ARGV[2] what it writes
# Returns 1 accepted, 0 refused (a token lower than one already accepted). Equal tokens are
# accepted: the same holder may write several times.
_FENCED_WRITE = """
local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < highest then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""


class FencedResource:
    """A resource that refuses writes carrying a fencing token lower than one it has seen."""

    def __init__(self, redis_url: str, name: str) -> None:
        self._r = redis.Redis.from_url(redis_url)
        self._keys = [f"resource:{name}:highest", f"resource:{name}:writes"]
        self._script = self._r.register_script(_FENCED_WRITE)

    def write(self, token: int, what: str) -> bool:
        return bool(self._script(keys=self._keys, args=[token, what]))

    def writes(self) -> list[str]:
        return [w.decode() for w in self._r.lrange(self._keys[1], 0, -1)]

    def close(self) -> None:
        self._r.close()


def report(name: str, **figures: object) -> None:
    line = json.dumps({"figure": name, **figures}, sort_keys=True)
    print(f"FIGURE {line}", flush=True)
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def subprocess_env() -> dict[str, str]:
    """The environment for a Python subprocess that imports this directory's modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


class Child:
    """A Python subprocess whose stdout lines and stderr are collected by threads (so neither
    pipe can fill up and block it), with stdin open for commands."""

    def __init__(self, code_or_file: str | Path, *args: str) -> None:
        cmd = (
            [sys.executable, str(code_or_file), *args]
            if isinstance(code_or_file, Path)
            else [sys.executable, "-c", code_or_file, *args]
        )
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def read_json(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next stdout line as JSON (fails with the child's stderr if it ends first)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output from pid {self.pid} within {timeout}s; stderr:\n{self.stderr}"
            ) from None
        if line is None:
            self._lines.put(None)
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"pid {self.pid} exited ({self.proc.returncode}) without output; stderr:\n"
                f"{self.stderr}"
            )
        value = json.loads(line)
        assert isinstance(value, dict), line
        return value

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill (SIGCONT first, in case it is stopped) and reap it, if still running."""
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for t in self._threads:
            t.join(timeout=5)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Polls ``cond`` every 10 ms; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start
