"""The ``leasing`` command: look at leases, and release a stuck one (administrators).

    leasing inspect critical-section-lock        who holds it, since when, for how long more
    leasing list [PREFIX]                        every held lease (a table)
    leasing leader NAME [--watch]                who leads election NAME: identity, term,
                                                 time left, metadata (--watch: each change)
    leasing release NAME --force [--yes]         delete a lease (only the holder shown and
                                                 confirmed: if it changed hands, nothing)
    leasing semaphore inspect NAME               a semaphore's limit and each permit's holder
    leasing semaphore list [PREFIX]              every semaphore: name, limit, permits held
    leasing semaphore set-limit NAME N [--yes]   store another limit (lowering evicts nobody)
    leasing semaphore release NAME --slot I --force [--yes]
                                                 delete one permit (only the holder shown
                                                 and confirmed: if it changed, nothing)
    leasing configure                            the configuration wizard
    leasing --version                            the installed version

The store is ``--url`` (``redis://host:port``, ``rediss://...``, ``sqlite:///path/leases.db``)
or the configuration in ``--dir`` (appsettings.json, appsettings.Local.json, ``RedisLeasing__*``
environment variables). ``--json`` prints machine-readable output for inspect, list, leader and
every semaphore command.

Exit codes: 0 done (also "not held", "no leader", and Ctrl-C ending ``leader --watch``), 1 an
error (store, configuration), 2 bad usage or a refused release, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from . import _wizard
from ._client import ConfigWarning, LeaseClient, is_configured
from ._election import LeaderInfo, iso_time
from ._native import ConfigError, LeaseError, LeaseInfo, LeaseUnavailable, SemaphoreInfo
from ._native import __version__ as _version

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

NO_FENCING = "none (written by the .NET origin)"
ORPHAN_NOTE = (
    "an orphan of the .NET origin: its metadata left without a lease and without a TTL; "
    "nobody holds it, the next acquire takes it over, release --force deletes it"
)


class _Refused(Exception):
    """A refusal to act, with the reason for the user (exit 2)."""


# -- formatting ---------------------------------------------------------------------------------


def _safe(text: str) -> str:
    """Someone else's text (metadata, a lease name or id) for a terminal: as is when every
    character is printable, else as a Python string literal with escapes (``'a\\nb'``), so that a
    newline, a carriage return, an escape sequence or a bidi override in it can neither forge
    lines nor hide or reorder text. A shown value that starts with a quote is always such a
    literal (a value that itself starts with a quote is shown as one too). ``--json`` output
    stays exact."""
    if text.isprintable() and not text.startswith(("'", '"')):
        return text
    return repr(text)


def _holder(info: LeaseInfo) -> str:
    """The holder for people: its instanceId (and region), escaped (see ``_safe``); for an
    orphan, whoever left it."""
    if info.orphan:
        return f"nobody (an orphan left by {_left_by(info)})"
    return _left_by(info)


def _shown(info: LeaseInfo) -> str:
    """The holder and its lease id, or the orphan, for a message about a changed hand."""
    if info.orphan:
        return f"the orphan left by {_left_by(info)}"
    return f"{_holder(info)} (lease id {_safe(info.lease_id)})"


def _left_by(info: LeaseInfo) -> str:
    return info.holder_label(_safe) or "unknown (no instanceId in its metadata)"


def _time(t: datetime | None) -> str:
    return "unknown" if t is None else iso_time(t)


def _ttl(ttl: float | None) -> str:
    return "no expiry" if ttl is None else f"{ttl:.1f}s"


def _fencing(token: int | None) -> str:
    return NO_FENCING if token is None else str(token)


def _as_json(info: LeaseInfo) -> dict[str, Any]:
    slot: dict[str, Any] = {} if info.slot is None else {"slot": info.slot}
    return {
        "name": info.name,
        **slot,
        "holder": None if info.orphan else info.holder_label(),
        "orphan": info.orphan,
        "lease_id": info.lease_id,
        "acquired_at": None if info.acquired_at is None else _time(info.acquired_at),
        "fencing_token": info.fencing_token,
        "ttl": info.ttl,
        "metadata": dict(sorted(info.metadata.items())),
    }


def _print_info(info: LeaseInfo) -> None:
    rows = [
        ("Lease", _safe(info.name)),
        ("Holder", _holder(info)),
        ("Lease ID", "none" if info.orphan else _safe(info.lease_id)),
        ("Acquired at", _time(info.acquired_at)),
        ("Fencing token", _fencing(info.fencing_token)),
        ("TTL", _ttl(info.ttl)),
    ]
    for label, value in rows:
        print(f"{label + ':':<15} {value}")
    if info.metadata:
        print("Metadata:")
        entries = [(_safe(k), _safe(v)) for k, v in sorted(info.metadata.items())]
        width = max(len(k) for k, _ in entries) + 1
        for key, value in entries:
            print(f"  {key + ':':<{width}} {value}")
    else:
        print("Metadata:       (none)")
    if info.orphan:
        print(f"({ORPHAN_NOTE})")


def _print_columns(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """``header`` and ``rows`` in aligned columns."""
    widths = [max(len(r[c]) for r in (header, *rows)) for c in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _print_table(infos: Sequence[LeaseInfo]) -> None:
    """One row per lease."""
    header = ("NAME", "HOLDER", "LEASE ID", "FENCING", "TTL", "ACQUIRED AT")
    rows = [
        (
            _safe(i.name),
            "orphan" if i.orphan else i.holder_label(_safe) or "-",
            "-" if i.orphan else _safe(i.lease_id[:8]),
            "-" if i.fencing_token is None else str(i.fencing_token),
            _ttl(i.ttl),
            _time(i.acquired_at),
        )
        for i in infos
    ]
    _print_columns(header, rows)
    if any(i.fencing_token is None and not i.orphan for i in infos):
        print(f"(FENCING '-': {NO_FENCING})")
    if any(i.orphan for i in infos):
        print(f"(HOLDER 'orphan': {ORPHAN_NOTE})")


# -- commands -----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> LeaseClient:
    if args.url:
        return LeaseClient.connect_sync(args.url, key_prefix=args.key_prefix)
    if _wizard.should_run_automatically(args.dir):
        print("Nothing is configured here yet: starting the configuration wizard.", flush=True)
        code = _wizard.main(args.dir)
        if code != _wizard.EXIT_OK:
            raise SystemExit(code)
    try:
        return LeaseClient.from_config(args.dir)
    except ConfigError as e:
        if _has_configuration(args.dir):
            raise  # its own message says how to fix it (a Redis --url would be a wrong hint)
        raise ConfigError(f"{e} (or pass --url redis://host:port)") from None


def _has_configuration(dir: str) -> bool:
    """Whether ``dir`` and the environment configure a store, even an invalid one."""
    try:
        return is_configured(dir)
    except ConfigError:
        return True


def _inspect(args: argparse.Namespace) -> int:
    info = _client(args).inspect_sync(args.name)
    if args.json:
        print(json.dumps(None if info is None else _as_json(info), indent=2))
    elif info is None:
        print(f"Lease {args.name!r} is not held.")
    else:
        _print_info(info)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    infos = _client(args).list_sync(args.prefix)
    if args.json:
        print(json.dumps([_as_json(i) for i in infos], indent=2))
    elif not infos:
        where = f" whose name starts with {args.prefix!r}" if args.prefix else ""
        print(f"No leases held{where}.")
    else:
        _print_table(infos)
    return EXIT_OK


def _term(term: int | None) -> str:
    return "none (a holder of the .NET origin)" if term is None else str(term)


def _print_leader(name: str, leader: LeaderInfo | None) -> None:
    if leader is None:
        print(f"Election {name!r} has no leader.")
        return
    rows = [
        ("Election", _safe(name)),
        (
            "Leader",
            "unknown (no instanceId)" if leader.identity is None else _safe(leader.identity),
        ),
        ("Term", _term(leader.term)),
        ("Lease ID", _safe(leader.lease_id)),
        ("Elected at", _time(leader.acquired_at)),
        ("Time left", _ttl(leader.expires_in)),
    ]
    for label, value in rows:
        print(f"{label + ':':<15} {value}")
    metadata = ", ".join(f"{_safe(k)}={_safe(v)}" for k, v in sorted(leader.metadata.items()))
    print(f"{'Metadata:':<15} {metadata or '(none)'}")


def _leader_line(leader: LeaderInfo | None) -> str:
    """One change, for ``leader --watch``: when it was seen, and the leader or none."""
    seen = iso_time(datetime.now(UTC))
    if leader is None:
        return f"{seen}  no leader"
    who = "unknown (no instanceId)" if leader.identity is None else _safe(leader.identity)
    line = f"{seen}  leader {who}  term {_term(leader.term)}  {_ttl(leader.expires_in)} left"
    if leader.metadata:
        line += "  " + " ".join(
            f"{_safe(k)}={_safe(v)}" for k, v in sorted(leader.metadata.items())
        )
    return line


def _leader(args: argparse.Namespace) -> int:
    election = _client(args).election(args.name)
    if not args.watch:
        leader = election.leader_sync()
        if args.json:
            print(json.dumps(None if leader is None else leader.to_json(), indent=2))
        else:
            _print_leader(args.name, leader)
        return EXIT_OK
    try:
        for leader in election.observe_sync():
            if args.json:
                print(json.dumps(None if leader is None else leader.to_json()), flush=True)
            else:
                print(_leader_line(leader), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return EXIT_OK


def _confirm(question: str) -> bool:
    print(question, end="", flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print()
    return answer.strip().lower() in ("y", "yes")


def _confirmed(args: argparse.Namespace, what: str, question: str) -> bool:
    """Whether to go on with a destructive act: ``--yes``, else a yes at a terminal; without a
    terminal and without ``--yes``, a refusal (never a silent default)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise _Refused(
            f"{what}; not asking for confirmation because standard input is not a terminal: "
            "add --yes to go on"
        )
    return _confirm(question)


def _changed_hands(what: str, shown: LeaseInfo, e: LeaseUnavailable) -> _Refused:
    """The refusal of a forced release whose compare-and-delete found another holder."""
    now = e.holder
    who = "another holder" if now is None else _shown(now)
    return _Refused(
        f"{what} changed hands while you were asked: it is now held by {who}, "
        f"not by {_shown(shown)}; nothing was released. "
        "Run the command again to see the current holder."
    )


def _release(args: argparse.Namespace) -> int:
    if not args.force:
        raise _Refused(
            f"refusing to release lease {args.name!r}: releasing a lease someone else holds "
            "breaks their mutual exclusion; add --force if you are sure its holder is gone"
        )
    client = _client(args)
    if client.key_prefix == "" and client.kind != "sqlite" and not args.allow_empty_prefix:
        raise _Refused(
            f"refusing to release {args.name!r} with an empty key prefix: every key in the "
            "database would count as a lease name, so this could delete application data; "
            "set KeyPrefix (or --key-prefix), or add --allow-empty-prefix if this database "
            "holds nothing but leases"
        )
    info = client.inspect_sync(args.name)
    if info is None:
        print(f"Lease {args.name!r} is not held; nothing to release.")
        return EXIT_OK
    question = (
        f"Delete the orphan of lease {args.name!r} left by {_left_by(info)}? [y/N] "
        if info.orphan
        else f"Release lease {args.name!r} held by {_holder(info)}? [y/N] "
    )
    if not _confirmed(args, f"lease {args.name!r} is held by {_holder(info)}", question):
        print("Not released.")
        return EXIT_OK
    # Compare-and-delete: only the holder shown above, never whoever holds it by now.
    try:
        released = client.force_release_sync(args.name, lease_id=info.lease_id)
    except LeaseUnavailable as e:
        raise _changed_hands(f"lease {args.name!r}", info, e) from None
    if released and info.orphan:
        print(f"Deleted the orphan of lease {args.name!r} (left by {_left_by(info)}).")
    elif released:
        print(f"Released lease {args.name!r} (was held by {_holder(info)}).")
    else:
        print(f"Lease {args.name!r} was no longer held; nothing released.")
    return EXIT_OK


def _semaphore_json(info: SemaphoreInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "limit": info.limit,
        "held": len(info.holders),
        "holders": [_as_json(h) for h in info.holders],
    }


def _not_used(name: str) -> str:
    return f"Semaphore {name!r} has never been used (no limit stored, no permit held)."


def _semaphore_inspect(args: argparse.Namespace) -> int:
    info = _client(args).semaphore_info_sync(args.name)
    if args.json:
        print(json.dumps(None if info is None else _semaphore_json(info), indent=2))
        return EXIT_OK
    if info is None:
        print(_not_used(args.name))
        return EXIT_OK
    print(f"{'Semaphore:':<15} {_safe(info.name)}")
    print(f"{'Limit:':<15} {info.limit}")
    print(f"{'Held:':<15} {len(info.holders)}")
    for h in info.holders:
        print()
        print(f"{'Slot:':<15} {h.slot}")
        _print_info(h)
    return EXIT_OK


def _semaphore_list(args: argparse.Namespace) -> int:
    infos = _client(args).list_semaphores_sync(args.prefix)
    if args.json:
        print(json.dumps([_semaphore_json(i) for i in infos], indent=2))
    elif not infos:
        where = f" whose name starts with {args.prefix!r}" if args.prefix else ""
        print(f"No semaphores{where}.")
    else:
        rows = [(_safe(i.name), str(i.limit), str(len(i.holders))) for i in infos]
        _print_columns(("NAME", "LIMIT", "HELD"), rows)
    return EXIT_OK


def _semaphore_set_limit(args: argparse.Namespace) -> int:
    client = _client(args)
    info = client.semaphore_info_sync(args.name)
    now = "never used" if info is None else f"limit {info.limit}, {len(info.holders)} held"
    question = f"Set the limit of semaphore {args.name!r} ({now}) to {args.limit}? [y/N] "
    what = f"semaphore {args.name!r} is {now}"
    if not _confirmed(args, what, question):
        if args.json:
            print(json.dumps({"name": args.name, "changed": False}, indent=2))
        else:
            print("Not changed.")
        return EXIT_OK
    before = client.set_semaphore_limit_sync(args.name, args.limit)
    if args.json:
        print(
            json.dumps(
                {"name": args.name, "changed": True, "limit": args.limit, "previous": before},
                indent=2,
            )
        )
    else:
        was = "none (never used)" if before is None else str(before)
        print(f"Semaphore {args.name!r}: limit {args.limit} (was {was}).")
        held = 0 if info is None else len(info.holders)
        if held > args.limit:
            print(
                f"{held} permits are held: nobody is evicted, and nobody is admitted until "
                f"fewer than {args.limit} are held."
            )
    return EXIT_OK


def _semaphore_release(args: argparse.Namespace) -> int:
    what = f"permit {args.slot} of semaphore {args.name!r}"
    if not args.force:
        raise _Refused(
            f"refusing to release {what}: releasing a permit someone else holds lets one more "
            "holder in; add --force if you are sure its holder is gone"
        )
    client = _client(args)
    info = client.semaphore_info_sync(args.name)
    held = None if info is None else next((h for h in info.holders if h.slot == args.slot), None)

    def done(released: bool, message: str) -> int:
        if args.json:
            shown = None if held is None else _as_json(held)
            print(
                json.dumps(
                    {"name": args.name, "slot": args.slot, "released": released, "holder": shown},
                    indent=2,
                )
            )
        else:
            print(message)
        return EXIT_OK

    if held is None:
        return done(
            False, f"Slot {args.slot} of semaphore {args.name!r} is not held; nothing to release."
        )
    question = f"Release {what} held by {_holder(held)}? [y/N] "
    if not _confirmed(args, f"{what} is held by {_holder(held)}", question):
        return done(False, "Not released.")
    # Compare-and-delete: only the holder shown above, never a successor in the slot.
    try:
        released = client.force_release_permit_sync(args.name, args.slot, lease_id=held.lease_id)
    except LeaseUnavailable as e:
        raise _changed_hands(what, held, e) from None
    if released:
        return done(True, f"Released {what} (was held by {_holder(held)}).")
    return done(False, f"{what[0].upper()}{what[1:]} was no longer held; nothing released.")


def _configure(args: argparse.Namespace) -> int:
    return _wizard.main(args.dir)


# -- arguments ----------------------------------------------------------------------------------


def _store_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so an option given before the subcommand
    # is not overwritten by the subcommand's default.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--url",
        default=default(None),
        help="store URL: redis://host:port, rediss://host:port, sqlite:///path/leases.db "
        "(default: the configuration in --dir)",
    )
    p.add_argument(
        "--dir",
        default=default("."),
        help="directory of appsettings.json / appsettings.Local.json (default: .)",
    )
    p.add_argument(
        "--key-prefix",
        default=default(None),
        help=(
            "key prefix with --url: the namespace of the leases on Redis, etcd and PostgreSQL"
            " (default: lease:)"
        ),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leasing",
        description="Inspect, list and release distributed leases; show election leaders.",
    )
    p.add_argument(
        "--version", action="version", version=f"%(prog)s (distributed-leasing) {_version}"
    )
    _store_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("inspect", help="show who holds a lease")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--json", action="store_true", help="print JSON (null when not held)")
    _store_options(s, suppress=True)
    s.set_defaults(run=_inspect)

    s = sub.add_parser("list", help="list held leases")
    s.add_argument("prefix", metavar="PREFIX", nargs="?", default="", help="name prefix")
    s.add_argument("--json", action="store_true", help="print JSON")
    _store_options(s, suppress=True)
    s.set_defaults(run=_list)

    s = sub.add_parser("leader", help="show who leads an election (--watch: each change)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--watch", action="store_true", help="print one line per change, until Ctrl-C")
    s.add_argument(
        "--json",
        action="store_true",
        help="print JSON (null when no one leads; with --watch, one object per line)",
    )
    _store_options(s, suppress=True)
    s.set_defaults(run=_leader)

    s = sub.add_parser("release", help="delete a lease whoever holds it (administrators)")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--force", action="store_true", help="required: you know its holder is gone")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument(
        "--allow-empty-prefix",
        action="store_true",
        help="release even with an empty key prefix (only if the database holds only leases)",
    )
    _store_options(s, suppress=True)
    s.set_defaults(run=_release)

    _semaphore_parser(sub)

    s = sub.add_parser("configure", help="run the configuration wizard")
    _store_options(s, suppress=True)
    s.set_defaults(run=_configure)
    return p


def _semaphore_parser(sub: Any) -> None:
    sem = sub.add_parser(
        "semaphore", help="inspect a semaphore, change its limit, release a permit"
    )
    _store_options(sem, suppress=True)
    cmds = sem.add_subparsers(dest="semaphore_command", metavar="SUBCOMMAND", required=True)

    def command(
        name: str, help: str, run: Callable[[argparse.Namespace], int], *, by_name: bool = True
    ) -> Any:
        s = cmds.add_parser(name, help=help)
        if by_name:
            s.add_argument("name", metavar="NAME")
        s.add_argument("--json", action="store_true", help="print JSON")
        _store_options(s, suppress=True)
        s.set_defaults(run=run)
        return s

    command("inspect", "show a semaphore's limit and its holders", _semaphore_inspect)
    s = command(
        "list", "list semaphores: name, limit, permits held", _semaphore_list, by_name=False
    )
    s.add_argument(
        "prefix", nargs="?", default="", metavar="PREFIX", help="only names starting with this"
    )
    s = command("set-limit", "store another limit (administrators)", _semaphore_set_limit)
    s.add_argument("limit", metavar="N", type=int, help="the new limit (1 to 2147483647)")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    s = command(
        "release", "delete one permit whoever holds it (administrators)", _semaphore_release
    )
    s.add_argument("--slot", type=int, required=True, help="the slot of the permit")
    s.add_argument("--force", action="store_true", help="required: you know its holder is gone")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def _plain_config_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints a configuration warning as a ``warning: ...`` line
    on stderr, for the people running the command (not Python's ``file:line: ConfigWarning:``
    and source line); any other warning goes to ``show``."""

    def show_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, ConfigWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``leasing``; returns the exit code."""
    # Only while the command runs: a program calling main() keeps its own warning display.
    with warnings.catch_warnings():
        warnings.showwarning = _plain_config_warnings(warnings.showwarning)
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        code: int = args.run(args)
        return code
    except _Refused as e:
        print(f"leasing: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (LeaseError, ValueError) as e:
        print(f"leasing: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("leasing: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
