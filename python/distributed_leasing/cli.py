"""The ``leasing`` command: ``configure``, ``inspect NAME``, ``list [PREFIX]``,
``release NAME --force``.

The store is the configuration of ``--dir`` (appsettings.json, appsettings.Local.json,
``RedisLeasing__*`` variables) or ``--url``. At a terminal with nothing configured, ``inspect``,
``list`` and ``release`` start the configuration wizard first.

Exit codes: 0 done (``inspect``: the lease is held), 1 error, 2 bad arguments or no terminal for
the wizard, 3 ``inspect``/``release``: the lease is not held.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime

from . import _wizard
from ._client import LeaseClient
from ._native import LeaseError, LeaseInfo

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_HELD = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leasing", description="Distributed leases: inspect, admin.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--dir", default=".", help="configuration directory (default: .)")
        s.add_argument("--url", help="redis://, rediss:// or sqlite:/// URL instead of the config")

    c = sub.add_parser("configure", help="interactive configuration (appsettings.Local.json)")
    c.add_argument("--dir", default=".", help="where to write appsettings.Local.json")
    i = sub.add_parser("inspect", help="who holds a lease")
    i.add_argument("name")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    store_args(i)
    ls = sub.add_parser("list", help="held leases whose name starts with PREFIX")
    ls.add_argument("prefix", nargs="?", default="")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    store_args(ls)
    r = sub.add_parser("release", help="delete a lease whoever holds it (administrators)")
    r.add_argument("name")
    r.add_argument("--force", action="store_true", required=True, help="required: you mean it")
    store_args(r)
    return p


def _as_dict(info: LeaseInfo) -> dict[str, object]:
    acquired: datetime | None = info.acquired_at
    return {
        "name": info.name,
        "leaseId": info.lease_id,
        "acquiredAt": acquired.isoformat() if acquired else None,
        "fencingToken": info.fencing_token,
        "metadata": info.metadata,
        "ttl": info.ttl,
    }


def _show(info: LeaseInfo) -> str:
    who = info.metadata.get("instanceId") or f"lease {info.lease_id[:8]}"
    region = info.metadata.get("region")
    ttl = f"{info.ttl:.1f}s left" if info.ttl is not None else "no expiry"
    token = f" | fencing token {info.fencing_token}" if info.fencing_token is not None else ""
    return f"{info.name} | held by {who}{f' ({region})' if region else ''} | {ttl}{token}"


def _client(args: argparse.Namespace) -> LeaseClient:
    if args.url:
        return LeaseClient.connect_sync(args.url)
    if _wizard.should_run_automatically(args.dir):
        print("Nothing is configured here yet: starting the configuration wizard.", flush=True)
        code = _wizard.main(args.dir)
        if code != _wizard.EXIT_OK:
            raise SystemExit(code)
    return LeaseClient.from_config(args.dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "configure":
        return _wizard.main(args.dir)
    try:
        with _client(args) as client:
            if args.command == "inspect":
                info = client.inspect_sync(args.name)
                if args.json:
                    print(json.dumps(None if info is None else _as_dict(info)))
                else:
                    print(_show(info) if info else f"{args.name} | not held")
                return EXIT_OK if info else EXIT_NOT_HELD
            if args.command == "list":
                leases = client.list_sync(args.prefix)
                if args.json:
                    print(json.dumps([_as_dict(i) for i in leases]))
                else:
                    for info in leases:
                        print(_show(info))
                return EXIT_OK
            existed = client.force_release_sync(args.name)
            print(f"{args.name} | {'released' if existed else 'was not held'}")
            return EXIT_OK if existed else EXIT_NOT_HELD
    except LeaseError as e:
        print(f"leasing: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
