"""Benchmark: the PostgreSQL store against PostgreSQL's own advisory locks, on the same server.

    python bench/postgres.py [--rounds 3] [--seconds 2] [--handoff-rounds 200] [--warmup 20]
                             [--durable] [--skip-handoff]

Starts a private PostgreSQL (``tests/python/postgres_server.py``: ``initdb`` in a temporary
directory, a free 127.0.0.1 port, run as ``dl-postgres`` when we are root; ``fsync=off`` as in
the tests, or ``fsync=on`` with ``--durable``), then measures, in one run:

1. one task (async) or one thread (sync), sequential acquire+release cycles on one name, for
   ``--seconds`` per round, median of ``--rounds``: ours (``acquire()`` + ``release()``, with
   auto-renew on, the default) and the peer, ``pg_try_advisory_lock``/``pg_advisory_unlock``
   through psycopg 3 (autocommit, statements prepared by psycopg after 5 uses). Per cycle it
   also gives the client's CPU (process time, all threads), the server's CPU (the backends'
   utime+stime from ``/proc``) and the write-ahead log written (``pg_current_wal_lsn``).
2. hand-off: a holder process releases while a waiter process is blocked (ours:
   ``acquire(wait=None)``, woken by LISTEN/NOTIFY; the peer: ``pg_advisory_lock``, woken by the
   server's lock manager). Latency = the waiter's ``acquire`` returned - the holder's
   ``release`` called (``CLOCK_MONOTONIC``, one clock for the machine), p50/p90/p99; and the
   p50 from ``release`` returned (as ``bench/handoff.py`` measures it on Redis).

Needs psycopg (``pip install "psycopg[binary]"``) and a ``--release`` build of this library.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _handoff_common import handoffs, pct, serve, serve_async

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

from postgres_server import PostgresServer  # noqa: E402

PEER_APP = "bench-advisory"
OUR_APP = "distributed-leasing"
TICK = os.sysconf("SC_CLK_TCK")


def advisory_key(name: str) -> int:
    return zlib.crc32(name.encode())


# -- measurements of the server -------------------------------------------------------------------


class Admin:
    """A superuser connection of the benchmark itself (not measured)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, application_name="bench-admin")

    def one(self, sql: str, *args: Any) -> Any:
        row = self.conn.execute(sql, args).fetchone()
        assert row is not None
        return row[0]

    def pids(self, app: str) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
        return [r[0] for r in rows]

    def wal(self) -> int:
        return int(self.one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"))

    def parked(self) -> int:
        """Advisory-lock requests waiting (not granted)."""
        return int(
            self.one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        )


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


class Sample:
    """One round of one library: cycles/s and the costs per cycle."""

    def __init__(self, cycles: int, wall: float, client: float, server: float, wal: int) -> None:
        self.rate = cycles / wall
        self.client_us = client / cycles * 1e6
        self.server_us = server / cycles * 1e6
        self.wal_bytes = wal / cycles


class Meter:
    """Starts counting at creation; ``stop(cycles)`` gives the round's :class:`Sample`."""

    def __init__(self, admin: Admin, app: str) -> None:
        self.admin = admin
        self.pids = admin.pids(app)
        assert self.pids, f"no backend of {app!r}"
        self.server = cpu_seconds(self.pids)
        self.wal = admin.wal()
        self.client = time.process_time()
        self.wall = time.monotonic()

    def stop(self, cycles: int) -> Sample:
        wall = time.monotonic() - self.wall
        client = time.process_time() - self.client
        server = cpu_seconds(self.pids) - self.server
        return Sample(cycles, wall, client, server, self.admin.wal() - self.wal)


# -- 1. cycles -------------------------------------------------------------------------------------


WARMUP_CYCLES = 200


def cycles_sync(cycle: Callable[[], None], seconds: float, meter: Callable[[], Meter]) -> Sample:
    for _ in range(WARMUP_CYCLES):  # connections opened, statements prepared
        cycle()
    m = meter()
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(50):
            cycle()
        n += 50
    return m.stop(n)


async def cycles_async(
    cycle: Callable[[], Awaitable[None]], seconds: float, meter: Callable[[], Meter]
) -> Sample:
    for _ in range(WARMUP_CYCLES):
        await cycle()
    m = meter()
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(50):
            await cycle()
        n += 50
    return m.stop(n)


def ours_sync(url: str, admin: Admin, seconds: float) -> Sample:
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)
    name = f"bench-{uuid.uuid4().hex[:8]}"

    def cycle() -> None:
        client.acquire_sync(name).release_sync()

    try:
        return cycles_sync(cycle, seconds, lambda: Meter(admin, OUR_APP))
    finally:
        client.close_sync()


def ours_async(url: str, admin: Admin, seconds: float) -> Sample:
    import distributed_leasing as dl

    async def main() -> Sample:
        client = await dl.LeaseClient.connect(url)
        name = f"bench-{uuid.uuid4().hex[:8]}"

        async def cycle() -> None:
            lease = await client.acquire(name)
            await lease.release()

        sample = await cycles_async(cycle, seconds, lambda: Meter(admin, OUR_APP))
        await client.close()
        return sample

    return asyncio.run(main())


def peer_sync(url: str, admin: Admin, seconds: float) -> Sample:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, application_name=PEER_APP)
    key = advisory_key(f"bench-{uuid.uuid4().hex[:8]}")

    def cycle() -> None:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        assert row is not None and row[0] is True
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    try:
        return cycles_sync(cycle, seconds, lambda: Meter(admin, PEER_APP))
    finally:
        conn.close()


def peer_async(url: str, admin: Admin, seconds: float) -> Sample:
    import psycopg

    async def main() -> Sample:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name=PEER_APP
        )
        key = advisory_key(f"bench-{uuid.uuid4().hex[:8]}")

        async def cycle() -> None:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            row = await cur.fetchone()
            assert row is not None and row[0] is True
            await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

        sample = await cycles_async(cycle, seconds, lambda: Meter(admin, PEER_APP))
        await conn.close()
        return sample

    return asyncio.run(main())


CYCLES: dict[str, Callable[[str, Admin, float], Sample]] = {
    "ours async: acquire() + release()": ours_async,
    "peer async: psycopg advisory lock": peer_async,
    "ours sync: acquire_sync() + release_sync()": ours_sync,
    "peer sync: psycopg advisory lock": peer_sync,
}


# -- 2. hand-off: worker processes -----------------------------------------------------------------
#
# Each answers the parent through _handoff_common.serve (the protocol is described there).


def worker_ours_async(role: str, url: str, name: str) -> None:
    import distributed_leasing as dl

    async def main() -> None:
        client = await dl.LeaseClient.connect(url)

        async def release(lease: dl.Lease) -> None:
            assert await lease.release()

        await serve_async(role, lambda: client.acquire(name, wait=None), release)
        await client.close()

    asyncio.run(main())


def worker_ours_sync(role: str, url: str, name: str) -> None:
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)

    def release(lease: dl.Lease) -> None:
        assert lease.release_sync()

    serve(role, lambda: client.acquire_sync(name, wait=None), release)
    client.close_sync()


def worker_peer_sync(role: str, url: str, name: str) -> None:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, application_name=PEER_APP)
    key = advisory_key(name)

    def release(_: object) -> None:
        row = conn.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()
        assert row is not None and row[0] is True

    serve(role, lambda: conn.execute("SELECT pg_advisory_lock(%s)", (key,)), release)
    conn.close()


def worker_peer_async(role: str, url: str, name: str) -> None:
    import psycopg

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name=PEER_APP
        )
        key = advisory_key(name)

        async def release(_: object) -> None:
            cur = await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            row = await cur.fetchone()
            assert row is not None and row[0] is True

        await serve_async(
            role, lambda: conn.execute("SELECT pg_advisory_lock(%s)", (key,)), release
        )
        await conn.close()

    asyncio.run(main())


WORKERS: dict[str, Callable[[str, str, str], None]] = {
    "ours async: acquire(wait=None)": worker_ours_async,
    "peer async: psycopg pg_advisory_lock": worker_peer_async,
    "ours sync: acquire_sync(wait=None)": worker_ours_sync,
    "peer sync: psycopg pg_advisory_lock": worker_peer_sync,
}


def handoff(
    kind: str, url: str, admin: Admin, rounds: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Hand-off times in ms: from release() called, and from release() returned."""

    def park() -> None:
        if kind.startswith("peer"):
            until = time.monotonic() + 10
            while admin.parked() < 1:
                if time.monotonic() > until:
                    raise RuntimeError("the waiter never blocked")
                time.sleep(0.0005)
        # Parked, all libraries alike: ours has made its first attempt and listens.
        time.sleep(0.03)

    name = f"bench-{uuid.uuid4().hex[:8]}"
    return handoffs(__file__, kind, url, name, rounds, warmup, park)


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--handoff-rounds", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--durable", action="store_true", help="fsync=on (default: off, as tests)")
    ap.add_argument("--skip-handoff", action="store_true")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, role, url, name = args.worker
        WORKERS[kind](role, url, name)
        return

    import distributed_leasing as dl
    import psycopg

    extra = ["-c", "fsync=on"] if args.durable else []
    with PostgresServer(extra_args=extra) as pg:
        admin = Admin(pg.url)
        version = admin.one("SHOW server_version")
        print(
            f"distributed-leasing {dl.__version__}, psycopg {psycopg.__version__} "
            f"({psycopg.pq.__impl__}), PostgreSQL {version} on 127.0.0.1:{pg.port} "
            f"(fsync={'on' if args.durable else 'off'}), python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs"
        )
        print(
            f"\n1. one task/thread, acquire+release on one name: median of {args.rounds} "
            f"rounds of {args.seconds:g} s"
        )
        samples: dict[str, list[Sample]] = {k: [] for k in CYCLES}
        for _ in range(args.rounds):
            for label, fn in CYCLES.items():  # interleaved: load drifts hit all alike
                samples[label].append(fn(pg.url, admin, args.seconds))
        heads = ("cycles/s", "ours/peer", "client µs", "server µs", "WAL B/cycle")
        print(f"{'':44s} " + " ".join(f"{h:>11s}" for h in heads) + "   [rounds]")
        rate = {k: statistics.median(s.rate for s in ss) for k, ss in samples.items()}
        for label, ss in samples.items():
            api = label.split(":")[0].split()[1]  # async | sync
            peer = rate[next(k for k in CYCLES if k.startswith(f"peer {api}:"))]
            ratio = f"{rate[label] / peer:.2f}x" if label.startswith("ours") else ""
            print(
                f"{label:44s} {rate[label]:11,.0f} {ratio:>11s} "
                f"{statistics.median(s.client_us for s in ss):11.1f} "
                f"{statistics.median(s.server_us for s in ss):11.1f} "
                f"{statistics.median(s.wal_bytes for s in ss):11.0f}   "
                f"[{', '.join(f'{s.rate:,.0f}' for s in ss)}]",
                flush=True,
            )
        if args.skip_handoff:
            return
        print(
            f"\n2. hand-off to a blocked waiter (two processes), {args.handoff_rounds} rounds "
            f"after {args.warmup} warm-up: the waiter's acquire returned minus the holder's "
            "release() called (p50, p90, p99), and minus release() returned (p50; can be "
            "negative: the server may answer the waiter first)"
        )
        heads2 = ("p50 ms", "p90 ms", "p99 ms", "ret. p50")
        print(f"{'':44s} " + " ".join(f"{h:>8s}" for h in heads2))
        p50: dict[str, float] = {}
        for kind in WORKERS:
            called, returned = handoff(kind, pg.url, admin, args.handoff_rounds, args.warmup)
            p50[kind] = pct(called, 50)
            print(
                f"{kind:44s} {pct(called, 50):8.3f} {pct(called, 90):8.3f} "
                f"{pct(called, 99):8.3f} {pct(returned, 50):8.3f}",
                flush=True,
            )
        for kind in WORKERS:
            if kind.startswith("ours"):
                api = kind.split(":")[0].split()[1]
                other = next(k for k in WORKERS if k.startswith(f"peer {api}:"))
                print(
                    f"  {kind.split(':')[0]} p50 / {other.split(':')[0]} p50: "
                    f"{p50[kind] / p50[other]:.2f}x"
                )
        admin.conn.close()


if __name__ == "__main__":
    main()
