"""One library's scenario-1 loop (acquire+release on one key) for a fixed time, for profiling.

    python bench/s1loop.py {ours-async,ours-sync,redispy-async,redispy-sync} URL SECONDS

Prints ``<cycles> cycles, <cycles/s> cycles/s``. ``bench/profile.sh`` runs it under perf and
strace; ``bench/run.py`` is the benchmark.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid


def main() -> None:
    mode, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    name = f"profile-{uuid.uuid4()}"
    n = 0
    if mode == "ours-async":
        import distributed_leasing as dl

        async def run() -> int:
            client = await dl.LeaseClient.connect(url)
            count = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                lease = await client.acquire(name)
                await lease.release()
                count += 1
            return count

        n = asyncio.run(run())
    elif mode == "ours-sync":
        import distributed_leasing as dl

        client = dl.LeaseClient.connect_sync(url)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            lease = client.acquire_sync(name)
            lease.release_sync()
            n += 1
    elif mode == "redispy-async":
        import redis.asyncio as aredis

        async def run_rp() -> int:
            r = aredis.Redis.from_url(url)
            count = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                lock = r.lock(name, timeout=30)
                assert await lock.acquire(blocking=False)
                await lock.release()
                count += 1
            await r.aclose()
            return count

        n = asyncio.run(run_rp())
    elif mode == "redispy-sync":
        import redis

        r = redis.Redis.from_url(url)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            lock = r.lock(name, timeout=30)
            assert lock.acquire(blocking=False)
            lock.release()
            n += 1
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(f"{n} cycles, {n / seconds:,.0f} cycles/s")


if __name__ == "__main__":
    main()
