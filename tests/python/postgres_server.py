"""A private, throwaway PostgreSQL server for tests (plain Python, no pytest, no driver).

``initdb`` into a temporary directory, then ``postgres`` on a free 127.0.0.1 port with its Unix
socket in that directory, the superuser ``postgres`` with a password (scram-sha-256 over TCP),
no fsync. PostgreSQL refuses to run as root: when the tests run as root, the server runs as the
system user ``dl-postgres`` (created here if missing) and owns the directory. The ``Popen`` pid
*is* the server, stopped by that pid; the ``atexit`` hook of ``redis_servers`` and
``PR_SET_PDEATHSIG`` kill what is left.

    with PostgresServer() as pg:
        pg.url                      # postgresql://postgres:...@127.0.0.1:<port>/postgres?sslmode=disable
        pg.psql("SELECT 1")         # runs SQL through psql, returns its output
        pg.kill(signal.SIGKILL)     # a crash (SIGINT: fast shutdown); the data stays
        pg.start_again()            # same port, same data (crash recovery after SIGKILL)

The binaries come from ``$PG_BIN`` or the newest ``/usr/lib/postgresql/<version>/bin``
(``scripts/test.sh`` installs the ``postgresql`` package).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from redis_servers import LOOPBACK, _dies_with_us, _Server, _stop_processes, free_port

__all__ = ["POSTGRES_PASSWORD", "PostgresServer", "PostgresServerError", "postgres_bin_dir"]

POSTGRES_PASSWORD = "dl-test-pw"
START_TIMEOUT = 60.0
SYSTEM_USER = "dl-postgres"


class PostgresServerError(RuntimeError):
    """The server could not be started (its log is in the message)."""


def postgres_bin_dir() -> Path | None:
    """``$PG_BIN``, else the newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb``."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    found = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            if (d / "initdb").is_file():
                found.append((int(d.parent.name), d))
    return max(found)[1] if found else None


def _system_user() -> pwd.struct_passwd | None:
    """The user to run the server as: ``dl-postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        # Another test process may create it at the same time: fine if it exists afterwards.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            capture_output=True,
            check=False,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may contain spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it holds no resources)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class PostgresServer(_Server):
    """One private PostgreSQL server; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        """``extra_args``: more ``postgres`` arguments, after (so overriding) the defaults, e.g.
        ``["-c", "fsync=on"]``."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise PostgresServerError(
                "PostgreSQL binaries not found; apt-get install postgresql (scripts/test.sh does), "
                "or set PG_BIN"
            )
        self.bin = bin_dir
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="dl-pytest-pg-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = _system_user()
        self._extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return (
            f"postgresql://postgres:{POSTGRES_PASSWORD}@{LOOPBACK}:{self.port}/postgres"
            "?sslmode=disable"
        )

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def start(self) -> Self:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(POSTGRES_PASSWORD)
        if self._user is not None:
            for p in (self.dir, pwfile):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
        data = self.dir / "data"
        out = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
            ],
            capture_output=True,
            cwd=self.dir,
            check=False,
            **self._as_user(),
        )
        if out.returncode != 0:
            raise PostgresServerError(f"initdb failed: {out.stdout!r} {out.stderr!r}")
        self.port = free_port()
        self._launch()
        self._track()
        self._wait_ready()
        return self

    def _launch(self) -> None:
        """Runs ``postgres`` on ``self.port`` over the data directory (its log appended)."""
        data = self.dir / "data"
        log = (self.dir / "server.log").open("ab")
        self._proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
                *self._extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=self.dir,
            preexec_fn=_dies_with_us(),
            **self._as_user(),
        )
        log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        log = (self.dir / "server.log").read_text(errors="replace")
        self.stop()
        raise PostgresServerError(f"postgres on port {self.port} did not start: {log}")

    @property
    def pid(self) -> int:
        """The postmaster's pid (the ``Popen`` process)."""
        assert self._proc is not None, "not running"
        return self._proc.pid

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Stops the server, keeping its data for :meth:`start_again`.

        ``SIGINT`` is PostgreSQL's fast shutdown (sessions ended, a checkpoint, then exit);
        ``SIGKILL`` is a crash: the postmaster and every process it started are killed at once,
        and the next start runs crash recovery from the write-ahead log."""
        proc, self._proc = self._proc, None
        assert proc is not None, "not running"
        if sig == signal.SIGKILL:
            children = _children_of(proc.pid)
            proc.kill()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
            deadline = time.monotonic() + timeout
            while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)

    def start_again(self) -> None:
        """Starts the server stopped by :meth:`kill` on the same port and data."""
        assert self._proc is None, "still running"
        self._launch()
        self._wait_ready()

    def psql(self, sql: str, variables: Mapping[str, str] | None = None) -> str:
        """Runs ``sql`` (read from stdin, so ``:'name'`` interpolates ``variables`` quoted) as
        the superuser; returns the unaligned, tuples-only output."""
        psql = self.bin / "psql"
        if not psql.is_file():
            psql = Path(shutil.which("psql") or "psql")
        args = [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        args += ["-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        for k, v in (variables or {}).items():
            args += ["-v", f"{k}={v}"]
        out = subprocess.run(
            args,
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": POSTGRES_PASSWORD},
            check=False,
        )
        if out.returncode != 0:
            raise PostgresServerError(f"psql failed: {out.stderr}")
        return out.stdout.strip()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # SIGINT: "fast" shutdown, ends the sessions, then exits.
            _stop_processes([proc], [signal.SIGINT], timeout, kill_wait=30)
        self._untrack()
        shutil.rmtree(self.dir, ignore_errors=True)
