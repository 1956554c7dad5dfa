#!/usr/bin/env python3
"""The distributed lock competition demo: start several instances, exactly one wins the lease.

    python examples/compete.py --instance us-east-1 --region us-east
    python examples/compete.py --instance eu-west-1 --region eu-west   # in another terminal

The winner works for ``--work-seconds`` while its lease is renewed in the background, then
releases it; the others fail at once (or wait up to ``--wait`` seconds) and show who holds it.

Store: ``--url`` if given, else the configuration in ``--dir`` (appsettings.json,
appsettings.Local.json, ``RedisLeasing__*`` environment variables), else, for this demo only,
the embedded store ``<git repository or current directory>/.leases/leases.db``, which locks
the processes of this machine only.

Exit codes: 0 the work completed, 3 the lock was unavailable, 4 the lease was lost during the
work, 1 an error (configuration, store), 2 bad arguments, 130 interrupted by Ctrl-C (SIGINT),
143 stopped by SIGTERM. An interrupted or stopped winner releases its lease before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from distributed_leasing import (
    LeaseClient,
    LeaseError,
    LeaseInfo,
    LeaseLost,
    LeaseUnavailable,
    _wizard,
    is_configured,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3
EXIT_LOST = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

BANNER = "=" * 80
STORE_TITLES = {
    "redis": "REDIS",
    "redis-cluster": "REDIS CLUSTER",
    "sqlite": "SQLITE (embedded, this machine only)",
    "etcd": "ETCD",
}


def say(line: str = "", *, err: bool = False) -> None:
    """One line, flushed at once (other programs read this output from pipes)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def seconds(value: float) -> str:
    """``15s``, ``2.5s``: whole numbers without a decimal point, as the sample prints them."""
    return f"{value:g}s"


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or a positive number of seconds")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compete.py",
        description="Distributed lock competition demo: the first instance to take the lease "
        "works, the others fail gracefully and show who holds it.",
    )
    p.add_argument("--instance", default=socket.gethostname(), help="this instance's id")
    p.add_argument("--region", default="local", help="this instance's region")
    p.add_argument(
        "--lock-name", default="critical-section-lock", help="the lease name (%(default)s)"
    )
    p.add_argument("--work-seconds", type=positive_seconds, default=15.0, help="work duration (15)")
    p.add_argument(
        "--lease-seconds",
        type=positive_seconds,
        default=None,
        help="lease duration (default: configured, else 30)",
    )
    p.add_argument(
        "--renew-seconds",
        type=positive_seconds,
        default=None,
        help="renewal interval (default: configured, else two thirds of the lease)",
    )
    p.add_argument(
        "--wait",
        type=non_negative_seconds,
        default=0.0,
        help="seconds to wait for the lock when it is held (0: fail at once)",
    )
    p.add_argument(
        "--progress-seconds",
        type=positive_seconds,
        default=3.0,
        help="interval of the 'Working...' lines (3)",
    )
    p.add_argument(
        "--url", help="store URL: redis://host:port, rediss://..., sqlite:///path, postgresql://..."
    )
    p.add_argument(
        "--dir", default=".", help="directory holding appsettings*.json (current directory)"
    )
    p.add_argument(
        "--configure",
        action="store_true",
        help="run the configuration wizard (writes appsettings.Local.json), then the demo",
    )
    return p.parse_args(argv)


# -- store selection ---------------------------------------------------------------------------


def embedded_db_path(start: Path) -> Path:
    """``<git repository root or start>/.leases/leases.db``."""
    start = start.resolve()
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d / ".leases" / "leases.db"
    return start / ".leases" / "leases.db"


@dataclass
class Store:
    client: LeaseClient
    note: str | None  # shown in the banner when the demo chose the embedded store itself


def prepare_embedded(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    ignore = db.parent / ".gitignore"
    if not ignore.exists():
        # The lease database is this machine's state: keep it out of version control.
        ignore.write_text("*\n")


async def open_store(args: argparse.Namespace) -> Store:
    if args.url:
        return Store(await LeaseClient.connect(args.url), None)
    # A configuration that exists but does not load is an error (ConfigError), never a reason
    # to fall back silently to a store of this machine only.
    if is_configured(args.dir):
        return Store(await asyncio.to_thread(LeaseClient.from_config, args.dir), None)
    # Nothing is configured: only this demo falls back to a store of this machine.
    db = embedded_db_path(Path.cwd())
    prepare_embedded(db)
    url = f"sqlite://{db}"
    note = (
        f"Store: no configuration found: using the embedded store {url} "
        "(for one machine only; configure Redis with --configure or pass --url)"
    )
    return Store(await LeaseClient.connect(url), note)


def run_wizard(directory: str) -> int:
    return _wizard.main(directory)


# -- the demo ----------------------------------------------------------------------------------


def holder_text(holder: LeaseInfo | None) -> str:
    if holder is None:
        return "unknown (the lease ended while we looked)"
    return holder.holder_label() or f"lease {holder.lease_id[:8]}"


async def work(tag: str, total: float, step: float) -> None:
    start = time.monotonic()
    tick = 1
    while tick * step < total - 1e-9:
        await asyncio.sleep(max(0.0, start + tick * step - time.monotonic()))
        say(f"{tag} Working... [{seconds(round(tick * step, 3))}]")
        tick += 1
    await asyncio.sleep(max(0.0, start + total - time.monotonic()))


async def compete(args: argparse.Namespace, signals: list[str]) -> int:
    tag = f"[{args.instance}]"
    store = await open_store(args)
    client = store.client
    say(BANNER)
    say(f"DISTRIBUTED LOCK DEMO - {STORE_TITLES.get(client.kind, client.kind.upper())}")
    say(f"Instance ID: {args.instance}")
    say(f"Region: {args.region}")
    if store.note:
        say(store.note)
    say(BANNER)
    say()
    say(f"{tag} Attempting lock | Region: {args.region}")
    metadata = {
        "instanceId": args.instance,
        "region": args.region,
        "hostname": socket.gethostname(),
        "startTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    acquired = False
    try:
        async with client.lease(
            args.lock_name,
            duration=args.lease_seconds,
            renew_interval=args.renew_seconds,
            wait=args.wait,
            metadata=metadata,
            on_lost="cancel",
        ) as lease:
            acquired = True
            say(
                f"{tag} ✓ Lock acquired | Lease: {lease.lease_id[:8]} "
                f"| Duration: {seconds(args.work_seconds)}"
            )
            await work(tag, args.work_seconds, args.progress_seconds)
            done = f"Completed | Duration: {seconds(args.work_seconds)}"
            say(f"{tag} {done} | Renewals: {lease.renewals}")
        say(f"{tag} Lock released")
        return EXIT_OK
    except LeaseUnavailable as e:
        say(f"{tag} ✗ Lock unavailable | Held by: {holder_text(e.holder)}")
        return EXIT_UNAVAILABLE
    except LeaseLost as e:
        say(f"{tag} ✗ Lock lost | Reason: {getattr(e, 'reason', None) or e}")
        say(f"{tag} Work stopped: it is no longer protected by the lock", err=True)
        return EXIT_LOST
    except asyncio.CancelledError:
        if not signals:
            raise
        # The lease context released the lease (shielded) before the cancellation came out.
        say(f"{tag} Interrupted | Lock released" if acquired else f"{tag} Interrupted")
        return EXIT_SIGTERM if signals[0] == "SIGTERM" else EXIT_SIGINT


async def run_until_signal(run: Callable[[list[str]], Awaitable[int]], instance: str) -> int:
    """Runs ``run(signals)`` with SIGINT and SIGTERM cancelling it (once; ``signals`` names the
    one received), and returns its exit code, or that of the signal if it came out cancelled.
    Shared by this demo and examples/leader.py."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if not signals:
            signals.append(sig.name)
            task.cancel(msg=f"{sig.name} received")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await run(signals)
    except asyncio.CancelledError:
        if not signals:
            raise
        say(f"[{instance}] Interrupted")
        return EXIT_SIGTERM if signals[0] == "SIGTERM" else EXIT_SIGINT
    finally:
        if signals:
            task.uncancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def main_async(args: argparse.Namespace) -> int:
    return await run_until_signal(lambda signals: compete(args, signals), args.instance)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, errors="replace")
    args = parse_args(argv)
    # --configure, or a first run at a terminal with nothing configured: the wizard first.
    if args.configure or (not args.url and _wizard.should_run_automatically(args.dir)):
        code = run_wizard(args.dir)
        if code != EXIT_OK:
            return code
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
