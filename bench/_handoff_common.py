"""The hand-off measurement shared by ``bench/handoff.py``, ``bench/postgres.py`` and
``bench/etcd.py``: two worker processes (a *holder* and a *waiter*) driven over their stdin and
stdout, the rounds that hand a lease from one to the other, and percentiles.

A bench script runs its workers as ``python <script> --worker <kind> <role> <target> <name>``
(the script dispatches ``--worker`` to its own library code), and each worker answers through
:func:`serve` or :func:`serve_async`. One command per line on stdin, one line answered on stdout:

- holder: ``acquire`` -> ``ok``;  ``release`` -> ``<t_call ns> <t_return ns>`` (called, returned)
- waiter: ``wait`` -> ``waiting`` (just before it blocks), then ``<t_acquire ns>``;
  ``release`` -> ``ok``

``CLOCK_MONOTONIC`` is one clock for the whole machine on Linux, so times taken in the two
processes compare. The scripts import this module by its bare name: ``python bench/X.py`` puts
``bench/`` first on ``sys.path``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# -- in the worker processes ---------------------------------------------------------------------


def serve(role: str, acquire: Callable[[], T], release: Callable[[T], object]) -> None:
    """Answers the parent's commands until ``quit`` (or the end of stdin): ``acquire()`` takes
    the lease (blocking until it is ours) and returns what ``release`` needs to give it back."""
    held: T | None = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "acquire":
            held = acquire()
            print("ok", flush=True)
        elif cmd == "wait":
            print("waiting", flush=True)
            held = acquire()
            print(time.monotonic_ns(), flush=True)
        elif cmd == "release":
            assert held is not None
            t0 = time.monotonic_ns()
            release(held)
            t = time.monotonic_ns()
            print(f"{t0} {t}" if role == "holder" else "ok", flush=True)
        elif cmd == "quit":
            break


async def serve_async(
    role: str, acquire: Callable[[], Awaitable[T]], release: Callable[[T], Awaitable[object]]
) -> None:
    """:func:`serve` for an asyncio library (stdin is read blocking, as nothing else runs)."""
    held: T | None = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "acquire":
            held = await acquire()
            print("ok", flush=True)
        elif cmd == "wait":
            print("waiting", flush=True)
            held = await acquire()
            print(time.monotonic_ns(), flush=True)
        elif cmd == "release":
            assert held is not None
            t0 = time.monotonic_ns()
            await release(held)
            t = time.monotonic_ns()
            print(f"{t0} {t}" if role == "holder" else "ok", flush=True)
        elif cmd == "quit":
            break


# -- in the parent -------------------------------------------------------------------------------


class Worker:
    """``script --worker kind role target name`` in a process of its own (under ``taskset -c
    cpu`` when a CPU list is given), talked to line by line."""

    def __init__(
        self, script: str, kind: str, role: str, target: str, name: str, cpu: str | None = None
    ) -> None:
        cmd = [sys.executable, script, "--worker", kind, role, target, name]
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return line.strip()

    def ask(self, cmd: str) -> str:
        self.send(cmd)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def handoffs(
    script: str,
    kind: str,
    target: str,
    name: str,
    rounds: int,
    warmup: int,
    park: Callable[[], None],
    cpus: tuple[str | None, str | None] = (None, None),
) -> tuple[list[float], list[float]]:
    """Hands the lease ``name`` from a holder to a waiting waiter ``warmup + rounds`` times;
    ``park()`` returns once the waiter is blocked. Returns the last ``rounds`` hand-offs in ms,
    measured to the waiter's acquire returning: (from the holder's release() called, from it
    returned)."""
    holder = Worker(script, kind, "holder", target, name, cpus[0])
    waiter = Worker(script, kind, "waiter", target, name, cpus[1])
    from_call: list[float] = []
    from_return: list[float] = []
    try:
        assert holder.ask("acquire") == "ok"
        for i in range(warmup + rounds):
            waiter.send("wait")
            assert waiter.read() == "waiting"
            park()
            t_call, t_return = map(int, holder.ask("release").split())
            t_acquire = int(waiter.read())
            if i >= warmup:
                from_call.append((t_acquire - t_call) / 1e6)
                from_return.append((t_acquire - t_return) / 1e6)
            assert waiter.ask("release") == "ok"
            assert holder.ask("acquire") == "ok"
    finally:
        holder.close()
        waiter.close()
    return from_call, from_return


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]
