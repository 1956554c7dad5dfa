"""The configuration wizard: asks where the leases live, tests the connection, and writes
``appsettings.Local.json`` (mode 0600, git-ignored).

Runs as ``leasing configure``, ``python examples/compete.py --configure``, and by itself on the
first run at a terminal with no configuration (see :func:`should_run_automatically`). It asks
what the .NET sample's interactive setup asks, with its defaults: the Azure Cache for Redis name
(or a Redis URL, or the embedded store of this machine), the key prefix (``lease:``), the
database (0) and the authentication mode (access key, or Microsoft Entra ID, the sample's
"DefaultAzureCredential"). Secrets are read with ``getpass`` and never printed.

It never prompts when standard input is not a terminal: it says how to configure without it and
returns 2.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import _native
from ._client import LeaseClient
from ._native import ConfigError, LeaseError

__all__ = [
    "AZURE_SUFFIX",
    "LOCAL_FILE",
    "Answers",
    "azure_endpoint",
    "ensure_gitignored",
    "is_configured",
    "main",
    "section_for",
    "should_run_automatically",
    "write_local_settings",
]

LOCAL_FILE = "appsettings.Local.json"
BASE_FILE = "appsettings.json"
SECTION = "RedisLeasing"
AZURE_SUFFIX = ".redis.cache.windows.net"
AZURE_TLS_PORT = 6380
CHECK_NAME = "distributed-leasing-wizard-check"

EXIT_OK, EXIT_CANCELLED, EXIT_NO_TERMINAL = 0, 1, 2

_CACHE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HOST_PORT = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)

Store = Literal["azure", "url", "embedded"]
Auth = Literal["key", "entra"]


# -- configuration state ---------------------------------------------------------------------


def _env_target_names() -> list[str]:
    return [
        k
        for k, v in os.environ.items()
        if v.strip()
        and k.lower().replace(":", "__")
        in ("redisleasing__connectionstring", "redisleasing__endpoint")
    ]


def is_configured(dir: str | os.PathLike[str] = ".") -> bool:
    """Whether a store is configured for ``dir``, as the library itself decides
    (``_native.is_configured``: appsettings files and ``RedisLeasing__*`` variables), or an
    ``appsettings.Local.json`` exists (the wizard never starts by itself over one). A
    configuration that does not load counts as configured: the library will report its
    problem, the wizard must not hide it."""
    if (Path(dir) / LOCAL_FILE).exists():
        return True
    try:
        return _native.is_configured(os.fspath(dir))
    except ConfigError:
        return True


def should_run_automatically(dir: str | os.PathLike[str] = ".") -> bool:
    """True when the wizard should start by itself: standard input and output are terminals and
    nothing is configured for ``dir``."""
    try:
        at_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    return at_terminal and not is_configured(dir)


# -- what the answers become -------------------------------------------------------------------


def azure_endpoint(cache: str) -> str:
    """``mycache`` → ``mycache.redis.cache.windows.net:6380``; a host name (with dots) or
    ``host:port`` is kept (port 6380 added when missing), for Azure Managed Redis
    (``name.region.redis.azure.net:10000``) and other hosts."""
    cache = cache.strip()
    if _CACHE_NAME.fullmatch(cache):
        return f"{cache.lower()}{AZURE_SUFFIX}:{AZURE_TLS_PORT}"
    m = _HOST_PORT.fullmatch(cache)
    if m is None:
        raise ValueError(
            "give the cache name (letters, digits and '-', as in the Azure portal) or host:port"
        )
    port = m.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError("the port must be from 1 to 65535")
    return cache if port is not None else f"{cache}:{AZURE_TLS_PORT}"


@dataclass
class Answers:
    """Everything the wizard asked. ``secret`` is the access key or password (never printed)."""

    store: Store = "azure"
    endpoint: str = ""  # azure: host:port
    auth: Auth = "key"
    url: str = ""  # url: scheme://[user@]host:port, without password
    user: str = ""
    secret: str = field(default="", repr=False)
    ca_file: str = ""
    sqlite_path: str = ""
    key_prefix: str = "lease:"
    database: int = 0

    def display(self) -> str:
        """Where the leases will live, for people (no secret)."""
        if self.store == "azure":
            mode = "access key" if self.auth == "key" else "Microsoft Entra ID"
            return f"{self.endpoint} ({mode})"
        if self.store == "url":
            return self.url
        return f"the embedded store {self.sqlite_path}"


def _url_with_secret(a: Answers) -> str:
    parts = urllib.parse.urlsplit(a.url)
    host = parts.netloc.rsplit("@", 1)[-1]
    q = urllib.parse.quote
    user = q(a.user, safe="") if a.user else ""
    if a.secret:
        cred = f"{user}:{q(a.secret, safe='')}@"
    elif user:
        cred = f"{user}@"
    else:
        cred = ""
    return urllib.parse.urlunsplit((parts.scheme, cred + host, "", "", ""))


def section_for(a: Answers) -> dict[str, object]:
    """The ``RedisLeasing`` section of ``appsettings.Local.json`` for these answers, in the
    sample's shapes (connection string mode or Entra ID mode)."""
    section: dict[str, object]
    if a.store == "embedded":
        return {"ConnectionString": f"sqlite://{Path(a.sqlite_path).resolve().as_posix()}"}
    if a.store == "azure" and a.auth == "entra":
        section = {"Endpoint": a.endpoint}
    elif a.store == "azure":
        section = {"ConnectionString": f"{a.endpoint},password={a.secret},ssl=True"}
    else:
        section = {"ConnectionString": _url_with_secret(a)}
        if a.ca_file:
            section["CaFile"] = str(Path(a.ca_file).resolve())
    section["KeyPrefix"] = a.key_prefix
    section["Database"] = a.database
    return section


# -- files -------------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` with mode 0600 from the start: a new file created with
    ``os.open(..., 0o600)`` next to it, then renamed over it (an existing file with a wider mode
    is replaced, never written in place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_local_settings(dir: str | os.PathLike[str], section: dict[str, object]) -> Path:
    """Writes ``<dir>/appsettings.Local.json`` (mode 0600) with ``section`` as ``RedisLeasing``."""
    path = Path(dir) / LOCAL_FILE
    _write_private(path, json.dumps({SECTION: section}, indent=2) + "\n")
    return path


def ensure_gitignored(dir: str | os.PathLike[str], name: str = LOCAL_FILE) -> Path:
    """Makes sure ``<dir>/.gitignore`` lists ``name`` (creating the file if needed, never
    adding the line twice). Returns the ``.gitignore`` path."""
    path = Path(dir) / ".gitignore"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    listed = {line.strip() for line in text.splitlines()}
    if name in listed or f"/{name}" in listed:
        return path
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(f"{text}{name}\n", encoding="utf-8")
    return path


def _default_sqlite_path(dir: Path) -> Path:
    """``<git repository root or dir>/.leases/leases.db``, as the demo's embedded store."""
    start = dir.resolve()
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d / ".leases" / "leases.db"
    return start / ".leases" / "leases.db"


# -- the connection test -----------------------------------------------------------------------


def check_connection(dir: Path, section: dict[str, object]) -> tuple[str | None, list[str]]:
    """Connects as ``section`` (with ``dir``'s ``appsettings.json`` below it) and inspects a
    lease nobody uses. Returns (the error message or None, configuration notes).

    ``RedisLeasing__*`` environment variables are set aside meanwhile: the test is of the
    answers, not of whatever the environment would override them with."""
    target = str(section.get("ConnectionString", ""))
    if target.startswith("sqlite://"):
        _prepare_embedded(Path(target[len("sqlite://") :]))
    aside = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().startswith("redisleasing")}
    try:
        with tempfile.TemporaryDirectory(prefix="dl-wizard-") as tmp:
            base = dir / BASE_FILE
            if base.is_file():
                shutil.copyfile(base, Path(tmp) / BASE_FILE)
            write_local_settings(tmp, section)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    client = LeaseClient.from_config(tmp)
                    try:
                        client.inspect_sync(CHECK_NAME)
                    finally:
                        client.close_sync()
                except LeaseError as e:
                    return str(e), []
            return None, [str(w.message) for w in caught]
    finally:
        os.environ.update(aside)


def _prepare_embedded(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    ignore = db.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # the lease database is this machine's state


# -- the dialogue ------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


def _say(text: str = "") -> None:
    print(text, flush=True)


def _ask(prompt: str, default: str | None = None) -> str:
    shown = f"{prompt} [{default}]: " if default not in (None, "") else f"{prompt}: "
    try:
        answer = input(shown).strip()
    except EOFError:
        raise _Cancelled from None
    return answer if answer else (default or "")


def _ask_until(prompt: str, default: str | None, check: Callable[[str], str | None]) -> str:
    """Asks until ``check`` (which returns an error message or None) accepts the answer."""
    while True:
        answer = _ask(prompt, default)
        problem = check(answer)
        if problem is None:
            return answer
        _say(f"  {problem}")


def _secret(prompt: str, *, required: bool) -> str:
    while True:
        try:
            value = getpass.getpass(f"{prompt} (input hidden): ")
        except EOFError:
            raise _Cancelled from None
        if value or not required:
            return value
        _say("  This is required.")


def _choose(prompt: str, options: list[str], default: int = 1) -> int:
    _say(prompt)
    for i, text in enumerate(options, 1):
        _say(f"  {i}) {text}")

    def check(a: str) -> str | None:
        ok = a.isdigit() and 1 <= int(a) <= len(options)
        return None if ok else f"Type a number from 1 to {len(options)}."

    return int(_ask_until("Choose", str(default), check))


def _check_cache(a: str) -> str | None:
    if not a:
        return "The cache name is required (the NAME in NAME.redis.cache.windows.net)."
    try:
        azure_endpoint(a)
    except ValueError as e:
        return str(e).capitalize() + "."
    return None


def _check_url(a: str) -> str | None:
    parts = urllib.parse.urlsplit(a if "://" in a else f"redis://{a}")
    if parts.scheme not in ("redis", "rediss"):
        return "Use redis://host:port, or rediss://host:port for TLS."
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "The port must be a number from 1 to 65535."
    if not parts.hostname:
        return "Give a host name and port, like redis://localhost:6379."
    return None


def _check_database(azure: bool) -> Callable[[str], str | None]:
    def check(a: str) -> str | None:
        top = 15 if azure else 1_000_000
        if a.isdigit() and int(a) <= top:
            return None
        return f"Type a database number from 0 to {top}." if azure else "Type a number, 0 or more."

    return check


def _check_ca_file(a: str) -> str | None:
    if a and not Path(a).expanduser().is_file():
        return f"There is no file {a}."
    return None


def _interview(dir: Path, previous: Answers | None) -> Answers:
    p = previous or Answers()
    a = Answers()
    store_index = {"azure": 1, "url": 2, "embedded": 3}[p.store]
    choice = _choose(
        "Where should the leases live?",
        [
            "Azure Cache for Redis",
            "Another Redis server (a redis:// or rediss:// URL)",
            "The embedded store: a SQLite file for the processes of THIS machine only",
        ],
        store_index,
    )
    if choice == 3:
        a.store = "embedded"
        default = p.sqlite_path or str(_default_sqlite_path(dir))
        a.sqlite_path = str(Path(_ask("Database file", default)).expanduser().resolve())
        return a
    if choice == 1:
        a.store = "azure"
        cache = _ask_until(
            "Azure Redis Cache name",
            p.endpoint.split(":")[0].removesuffix(AZURE_SUFFIX),
            _check_cache,
        )
        a.endpoint = azure_endpoint(cache)
        auth = _choose(
            "Authentication mode:",
            [
                "Access key (connection string with the cache's key)",
                "Microsoft Entra ID (DefaultAzureCredential: az login, managed identity, "
                "service principal; no key stored)",
            ],
            1 if p.auth == "key" else 2,
        )
        if auth == 1:
            a.auth = "key"
            while True:
                a.secret = _secret("Access key (Azure portal > Access keys)", required=True)
                if "," not in a.secret:
                    break
                _say("  An access key has no ','; paste the key itself, not a connection string.")
        else:
            a.auth = "entra"
    else:
        a.store = "url"
        url = _ask_until("Redis URL", p.url or "redis://localhost:6379", _check_url)
        parts = urllib.parse.urlsplit(url if "://" in url else f"redis://{url}")
        host = parts.netloc.rsplit("@", 1)[-1]
        a.url = urllib.parse.urlunsplit((parts.scheme, host, "", "", ""))
        if parts.password:
            a.user = urllib.parse.unquote(parts.username or "")
            a.secret = urllib.parse.unquote(parts.password)
        else:
            a.user = _ask("User name (ACL; empty for the default user)", p.user)
            a.secret = _secret("Password (empty for none)", required=False)
        if parts.path.strip("/").isdigit():
            p.database = int(parts.path.strip("/"))
        if parts.scheme == "rediss":
            ca = _ask_until(
                "CA certificate file for TLS (empty: the system's trusted roots)",
                p.ca_file,
                _check_ca_file,
            )
            a.ca_file = str(Path(ca).expanduser().resolve()) if ca else ""
    a.key_prefix = _ask_until(
        "Key prefix",
        p.key_prefix or "lease:",
        lambda s: None if s.strip() else "The key prefix cannot be empty.",
    )
    azure_host = a.store == "azure" and a.endpoint.split(":")[0].endswith(AZURE_SUFFIX)
    a.database = int(_ask_until("Database number", str(p.database), _check_database(azure_host)))
    return a


def _no_terminal(dir: Path) -> int:
    local = dir / LOCAL_FILE
    print(
        "distributed-leasing: the configuration wizard asks questions, but standard input is not "
        "a terminal, so it did not start.\n"
        "Configure without it, in one of these ways:\n"
        f"  - write {local}, for example\n"
        f'      {{"{SECTION}": {{"ConnectionString": '
        '"mycache.redis.cache.windows.net:6380,password=KEY,ssl=True"}}\n'
        f'    or, with Microsoft Entra ID: {{"{SECTION}": {{"Endpoint": '
        '"mycache.redis.cache.windows.net:6380"}}\n'
        f"  - set the environment variable {SECTION}__ConnectionString "
        "(e.g. redis://localhost:6379)\n"
        "  - for a new Azure cache: az redis create --name NAME --resource-group GROUP "
        "--location eastus --sku Basic --vm-size c0, then az redis list-keys --name NAME "
        "--resource-group GROUP for its key (a clone of the project's repository also has "
        "scripts/setup-resources.sh, which does both and writes the file)\n"
        "  - or run `leasing configure` in a terminal.",
        file=sys.stderr,
    )
    return EXIT_NO_TERMINAL


def main(dir: str | os.PathLike[str] = ".") -> int:
    """Runs the wizard for ``dir``. Returns 0 when saved (or nothing to change), 1 when
    cancelled, 2 when standard input is not a terminal."""
    d = Path(dir)
    try:
        interactive = sys.stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return _no_terminal(d)
    try:
        return _dialogue(d)
    except (_Cancelled, KeyboardInterrupt):
        _say()
        _say("Cancelled; nothing was saved.")
        return EXIT_CANCELLED


def _dialogue(d: Path) -> int:
    local = d / LOCAL_FILE
    _say("distributed-leasing configuration")
    _say(f"This writes {local} (readable by you only, ignored by git).")
    _say("Press Enter to take the [default]; Ctrl-C cancels.")
    _say()
    if not d.is_dir():
        _say(f"{d} is not a directory.")
        return EXIT_CANCELLED
    if local.exists():
        replace = _ask(f"{LOCAL_FILE} exists here. Replace it? (y/n)", "n")
        if replace.lower() not in ("y", "yes"):
            _say("Nothing changed.")
            return EXIT_OK
    for name in _env_target_names():
        _say(f"Note: the environment variable {name} is set; it overrides {LOCAL_FILE}.")
    answers: Answers | None = None
    while True:
        answers = _interview(d, answers)
        section = section_for(answers)
        _say()
        _say(f"Testing the connection to {answers.display()} ...")
        problem, notes = check_connection(d, section)
        for note in notes:
            _say(f"Note: {note}")
        if problem is None:
            _say("✓ Connected.")
            break
        _say("✗ The connection test failed:")
        _say(f"  {problem}")
        while True:
            what = _ask("[r]etry the test, [e]dit the answers, [s]ave anyway, [q]uit", "r").lower()
            if what in ("r", "retry"):
                _say("Testing again ...")
                problem, _ = check_connection(d, section)
                if problem is None:
                    _say("✓ Connected.")
                    break
                _say(f"✗ {problem}")
            elif what in ("e", "edit"):
                break
            elif what in ("s", "save"):
                problem = None
                break
            elif what in ("q", "quit"):
                _say("Nothing was saved.")
                return EXIT_CANCELLED
        if problem is None:
            break
        _say()
    path = write_local_settings(d, section)
    ignore = ensure_gitignored(d)
    _say(f"Saved {path} (mode 0600) and made sure {ignore} lists it.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
