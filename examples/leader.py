#!/usr/bin/env python3
"""The leader election demo: every instance campaigns, one leads, the others follow it.

    python examples/leader.py --instance us-east-1
    python examples/leader.py --instance eu-west-1   # in another terminal, and more

The leader works and proclaims its progress (its record's metadata, no new term); every
instance prints the leader as it changes. Kill the leader (Ctrl-C resigns at once; SIGKILL
leaves its lease to expire) and a follower takes over with a higher term.

Store: ``--url`` if given, else the configuration in ``--dir`` (as ``compete.py``), else the
embedded store ``<git repository or current directory>/.leases/leases.db`` (this machine only).

Exit codes: 0 the leader resigned after ``--lead-seconds``, 1 an error (configuration, store),
2 bad arguments, 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM. An interrupted
leader resigns before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import sys
import time
from pathlib import Path

from distributed_leasing import Election, LeaderInfo, LeaseError, Term

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The demo's shared store selection and output helpers.
from compete import (
    BANNER,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    STORE_TITLES,
    open_store,
    positive_seconds,
    run_until_signal,
    say,
    seconds,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="leader.py",
        description="Leader election demo: every instance campaigns; the leader works and "
        "proclaims its progress; the others print who leads, and take over when it is gone.",
    )
    p.add_argument("--instance", default=socket.gethostname(), help="this instance's identity")
    p.add_argument("--region", default="local", help="this instance's region (metadata)")
    p.add_argument("--name", default="leader-demo", help="the election's name (%(default)s)")
    p.add_argument(
        "--lease-seconds", type=positive_seconds, default=None, help="lease duration (30)"
    )
    p.add_argument(
        "--lead-seconds",
        type=positive_seconds,
        default=None,
        help="resign and exit after leading this long (default: lead until stopped)",
    )
    p.add_argument(
        "--progress-seconds",
        type=positive_seconds,
        default=1.0,
        help="interval of the leader's 'Working...' lines and proclaims (1)",
    )
    p.add_argument(
        "--url", help="store URL: redis://host:port, rediss://..., sqlite:///path, postgresql://..."
    )
    p.add_argument(
        "--dir", default=".", help="directory holding appsettings*.json (current directory)"
    )
    return p.parse_args(argv)


def describe(leader: LeaderInfo | None) -> str:
    if leader is None:
        return "none"
    term = "none (.NET origin)" if leader.term is None else str(leader.term)
    text = f"{leader.identity or 'unknown'} | Term: {term}"
    if "progress" in leader.metadata:
        text += f" | Progress: {leader.metadata['progress']}"
    return text


async def follow(tag: str, election: Election) -> None:
    """Prints the leader each time it changes (the leader sees its own proclaims too)."""
    async for leader in election.observe():
        say(f"{tag} Leader: {describe(leader)}")


async def lead(args: argparse.Namespace, tag: str, term: Term) -> str:
    """The leader's work: proclaims its progress every step; returns when its time is up."""
    say(f"{tag} ★ Elected leader | Term: {term.token}")
    start = time.monotonic()
    step = 0
    while args.lead_seconds is None or time.monotonic() - start < args.lead_seconds:
        await asyncio.sleep(args.progress_seconds)
        step += 1
        await term.proclaim({"region": args.region, "progress": str(step)})
        say(f"{tag} Working... [step {step}] | Term: {term.token}")
    say(f"{tag} Resigning | Term: {term.token} | Steps: {step}")
    return f"led term {term.token} for {seconds(round(time.monotonic() - start, 1))}"


async def elect(args: argparse.Namespace, signals: list[str]) -> int:
    tag = f"[{args.instance}]"
    store = await open_store(args)
    client = store.client
    # Renewed every two thirds of the lease (half of it under 3 s).
    election = client.election(
        args.name,
        identity=args.instance,
        duration=args.lease_seconds or 30.0,
        metadata={"region": args.region},
    )
    say(BANNER)
    say(f"LEADER ELECTION DEMO - {STORE_TITLES.get(client.kind, client.kind.upper())}")
    say(f"Instance ID: {args.instance}")
    say(f"Election: {args.name}")
    if store.note:
        say(store.note)
    say(BANNER)
    say()
    say(f"{tag} Campaigning | Region: {args.region}")
    follower = asyncio.create_task(follow(tag, election))
    resigned: list[int] = []  # the term a stop interrupted, if it came while leading
    try:

        async def leading(term: Term) -> str:
            try:
                return await lead(args, tag, term)
            except asyncio.CancelledError:
                if signals:  # stopped while leading (not a loss): run() resigns this term
                    resigned.append(term.token)
                raise

        result = await election.run(leading)
        say(f"{tag} Resigned | {result}")
        return EXIT_OK
    except asyncio.CancelledError:
        if not signals:
            raise
        # run() resigned (when leading) before the cancellation came out.
        say(f"{tag} Interrupted" + (f" | Resigned term {resigned[0]}" if resigned else ""))
        return EXIT_SIGTERM if signals[0] == "SIGTERM" else EXIT_SIGINT
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await client.close()


async def main_async(args: argparse.Namespace) -> int:
    return await run_until_signal(lambda signals: elect(args, signals), args.instance)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, errors="replace")
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except LeaseError as e:
        say(f"[{args.instance}] ✗ Error | {e}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over the signal
        say(f"[{args.instance}] Interrupted")
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
