"""Benchmark: the etcd store against etcd's own lock API, on the same 3-member cluster.

    python bench/etcd.py [--rounds 3] [--seconds 2] [--handoff-rounds 200] [--warmup 20]

Starts a private 3-member etcd cluster (``tests/python/etcd_server.py``: free 127.0.0.1 ports,
data on ``/dev/shm``), then measures, in one run:

1. one thread (sync) or one task (async), sequential acquire+release cycles on one name, for
   ``--seconds`` per round, median of ``--rounds`` (the libraries take turns within a round):
   ours (``acquire()`` + ``release()``, auto-renew on, the default) and the peer, etcd's lock
   service (``/v3/lock/lock`` + ``/v3/lock/unlock`` of its JSON gateway, what ``etcdctl lock``
   and etcd's Go ``concurrency.Mutex`` do) over one kept-alive HTTP connection, under one
   session lease granted at the start (as a Go ``concurrency.Session`` holds one). Per cycle it
   also gives the client's CPU (process time, all threads).
2. hand-off: a holder process releases while a waiter process is blocked (ours:
   ``acquire_sync(wait=None)``, woken by its watch; the peer: blocked in ``/v3/lock/lock``,
   which etcd answers when the holder's key is deleted). Latency = the waiter's acquire
   returned - the holder's release called (``CLOCK_MONOTONIC``), p50/p99; and p50/p99 from the
   release returned (as ``bench/handoff.py`` measures it on Redis).

Needs the ``etcd-server`` and ``etcd-client`` packages and a ``--release`` build of this
library. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _handoff_common import handoffs, pct, serve

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

from etcd_server import EtcdCluster  # noqa: E402


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Gateway:
    """etcd's JSON gateway on one member, over one kept-alive connection."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:200]!r}")
        out: dict[str, Any] = json.loads(data)
        return out

    def session(self, ttl: int = 60) -> str:
        """A lease for this process's locks, as a Go ``concurrency.Session`` grants one."""
        return str(self.post("/v3/lease/grant", {"TTL": ttl})["ID"])


class PeerLock:
    """etcd's lock service: ``lock`` waits (on the server) until the name is ours."""

    def __init__(self, endpoint: str) -> None:
        self.gw = Gateway(endpoint)
        self.lease = self.gw.session()

    def acquire(self, name: str) -> str:
        return str(self.gw.post("/v3/lock/lock", {"name": b64(name), "lease": self.lease})["key"])

    def release(self, key: str) -> None:
        self.gw.post("/v3/lock/unlock", {"key": key})


# -- cycles ---------------------------------------------------------------------------------------


Sample = tuple[float, float]  # cycles/s, client CPU µs per cycle


def timed(run: Callable[[int], None], seconds: float) -> Sample:
    run(20)  # warm-up: connections open
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        run(10)
        n += 10
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, used / n * 1e6


def make_runs(url: str, endpoint: str, runner: asyncio.Runner) -> dict[str, Callable[[int], None]]:
    import distributed_leasing as dl

    tag = uuid.uuid4().hex[:8]
    sync_client = dl.LeaseClient.connect_sync(url)
    async_client = runner.run(dl.LeaseClient.connect(url))
    peer = PeerLock(endpoint)

    def ours_sync(n: int) -> None:
        for _ in range(n):
            lease = sync_client.acquire_sync(f"b-sync-{tag}")
            lease.release_sync()

    async def ours_async_n(n: int) -> None:
        for _ in range(n):
            lease = await async_client.acquire(f"b-async-{tag}")
            await lease.release()

    def peer_sync(n: int) -> None:
        for _ in range(n):
            peer.release(peer.acquire(f"b-peer-{tag}"))

    return {
        "ours: sync acquire+release": ours_sync,
        "ours: async acquire+release": lambda n: runner.run(ours_async_n(n)),
        "etcd lock service (HTTP, sync)": peer_sync,
    }


# -- hand-off -------------------------------------------------------------------------------------
#
# Workers answer the parent through _handoff_common.serve (the protocol is described there).


def worker_ours(role: str, url: str, name: str) -> None:
    import distributed_leasing as dl

    client = dl.LeaseClient.connect_sync(url)
    serve(role, lambda: client.acquire_sync(name, wait=None), lambda lease: lease.release_sync())


def worker_peer(role: str, endpoint: str, name: str) -> None:
    peer = PeerLock(endpoint)
    serve(role, lambda: peer.acquire(name), peer.release)


def handoff(kind: str, target: str, rounds: int, warmup: int) -> tuple[list[float], list[float]]:
    """Hand-offs in ms: (from the release() call, from its return)."""

    def park() -> None:
        time.sleep(0.05)  # parked: its refused attempt and its watch (or lock wait) are set

    name = f"bench-handoff-{uuid.uuid4().hex[:8]}"
    return handoffs(__file__, kind, target, name, rounds, warmup, park)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--handoff-rounds", type=int, default=200, help="0: no hand-off figures")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, role, target, name = args.worker
        (worker_ours if kind == "ours" else worker_peer)(role, target, name)
        return
    import distributed_leasing as dl

    with EtcdCluster() as etcd, asyncio.Runner() as runner:
        endpoint = etcd.endpoints.split(",")[0]
        print(
            f"distributed-leasing {dl.__version__} ({dl.__file__}); etcd 3-member cluster "
            f"{etcd.endpoints}; {args.rounds} rounds of {args.seconds:g} s, "
            f"{args.handoff_rounds} hand-offs after {args.warmup} warm-up\n"
        )
        runs = make_runs(etcd.url, endpoint, runner)
        rows: dict[str, list[Sample]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, run in runs.items():
                rows[k].append(timed(run, args.seconds))
        print("| library | cycles/s | client µs/cycle |")
        print("| --- | --- | --- |")
        med = {k: [statistics.median(r[i] for r in v) for i in range(2)] for k, v in rows.items()}
        for k, (rate, cpu) in med.items():
            print(f"| {k} | {rate:,.0f} | {cpu:.0f} |")
        peer_rate = med["etcd lock service (HTTP, sync)"][0]
        for k, (rate, _) in med.items():
            if k.startswith("ours"):
                print(f"- {k}: {rate / peer_rate:.2f}x the lock service's rate")
        if args.handoff_rounds:
            print("\n| hand-off | from release() call p50 ms | p99 | from return p50 ms | p99 |")
            print("| --- | --- | --- | --- | --- |")
            for kind, label, target in (
                ("ours", "ours (sync, woken by a watch)", etcd.url),
                ("peer", "etcd lock service (blocked in lock)", endpoint),
            ):
                c, r = handoff(kind, target, args.handoff_rounds, args.warmup)
                print(
                    f"| {label} | {pct(c, 50):.3f} | {pct(c, 99):.3f} | {pct(r, 50):.3f} "
                    f"| {pct(r, 99):.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
