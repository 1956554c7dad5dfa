"""Client instructions per cycle, counted by valgrind: a figure the machine's load cannot move.

    python bench/instructions.py --python before=/tmp/venv-old/bin/python \
        --python after=.venv/bin/python [--scenarios sync,tasks64,with] [--cycles 1000]

On a shared 2-core machine the CPU time per cycle moves by 10-40% from run to run (see
bench/wheels.py's rounds); the user-space instructions a cycle executes do not. Each scenario
runs under `valgrind --tool=callgrind` twice, with a few cycles and with `--cycles` more; the
difference of the two totals over `--cycles` is the cost of one cycle, start-up and import left
out. Every thread of the client counts (the Python thread, the runtime's workers); the kernel's
work (system calls, context switches) does not, nor the server's. Needs valgrind and
redis-server; one private server on a free loopback port.

Scenarios (one process per count; auto-renew on, the default):
- `sync`: one thread, `acquire_sync` + `release_sync` on one name
- `tasks64`: 64 asyncio tasks on one client, each `acquire` + `release` on its own name
  (`--cycles` in all, split between the tasks)
- `with`: one task, `async with client.lease(name)`
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import redis_server

CHILD = r"""
import asyncio, sys, uuid
import distributed_leasing as dl
scenario, url, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
name = f"i-{uuid.uuid4()}"
if scenario == "sync":
    release = "release_sync" if hasattr(dl.Lease, "release_sync") else "release_blocking"
    client = dl.LeaseClient.connect_sync(url)
    for _ in range(cycles):
        getattr(client.acquire_sync(name), release)()
    client.close_sync()
else:
    async def main():
        client = await dl.LeaseClient.connect(url)
        if scenario == "with":
            for _ in range(cycles):
                async with client.lease(name):
                    pass
        else:
            async def worker(i):
                for _ in range(cycles // 64):
                    lease = await client.acquire(f"{name}-{i}")
                    await lease.release()
            await asyncio.gather(*(worker(i) for i in range(64)))
        await client.close()
    asyncio.run(main())
"""


def count(python: str, scenario: str, url: str, cycles: int) -> int:
    """Instructions of one run of `cycles` cycles, start-up included."""
    with tempfile.TemporaryDirectory(prefix="dl-cg-") as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               python, "-c", CHILD, scenario, url, str(cycles)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd="/")
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or not found:
            raise SystemExit(f"{python} {scenario}: exit {done.returncode}\n{done.stderr[-2000:]}")
        return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--python", action="append", default=[], help="LABEL=PATH, one per build")
    ap.add_argument("--scenarios", default="sync,tasks64,with")
    ap.add_argument("--cycles", type=int, default=1000, help="cycles counted (after 128 more)")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    builds = [tuple(p.split("=", 1)) for p in args.python] or [("installed", sys.executable)]
    base = 128  # a multiple of 64, so that every task of `tasks64` runs whole cycles
    cycles = max(64, args.cycles // 64 * 64)
    rows = []
    with redis_server(None) as port:
        url = f"redis://127.0.0.1:{port}"
        for scenario in [s for s in args.scenarios.split(",") if s]:
            per = []
            for label, python in builds:
                low = count(python, scenario, url, base)
                high = count(python, scenario, url, base + cycles)
                per.append((high - low) / cycles)
                print(f"{scenario} {label}: {per[-1]:,.0f}", file=sys.stderr)
            rows.append((scenario, per))
    print(f"builds: {', '.join(f'{label}={path}' for label, path in builds)}; {cycles} cycles")
    print("| scenario | " + " | ".join(b[0] for b in builds) + " | ratio to first |")
    print("| --- | " + " | ".join("---" for _ in builds) + " | --- |")
    for scenario, per in rows:
        ratios = " / ".join(f"{p / per[0]:.3f}" for p in per[1:])
        print(f"| {scenario} | " + " | ".join(f"{p:,.0f}" for p in per) + f" | {ratios} |")


if __name__ == "__main__":
    main()
