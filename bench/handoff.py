"""Hand-off latency: from ``release()`` returning in one process to ``acquire()`` returning in
another process that was waiting for the lease.

    python bench/handoff.py [--rounds 300] [--api async|sync] [--peers] [--cpu-server N]

Starts its own ``redis-server`` on a free loopback port (stopped at the end, by pid), and two
worker processes: a *holder* that acquires and releases, and a *waiter* that is parked in
``acquire(wait=None)`` when the holder releases. Each round:

1. the waiter starts waiting (it reports just before it calls acquire);
2. the parent sees its subscription on the server (``PUBSUB NUMSUB``), then waits 20 ms more
   (all libraries alike), so the waiter is parked, not mid-attempt;
3. the holder releases, taking ``t_call = time.monotonic_ns()`` just before ``release()`` and
   ``t_release`` when it returns;
4. the waiter takes ``t_acquire = time.monotonic_ns()`` when ``acquire()`` returns;
5. the waiter releases, the holder takes the lease again (untimed).

``CLOCK_MONOTONIC`` is one clock for the whole machine on Linux, so ``t_acquire - t_release`` is
comparable across the two processes. The report gives p50/p90/p99/max of ``t_acquire -
t_release`` over the rounds, and p50/p99 "from call", ``t_acquire - t_call``: how long the
lease is out of use as the applications see it, which does not credit a holder that is slow to
return after its release reply.

With ``--peers`` (and the packages installed) the same hand-off is measured for
python-redis-lock (BLPOP on a signal key) and redis-py's ``Lock`` (polls every 0.1 s by
default; measured with ``sleep=0.001`` too), in the same run, so that ratios mean something on
a machine whose absolute figures move with process placement (see STACK-NOTES.md). Build the
extension with ``--release`` first; this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from _handoff_common import handoffs, pct, serve, serve_async

# -- the redis server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resp(port: int, *args: str) -> object:
    """One command over a raw socket; enough RESP2 for the replies used here."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        out = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s.sendall(out.encode())
        f = s.makefile("rb")

        def read() -> object:
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b"-"):
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise RuntimeError(f"unexpected reply {line!r}")

        return read()


class Server:
    def __init__(self, cpu: str | None) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dl-bench-")
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", self.dir]
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 20
        while True:
            try:
                if resp(self.port, "PING") == "PONG":
                    break
            except OSError:
                pass
            if time.monotonic() > until or self.proc.poll() is not None:
                self.stop()
                sys.exit("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the worker processes ------------------------------------------------------------------------
#
# Each answers the parent through _handoff_common.serve (the protocol is described there).


def worker_ours_async(role: str, url: str, name: str) -> None:
    import distributed_leasing as dl

    async def main() -> None:
        client = await dl.LeaseClient.connect(url)
        await serve_async(
            role, lambda: client.acquire(name, wait=None), lambda lease: lease.release()
        )

    asyncio.run(main())


def worker_ours_sync(role: str, url: str, name: str) -> None:
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)
    serve(role, lambda: client.acquire_sync(name, wait=None), lambda lease: lease.release_sync())


def worker_redis_lock(role: str, url: str, name: str) -> None:
    import redis
    import redis_lock

    conn = redis.Redis.from_url(url)
    lock = redis_lock.Lock(conn, name, expire=30)
    serve(role, lambda: lock.acquire(blocking=True), lambda _: lock.release())


def worker_redis_py(role: str, url: str, name: str, sleep: float) -> None:
    import redis

    conn = redis.Redis.from_url(url)
    lock = conn.lock(name, timeout=30, sleep=sleep)
    serve(role, lambda: lock.acquire(blocking=True), lambda _: lock.release())


WORKERS: dict[str, Callable[[str, str, str], None]] = {
    "ours-async": worker_ours_async,
    "ours-sync": worker_ours_sync,
    "python-redis-lock": worker_redis_lock,
    "redis-py-lock": lambda r, u, n: worker_redis_py(r, u, n, 0.1),
    "redis-py-lock-1ms": lambda r, u, n: worker_redis_py(r, u, n, 0.001),
}


# -- the parent ----------------------------------------------------------------------------------


class Samples:
    """Hand-offs in ms, two ways: from the holder's ``release()`` returning (``after_return``),
    and from its ``release()`` being called (``after_call``: how long the lease is out of use
    for the application, whatever the holder does after its reply)."""

    def __init__(self) -> None:
        self.after_return: list[float] = []
        self.after_call: list[float] = []


def measure(
    kind: str, server: Server, rounds: int, warmup: int, cpus: tuple[str | None, str | None]
) -> Samples:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    ours = kind.startswith("ours")

    def park() -> None:
        if ours:
            # Subscribed (its subscription also lingers from the round before)...
            channel = f"lease:{name}:released"
            until = time.monotonic() + 10
            while resp(server.port, "PUBSUB", "NUMSUB", channel) != [channel, 1]:
                if time.monotonic() > until:
                    raise RuntimeError("the waiter never subscribed")
                time.sleep(0.0005)
        # ...and parked: its attempts (or BLPOP, or poll sleep) are well under way.
        time.sleep(0.02)

    samples = Samples()
    samples.after_call, samples.after_return = handoffs(
        __file__, kind, server.url, name, rounds, warmup, park, cpus
    )
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300, help="timed hand-offs (>= 200)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--api", choices=["async", "sync", "both"], default="both")
    ap.add_argument("--peers", action="store_true", help="also measure peer lock libraries")
    ap.add_argument("--cpu-server", default=None, help="taskset CPU list for redis-server")
    ap.add_argument("--cpu-holder", default=None, help="taskset CPU list for the holder")
    ap.add_argument("--cpu-waiter", default=None, help="taskset CPU list for the waiter")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, role, url, name = args.worker
        WORKERS[kind](role, url, name)
        return
    if args.rounds < 200:
        ap.error("--rounds must be at least 200")
    kinds = {"async": ["ours-async"], "sync": ["ours-sync"], "both": ["ours-async", "ours-sync"]}
    chosen = kinds[args.api]
    if args.peers:
        for peer, module in (
            ("python-redis-lock", "redis_lock"),
            ("redis-py-lock", "redis"),
            ("redis-py-lock-1ms", "redis"),
        ):
            try:
                __import__(module)
            except ImportError:
                print(f"{peer}: not installed, skipped", file=sys.stderr)
            else:
                chosen.append(peer)
    server = Server(args.cpu_server)
    try:
        import distributed_leasing as dl

        print(
            f"distributed-leasing {dl.__version__}, redis-server on 127.0.0.1:{server.port}, "
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; placement: server "
            f"{args.cpu_server or 'any'}, holder {args.cpu_holder or 'any'}, waiter "
            f"{args.cpu_waiter or 'any'}"
        )
        print(
            "hand-off = acquire() returned (waiter) - release() returned (holder); "
            "'from call': - release() called (holder); "
            f"{args.rounds} rounds after {args.warmup} warm-up"
        )
        heads = ("p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "from call p50", "p99")
        print(f"{'':20s} " + " ".join(f"{h:>8s}" for h in heads))
        for kind in chosen:
            cpus = (args.cpu_holder, args.cpu_waiter)
            m = measure(kind, server, args.rounds, args.warmup, cpus)
            s, c = m.after_return, m.after_call
            print(
                f"{kind:20s} {pct(s, 50):8.3f} {pct(s, 90):8.3f} {pct(s, 99):8.3f} "
                f"{max(s):8.3f} {statistics.mean(s):8.3f} {pct(c, 50):13.3f} {pct(c, 99):8.3f}",
                flush=True,
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
