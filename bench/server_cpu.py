"""Redis-server CPU per acquire+release cycle: this library against redis-py's Lock, in one run.

    python bench/server_cpu.py [--rounds 5] [--cycles 5000] [--placement split|same]
                               [--metadata 0] [--modes ours-async,ours-with,...]
    python bench/server_cpu.py --instructions [--rounds 1] [--cycles 1000]
    python bench/server_cpu.py --instructions --rounds 1 --cycles 1000 \
        --modes ours-sync,redis-py-sync,floor-eval,floor-fcall        # the contracts' floor

Starts a private redis-server on a free loopback port (as ``bench/run.py`` does) and, per round
and per library, runs ``--cycles`` sequential acquire+release cycles on one key between two
snapshots of the server's statistics. Two figures per cycle, medians over ``--rounds`` rounds
(the libraries take turns within each round, so drift of the machine hits them alike):

- **commandstats µs**: ``CONFIG RESETSTAT`` before the cycles, then ``INFO commandstats`` after;
  the ``usec`` of the commands the client itself sends (EVALSHA, EVAL, FCALL; redis-py's Lock
  also SET), summed and divided by the cycles. A script's time includes the commands it runs,
  which are listed in the breakdown but not summed twice. This is the time spent executing
  commands, without the networking around them.
- **INFO cpu µs**: the delta of ``used_cpu_sys + used_cpu_user`` over the cycles, per cycle:
  all of the server's CPU, reading and writing the sockets and its timers included.

Both are wall-clock and CPU-time figures, and on a machine shared with other work they move by
2x from one round to the next. ``--instructions`` runs the server under valgrind's callgrind
instead and counts the **instructions** it executes in ``processCommand`` (the command with
everything it runs, scripts included; no networking, no timers) per cycle: the same whatever
else the machine does, so it shows a change of a few percent (valgrind slows the server ~50x,
so use fewer cycles; the time figures are then meaningless and not printed).

Libraries (``--modes``): ``ours-async`` (``await client.try_acquire()`` + ``await
lease.release()``), ``ours-with`` (``async with client.lease()``), ``ours-sync``
(``try_acquire_sync`` + ``release_sync``), ``redis-py-async`` (``redis.asyncio`` ``Lock``,
``blocking=False``, ``timeout=30``), ``redis-py-sync`` (the same, sync). Our leases are taken at
the defaults (auto-renew on, 30 s). Ratios are ours against redis-py's Lock of the same kind
(async against asyncio, sync against sync), in the same run. ``floor-eval`` and
``floor-fcall`` are an experiment, not the library: redis-py sending the least scripts the
library's contracts allow (see ``FLOOR_ACQUIRE``), against redis-py's sync Lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import distributed_leasing as dl
import redis
import redis.asyncio as aredis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import free_port, redis_server

# The commands a client sends itself. A script's usec already contains its inner commands.
SCRIPT_ENTRIES = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}
TOP_LEVEL = {
    "ours-async": SCRIPT_ENTRIES,
    "ours-with": SCRIPT_ENTRIES,
    "ours-sync": SCRIPT_ENTRIES,
    "redis-py-async": SCRIPT_ENTRIES | {"set"},
    "redis-py-sync": SCRIPT_ENTRIES | {"set"},
    "floor-eval": SCRIPT_ENTRIES,
    "floor-fcall": SCRIPT_ENTRIES,
}
PEER = {
    "ours-async": "redis-py-async",
    "ours-with": "redis-py-async",
    "ours-sync": "redis-py-sync",
    "floor-eval": "redis-py-sync",
    "floor-fcall": "redis-py-sync",
}
LABEL = {
    "ours-async": "ours: try_acquire()+release() (async)",
    "ours-with": "ours: async with lease()",
    "ours-sync": "ours: try_acquire_sync()+release_sync()",
    "redis-py-async": "redis-py asyncio Lock",
    "redis-py-sync": "redis-py sync Lock",
    "floor-eval": "floor (experiment): EVALSHA, no publish, no checks",
    "floor-fcall": "floor (experiment): FCALL, no publish, no checks",
}

# The floor experiment (`--modes floor-eval,floor-fcall`, not the library): the least an
# acquire+release with the contracts the library keeps can cost the server, sent by redis-py.
# The acquire keeps only what a grant must do (PTTL to see the lease free and to tell a refused
# caller the holder's time, INCR of the fencing counter, HSET of the sample's three fields,
# PEXPIRE), the release only the owner check (HGET, DEL); gone are the waiters' PUBLISH, the
# checks that keep foreign data intact, the retry path and the declared counter key. As a
# function library (Redis 7), FCALL saves the script cache lookup and the KEYS/ARGV globals.
FLOOR_ACQUIRE = """local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  return {0, pttl, redis.call('HGETALL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[1] .. ':fence')
redis.call('HSET', KEYS[1], 'leaseId', ARGV[1], 'acquiredAt', ARGV[3], 'fencingToken', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token"""
FLOOR_RELEASE = """local holder = redis.call('HGET', KEYS[1], 'leaseId')
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if holder == false then
  return 0
end
return -1"""


def commandstats(ctl: redis.Redis) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as {command: {calls, usec, ...}} (redis-py parses the lines)."""
    raw: dict[str, Any] = ctl.info("commandstats")
    out: dict[str, dict[str, float]] = {}
    for key, fields in raw.items():
        name = key.removeprefix("cmdstat_")
        out[name] = {k: float(v) for k, v in fields.items() if isinstance(v, (int, float))}
    return out


def server_cpu_us(ctl: redis.Redis) -> float:
    info: dict[str, Any] = ctl.info("cpu")
    return (float(info["used_cpu_sys"]) + float(info["used_cpu_user"])) * 1e6


class Callgrind:
    """A redis-server under callgrind, counting instructions inside ``processCommand`` only."""

    def __init__(self, pid: int, out: str) -> None:
        self.pid = pid
        self.out = out

    def dump(self) -> int:
        """Writes the counts since the last dump (and zeroes them); returns their total."""
        subprocess.run(["callgrind_control", "-d", str(self.pid)], capture_output=True, check=True)
        files = sorted(glob.glob(self.out + ".*"), key=lambda f: int(f.rsplit(".", 1)[1]))
        with open(files[-1]) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        raise RuntimeError(f"no totals in {files[-1]}")


@contextlib.contextmanager
def callgrind_server() -> Iterator[tuple[int, Callgrind]]:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="dl-bench-cg-")
    out = os.path.join(tmp, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
           "--toggle-collect=processCommand", f"--callgrind-out-file={out}",
           "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", tmp]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1000):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield port, Callgrind(proc.pid, out)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


class Measured:
    def __init__(
        self, top: set[str], cycles: int, cpu_us: float, stats: dict[str, Any], instr: float
    ) -> None:
        self.cycles = cycles
        self.cpu = cpu_us / cycles
        self.stats = stats
        self.cmd = sum(s["usec"] for c, s in stats.items() if c in top) / cycles
        self.instr = instr / cycles


def measure(
    ctl: redis.Redis,
    mode: str,
    cycles: int,
    run: Callable[[int], None],
    cg: Callgrind | None,
) -> Measured:
    run(200)  # warm-up: connections open, scripts loaded
    ctl.config_resetstat()
    if cg:
        cg.dump()
    cpu0 = server_cpu_us(ctl)
    run(cycles)
    cpu1 = server_cpu_us(ctl)
    instr = cg.dump() if cg else 0
    stats = commandstats(ctl)
    return Measured(TOP_LEVEL[mode], cycles, cpu1 - cpu0, stats, instr)


async def _loop(cycle: Callable[[], Awaitable[None]], n: int) -> None:
    for _ in range(n):
        await cycle()


def make_runners(
    runner: asyncio.Runner, port: int, metadata: dict[str, str]
) -> dict[str, tuple[Callable[[int], None], Callable[[], None]]]:
    """Per mode: run(n) doing n cycles, and close()."""
    url = f"redis://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:8]
    meta = metadata or None
    out: dict[str, tuple[Callable[[int], None], Callable[[], None]]] = {}

    client: dl.LeaseClient = runner.run(dl.LeaseClient.connect(url))

    async def ours_async() -> None:
        lease = await client.try_acquire(f"cpu-a-{tag}", metadata=meta)
        assert lease is not None
        await lease.release()

    async def ours_with() -> None:
        async with client.lease(f"cpu-w-{tag}", metadata=meta):
            pass

    def close_client() -> None:
        runner.run(client.close())

    out["ours-async"] = (lambda n: runner.run(_loop(ours_async, n)), close_client)
    out["ours-with"] = (lambda n: runner.run(_loop(ours_with, n)), lambda: None)

    sync_client = dl.LeaseClient.connect_sync(url)

    def ours_sync(n: int) -> None:
        for _ in range(n):
            lease = sync_client.try_acquire_sync(f"cpu-s-{tag}", metadata=meta)
            assert lease is not None
            lease.release_sync()

    out["ours-sync"] = (ours_sync, sync_client.close_sync)

    ar = aredis.Redis(port=port)

    async def redispy_async() -> None:
        lock = ar.lock(f"cpu-rpa-{tag}", timeout=30)
        assert await lock.acquire(blocking=False)
        await lock.release()

    out["redis-py-async"] = (
        lambda n: runner.run(_loop(redispy_async, n)),
        lambda: runner.run(ar.aclose()),
    )

    r = redis.Redis(port=port)

    def redispy_sync(n: int) -> None:
        for _ in range(n):
            lock = r.lock(f"cpu-rps-{tag}", timeout=30)
            assert lock.acquire(blocking=False)
            lock.release()

    out["redis-py-sync"] = (redispy_sync, r.close)

    acq_sha = r.script_load(FLOOR_ACQUIRE)
    rel_sha = r.script_load(FLOOR_RELEASE)
    with contextlib.suppress(redis.ResponseError):  # a server without functions (Redis 6)
        functions = [("dl_floor_acquire", FLOOR_ACQUIRE), ("dl_floor_release", FLOOR_RELEASE)]
        r.function_load(
            "#!lua name=dl_floor_experiment\n"
            + "".join(
                f"redis.register_function('{name}', function(KEYS, ARGV)\n{body}\nend)\n"
                for name, body in functions
            ),
            replace=True,
        )

    def floor(n: int, fcall: bool) -> None:
        key = f"lease:cpu-f-{tag}"
        stamp = "2026-11-28T21:00:00.000Z"
        for _ in range(n):
            lease_id = str(uuid.uuid4())
            if fcall:
                token = r.fcall("dl_floor_acquire", 1, key, lease_id, "30000", stamp)
                released = r.fcall("dl_floor_release", 1, key, lease_id)
            else:
                token = r.evalsha(acq_sha, 1, key, lease_id, "30000", stamp)
                released = r.evalsha(rel_sha, 1, key, lease_id)
            assert isinstance(token, int) and token >= 1 and released == 1, (token, released)

    out["floor-eval"] = (lambda n: floor(n, False), lambda: None)
    out["floor-fcall"] = (lambda n: floor(n, True), lambda: None)
    return out


def ratio(medians: dict[str, float], mode: str) -> str:
    """``mode``'s median over its peer's (redis-py's Lock of the same kind), or ''."""
    peer = PEER.get(mode, "")
    return f"{medians[mode] / medians[peer]:.2f}x" if medians.get(peer) else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=5000)
    ap.add_argument("--placement", choices=["same", "split"], default="split")
    ap.add_argument("--metadata", type=int, default=0, help="metadata entries on our leases")
    ap.add_argument("--modes", default=",".join(m for m in LABEL if not m.startswith("floor")))
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count the server's instructions under callgrind (needs valgrind)",
    )
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(LABEL)
    if unknown:
        ap.error(f"unknown modes: {', '.join(sorted(unknown))}")
    metadata = {f"k{i}": f"value-{i}" for i in range(args.metadata)}
    server_cpu = 0 if args.placement == "same" else 1
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    cmd: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    instr: dict[str, list[float]] = {m: [] for m in modes}
    last: dict[str, Measured] = {}
    cg: Callgrind | None = None
    with contextlib.ExitStack() as stack:
        if args.instructions:
            port, cg = stack.enter_context(callgrind_server())
            where = "under callgrind"
        else:
            port = stack.enter_context(redis_server(server_cpu))
            where = (f"placement {args.placement} (benchmark on CPU 0, redis-server on CPU "
                     f"{server_cpu})")  # fmt: skip
        runner = stack.enter_context(asyncio.Runner())
        ctl = redis.Redis(port=port)
        version = ctl.info("server")["redis_version"]
        print(f"redis-server {version}, {where}; {args.rounds} rounds of {args.cycles} "
              f"cycles; metadata entries on our leases: {args.metadata}")  # fmt: skip
        runners = make_runners(runner, port, metadata)
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            for mode in modes:
                m = measure(ctl, mode, args.cycles, runners[mode][0], cg)
                cmd[mode].append(m.cmd)
                cpu[mode].append(m.cpu)
                instr[mode].append(m.instr)
                last[mode] = m
        for mode in modes:
            runners[mode][1]()
        ctl.close()
    took = time.perf_counter() - t0

    if args.instructions:
        med = {m: statistics.median(v) for m, v in instr.items()}
        print(f"\n## Redis-server instructions per acquire+release cycle (processCommand, median"
              f" of {args.rounds} rounds; {took:.0f} s)")  # fmt: skip
        print("| library | instructions/cycle | ratio |")
        print("| --- | --- | --- |")
        for mode in modes:
            print(f"| {LABEL[mode]} | {med[mode]:,.0f} | {ratio(med, mode)} |")
        print("\nRounds: " + "; ".join(
            f"{m}: " + ", ".join(f"{v:,.0f}" for v in instr[m]) for m in modes))  # fmt: skip
        return
    med_cmd = {m: statistics.median(v) for m, v in cmd.items()}
    med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
    print(f"\n## Redis-server CPU per acquire+release cycle (µs, median of {args.rounds} rounds;"
          f" {took:.0f} s)")  # fmt: skip
    print("| library | commandstats µs/cycle | ratio | INFO cpu µs/cycle | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for mode in modes:
        print(f"| {LABEL[mode]} | {med_cmd[mode]:.2f} | {ratio(med_cmd, mode)} "
              f"| {med_cpu[mode]:.2f} | {ratio(med_cpu, mode)} |")  # fmt: skip
    print("\nRounds (commandstats / INFO cpu, µs per cycle):")
    for mode in modes:
        rounds = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(cmd[mode], cpu[mode], strict=True))
        print(f"  {LABEL[mode]:46s} {rounds}")
    print("\nCommands of the last round, per cycle (calls x µs; script commands indented):")
    for mode in modes:
        m = last[mode]
        parts = []
        for name, s in sorted(m.stats.items(), key=lambda kv: -kv[1]["usec"]):
            if name in ("info", "config|resetstat"):
                continue
            inner = "" if name in TOP_LEVEL[mode] else "  "
            parts.append(f"{inner}{name} {s['calls'] / m.cycles:.2f} x {s['usec_per_call']:.2f}")
        print(f"  {LABEL[mode]}:")
        for p in parts:
            print(f"      {p}")


if __name__ == "__main__":
    main()
