"""One contender of the mutual-exclusion test (run as a separate OS process, not by pytest).

    python contention_worker.py STORE_URL LEASE_NAME QUOTA RECORD [--no-lease]

Connects, prints ``{"ready": true}``, waits for a line on stdin (so that all contenders start
together), then loops ``try_acquire`` (one attempt, no wait) on ``LEASE_NAME`` until it has won
``QUOTA`` times. Each win does, under the lease, a deliberately non-atomic read-modify-write of
a shared record ``"<count>:<last token>"``:

1. read the record;
2. check that its own fencing token is greater than the record's last token (else: a token
   regression, i.e. a holder that came later got a smaller token, or two holders at once);
3. write ``count + 1`` and its own token back; release the lease.

If two processes were ever inside at once, one of their writes would overwrite the other's and
the final count would fall short of the total number of wins (a lost update). The record lives in
Redis (``RECORD`` = ``redis://host:port/<key>``, GET then SET) or in a plain file (``RECORD`` =
a path: read, then rewrite).

``--no-lease`` skips the lease (the control run: it must show lost updates, which proves the
check can fail). A record that cannot be parsed (a torn read of the file: two writers at once) is
counted in ``torn_reads``. A refused attempt sleeps a random 0-``$CONTENTION_BACKOFF``
seconds (default 4 ms) before the next, so that the holder gets CPU on a small machine. Prints one
JSON line at the end: wins, attempts, regressions, lost_before_write, torn_reads,
release_refused, errors, tokens, elapsed.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable

import distributed_leasing as dl


class TornRead(Exception):
    pass


def parse(raw: bytes | str | None) -> tuple[int, int]:
    if raw is None or raw in (b"", ""):
        return 0, 0
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        count, last = text.split(":")
        return int(count), int(last)
    except ValueError:
        raise TornRead(text) from None


def record_io(record: str) -> tuple[Callable[[], tuple[int, int]], Callable[[int, int], None]]:
    if record.startswith("redis://"):
        import redis

        base, key = record.rsplit("/", 1)
        r = redis.Redis.from_url(base)

        def read_redis() -> tuple[int, int]:
            return parse(r.get(key))

        def write_redis(count: int, last: int) -> None:
            r.set(key, f"{count}:{last}")

        return read_redis, write_redis

    def read_file() -> tuple[int, int]:
        try:
            with open(record) as f:
                return parse(f.read())
        except FileNotFoundError:
            return 0, 0

    def write_file(count: int, last: int) -> None:
        with open(record, "w") as f:
            f.write(f"{count}:{last}")

    return read_file, write_file


def main() -> None:
    url, name, quota_s, record, *flags = sys.argv[1:]
    quota = int(quota_s)
    use_lease = "--no-lease" not in flags
    backoff = float(os.environ.get("CONTENTION_BACKOFF", "0.004"))
    read, write = record_io(record)
    client = dl.LeaseClient.connect_sync(url, duration=30.0, operation_timeout=10.0)
    wins = attempts = regressions = lost_before_write = torn_reads = errors = 0
    release_refused = 0
    tokens: list[int] = []
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    while wins < quota:
        attempts += 1
        lease = None
        if use_lease:
            try:
                lease = client.try_acquire_sync(name)
            except dl.BackendError:
                # A store that is briefly too busy (SQLite's busy timeout) is not a failure
                # of mutual exclusion; count it and try again.
                errors += 1
                continue
            if lease is None:
                if backoff:
                    time.sleep(random.uniform(0, backoff))
                continue
            token = lease.fencing_token
        else:
            token = 0
        try:
            try:
                count, last = read()
            except TornRead:
                torn_reads += 1
                count, last = 0, 0
            if use_lease and token <= last:
                regressions += 1
            if lease is not None and lease.is_lost:
                lost_before_write += 1
            write(count + 1, token)
        finally:
            # False: the store no longer had our lease when we released it.
            if lease is not None and not lease.release_sync():
                release_refused += 1
        wins += 1
        tokens.append(token)
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "wins": wins,
                "attempts": attempts,
                "regressions": regressions,
                "lost_before_write": lost_before_write,
                "torn_reads": torn_reads,
                "release_refused": release_refused,
                "errors": errors,
                "elapsed": time.monotonic() - started,
                "tokens": tokens,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
