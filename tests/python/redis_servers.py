"""Private, throwaway ``redis-server`` processes for tests (plain Python, no pytest, no redis-py).

Every server listens on 127.0.0.1 only, on a port picked here, with its own temporary directory,
no persistence (``--save '' --appendonly no``) and no daemonizing, so the ``Popen`` pid *is* the
server and it is stopped by that pid. Anything still running when the interpreter exits is killed
by an ``atexit`` hook, and when started from the main thread the server also gets
``PR_SET_PDEATHSIG=SIGKILL`` so it dies with its parent even if Python itself is SIGKILLed.

    with RedisServer() as srv:                          # plain server
        srv.cli("SET", "k", "v")
    with RedisServer(password="pw") as srv: ...         # requirepass (default user)
    with RedisServer(acl_users={"alice": "s3cret"}): ...  # ACL user with full rights
    with RedisServer(tls=True) as srv: srv.ca_file      # TLS only, throwaway CA
    with RedisCluster(masters=3) as cl: cl.urls          # 3-master cluster, all slots covered

``redis-server``, ``redis-cli`` and ``openssl`` must be on PATH (``scripts/test.sh`` installs them).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = [
    "LOOPBACK",
    "RedisCluster",
    "RedisServer",
    "RedisServerError",
    "RespError",
    "free_port",
    "free_port_with_bus",
    "resp_command",
]

LOOPBACK = "127.0.0.1"
REDIS_SERVER_BIN = os.environ.get("REDIS_SERVER_BIN", "redis-server")
REDIS_CLI_BIN = os.environ.get("REDIS_CLI_BIN", "redis-cli")
OPENSSL_BIN = os.environ.get("OPENSSL_BIN", "openssl")
CLUSTER_BUS_OFFSET = 10000
START_TIMEOUT = 20.0

# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------

_port_lock = threading.Lock()
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    """True if nothing is bound to 127.0.0.1:port (nor 0.0.0.0:port) right now."""
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _pick(candidates_ok: Callable[[int], bool], lo: int, hi: int) -> int:
    with _port_lock:
        for _ in range(2000):
            port = random.randint(lo, hi)
            if port in _handed_out:
                continue
            if candidates_ok(port):
                _handed_out.add(port)
                return port
    raise RedisServerError(f"no free loopback port found in {lo}..{hi}")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1.

    Picked at random *below* the kernel's ephemeral range, so that outgoing connections (whose
    local ports come from that range) cannot grab it between now and the server's bind, nor
    between a server's stop and its restart on the same port. Never the same port twice per
    process.
    """
    eph_lo, _ = _ephemeral_range()
    hi = min(eph_lo - 1, 32767)
    return _pick(_port_is_free, 15000, hi if hi > 16000 else 30000)


def free_port_with_bus(offset: int = CLUSTER_BUS_OFFSET) -> int:
    """A free port P such that P + offset (the cluster bus port) is free too.

    Both P and P + 10000 are kept below the ephemeral port range (P in 11000..~22700 on a
    default Linux), for the reason given in :func:`free_port`.
    """
    eph_lo, _ = _ephemeral_range()
    hi = min(eph_lo - 1, 65535) - offset
    lo = 11000
    if hi <= lo + 1000:  # odd kernel setting: fall back to anywhere that fits
        lo, hi = 1025, 65535 - offset

    def ok(p: int) -> bool:
        return p + offset not in _handed_out and _port_is_free(p) and _port_is_free(p + offset)

    port = _pick(ok, lo, hi)
    with _port_lock:
        _handed_out.add(port + offset)
    return port


# --------------------------------------------------------------------------------------------
# A tiny RESP2 client (enough for PING, AUTH, INFO, CLUSTER INFO/SLOTS)
# --------------------------------------------------------------------------------------------


class RedisServerError(RuntimeError):
    """The harness could not start, reach or stop a server."""


class RespError(Exception):
    """An error reply (``-ERR ...``) from the server."""


RespValue = None | int | bytes | str | list[Any] | RespError


def _encode(args: Iterable[str | bytes | int]) -> bytes:
    parts: list[bytes] = []
    items = list(args)
    parts.append(b"*%d\r\n" % len(items))
    for a in items:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._f = sock.makefile("rb")

    def _line(self) -> bytes:
        line = self._f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed mid-reply")
        return line[:-2]

    def read(self) -> RespValue:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._f.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("connection closed mid-reply")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP reply line {line!r}")

    def close(self) -> None:
        self._f.close()


def resp_command(
    host: str,
    port: int,
    *args: str | bytes | int,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | Path | None = None,
    timeout: float = 5.0,
) -> RespValue:
    """Open a connection, optionally AUTH, send one command, return its reply.

    Error replies raise :class:`RespError` (also a failed AUTH). With ``ca_file`` the connection
    is TLS, verified against that CA and the host name/IP. Simple strings come back as ``str``,
    bulk strings as ``bytes``.
    """
    raw = socket.create_connection((host, port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(ca_file))
            sock = ctx.wrap_socket(raw, server_hostname=host)
        reader = _Reader(sock)
        try:
            if password is not None:
                auth: list[str] = (
                    ["AUTH", password] if username is None else ["AUTH", username, password]
                )
                sock.sendall(_encode(auth))
                r = reader.read()
                if isinstance(r, RespError):
                    raise r
            sock.sendall(_encode(args))
            reply = reader.read()
        finally:
            reader.close()
    finally:
        sock.close()
    if isinstance(reply, RespError):
        raise reply
    return reply


# --------------------------------------------------------------------------------------------
# Process bookkeeping
# --------------------------------------------------------------------------------------------


class _Server:
    """A harness server: a ``with`` block (``start()`` on entry, ``stop()`` on exit), and
    stopped at exit if it still runs then (from :meth:`_track` to :meth:`_untrack`)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self) -> None:
        """Runs: stopped at exit unless stopped before."""
        with _live_lock:
            _live.add(self)

    def _untrack(self) -> None:
        """No longer runs: nothing to stop at exit."""
        with _live_lock:
            _live.discard(self)


# Every server still running (Redis here, PostgreSQL in postgres_server.py, etcd in
# etcd_server.py): stopped at exit.
_live: set[_Server] = set()
_live_lock = threading.Lock()


def _kill_leftovers() -> None:
    with _live_lock:
        servers = list(_live)
    for s in servers:
        with contextlib.suppress(Exception):  # best effort at exit
            s.stop(timeout=2.0)


atexit.register(_kill_leftovers)


def _stop_processes(
    procs: Iterable[subprocess.Popen[bytes]],
    signals: Sequence[int],
    timeout: float,
    kill_wait: float | None = 10.0,
) -> None:
    """Sends ``signals`` (in order) to each of ``procs`` that still runs, then reaps them all.
    One that has not exited within ``timeout`` is SIGKILLed and reaped within ``kill_wait``
    (else ``TimeoutExpired``); with ``kill_wait=None`` it is left as it is."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                for sig in signals:
                    os.kill(proc.pid, sig)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if kill_wait is None:
                continue
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=kill_wait)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here: no dlopen between fork and exec
_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _dies_with_us() -> Callable[[], None] | None:
    """The ``preexec_fn`` of a server process: it dies with us even if we are SIGKILLed.
    PDEATHSIG follows the *thread* that started it, so only for one started from the main
    thread (``None`` otherwise)."""
    return _pdeathsig if threading.current_thread() is threading.main_thread() else None


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RedisServerError(
            f"{binary!r} not found on PATH; install redis-server, redis-tools and openssl "
            "(scripts/test.sh does it: apt-get install redis-server redis-tools openssl)"
        )
    return path


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------


def _make_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (EC P-256, 2 days)."""
    openssl = _require(OPENSSL_BIN)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    cmds = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "2",
         "-subj", "/CN=distributed-leasing test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "2", "-sha256", "-extfile", ext],
    ]  # fmt: skip
    for cmd in cmds:
        r = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if r.returncode != 0:
            raise RedisServerError(f"openssl failed: {' '.join(map(str, cmd))}\n{r.stderr}")
    for p in (ca_key, key):
        p.chmod(0o600)
    return ca_crt, crt, key


# --------------------------------------------------------------------------------------------
# One server
# --------------------------------------------------------------------------------------------

AclRules = str | Sequence[str]


class RedisServer(_Server):
    """One private ``redis-server`` on 127.0.0.1.

    ``password`` sets the default user's password (``requirepass``). ``acl_users`` maps a user
    name to either a password (the user gets ``on >pw ~* &* +@all``) or a sequence of raw ACL
    rules (e.g. ``["on", ">pw", "~lease:*", "+@all", "-eval"]``); they go into an ACL file
    together with the default user. ``tls=True`` makes the server TLS-only (``--port 0``) with
    a fresh CA (``.ca_file``). ``extra_args`` are appended to the command line.

    ``stop()`` ends the server (SIGTERM, then SIGKILL) and removes its directory; ``kill()``,
    ``pause()``/``resume()`` send SIGKILL/SIGSTOP/SIGCONT and keep the directory, so
    ``restart()`` brings a server back on the same port, with the same users/certs and empty
    data (cluster nodes keep their ``nodes.conf``, so they rejoin their cluster).
    """

    host: str = LOOPBACK

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        acl_users: Mapping[str, AclRules] | None = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._fixed_port = port is not None
        self._port = port if port is not None else 0
        self.password = password
        self.acl_users: dict[str, AclRules] = dict(acl_users or {})
        self.tls = tls
        self.extra_args = tuple(str(a) for a in extra_args)
        self.dir: Path | None = None
        self.ca_file: Path | None = None
        self.cert_file: Path | None = None
        self.key_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # ---- properties ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RedisServerError("server has no port yet: call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def scheme(self) -> str:
        return "rediss" if self.tls else "redis"

    @property
    def bare_url(self) -> str:
        """URL without credentials, e.g. ``redis://127.0.0.1:15123``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """URL that works as is: includes the default user's password if one is set."""
        if self.password is None:
            return self.bare_url
        return self.url_for(None, self.password)

    def url_for(self, username: str | None, password: str | None) -> str:
        """URL with the given credentials (percent-encoded)."""
        q = urllib.parse.quote
        user = q(username, safe="") if username else ""
        cred = (
            f"{user}:{q(password, safe='')}@"
            if password is not None
            else (f"{user}@" if user else "")
        )
        return f"{self.scheme}://{cred}{self.host}:{self.port}"

    @property
    def log_file(self) -> Path | None:
        return self.dir / "redis.log" if self.dir else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        if self.is_running():
            return self
        _require(REDIS_SERVER_BIN)
        created = self.dir is None
        try:
            if self.dir is None:
                self.dir = Path(tempfile.mkdtemp(prefix="dl-redis-"))
                if self.tls:
                    self.ca_file, self.cert_file, self.key_file = _make_tls_material(self.dir)
                if self.acl_users:
                    self._write_acl_file()
            attempts = 1 if self._fixed_port else 4
            last: Exception | None = None
            for _ in range(attempts):
                if not self._fixed_port:
                    self._port = free_port()
                try:
                    self._spawn_and_wait()
                    return self
                except _PortInUse as e:
                    last = e
            raise RedisServerError(f"could not start redis-server: {last}")
        except BaseException:
            if created:  # nobody will call stop() on a server that never started
                self.stop()
            raise

    def _write_acl_file(self) -> None:
        assert self.dir is not None
        default = f">{self.password}" if self.password is not None else "nopass"
        lines = [f"user default on {default} ~* &* +@all"]
        for name, rules in self.acl_users.items():
            if name == "default":
                raise ValueError("set the default user's password with password=, not acl_users")
            if isinstance(rules, str):
                lines.append(f"user {name} on >{rules} ~* &* +@all")
            else:
                lines.append(f"user {name} " + " ".join(rules))
        (self.dir / "users.acl").write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        assert self.dir is not None
        cmd = [
            REDIS_SERVER_BIN,
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--enable-debug-command", "local",
        ]  # fmt: skip
        if self.tls:
            assert self.cert_file and self.key_file and self.ca_file
            cmd += [
                "--port", "0",
                "--tls-port", str(self._port),
                "--tls-cert-file", str(self.cert_file),
                "--tls-key-file", str(self.key_file),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            cmd += ["--port", str(self._port)]
        if self.acl_users:
            cmd += ["--aclfile", str(self.dir / "users.acl")]
        elif self.password is not None:
            cmd += ["--requirepass", self.password]
        cmd += list(self.extra_args)
        return cmd

    def _spawn_and_wait(self) -> None:
        assert self.dir is not None
        log = self.dir / "redis.log"
        log.write_bytes(b"")
        stdio = open(self.dir / "stdout.txt", "ab")  # noqa: SIM115 - owned by the child
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is handled by the tests
                preexec_fn=_dies_with_us(),
            )
        finally:
            stdio.close()
        self._paused = False
        self._track()
        deadline = time.monotonic() + START_TIMEOUT
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = self._read_logs()
                self._proc = None
                self._untrack()
                if "Address already in use" in text:
                    raise _PortInUse(f"port {self._port}: Address already in use")
                raise RedisServerError(
                    f"redis-server exited during start-up (cmd: {self._command()}):\n{text}"
                )
            try:
                if self.ping():
                    return
            except (OSError, RespError, ssl.SSLError) as e:
                last_err = e
            time.sleep(0.02)
        self._terminate(kill=True)
        raise RedisServerError(
            f"redis-server on port {self._port} did not answer PING within {START_TIMEOUT}s "
            f"(last error: {last_err}):\n{self._read_logs()}"
        )

    def _read_logs(self) -> str:
        out = []
        if self.dir is not None:
            for name in ("stdout.txt", "redis.log"):
                p = self.dir / name
                if p.exists():
                    out.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def _terminate(self, *, kill: bool, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        # A SIGSTOPped process ignores SIGTERM until it is continued.
        signals = [signal.SIGKILL] if kill else [signal.SIGCONT, signal.SIGTERM]
        _stop_processes([proc], signals, timeout)
        self._proc = None
        self._paused = False
        self._untrack()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``) and remove its directory."""
        self._terminate(kill=False, timeout=timeout)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
            self.ca_file = self.cert_file = self.key_file = None

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown); ``restart()`` can bring it back."""
        self._terminate(kill=True)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing answers."""
        if not self.is_running():
            raise RedisServerError("server is not running")
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def restart(self) -> Self:
        """Kill (if running) and start again on the same port: empty data, same config."""
        if not self._port:
            return self.start()
        self._terminate(kill=True)
        self._fixed_port, was_fixed = True, self._fixed_port
        try:
            self.start()
        finally:
            self._fixed_port = was_fixed
        return self

    # ---- talking to it ---------------------------------------------------------------------

    def command(
        self,
        *args: str | bytes | int,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> RespValue:
        """One command over a raw socket (as the default user unless told otherwise)."""
        if password is None and username is None:
            password = self.password
        return resp_command(
            self.host, self.port, *args, username=username, password=password,
            ca_file=self.ca_file if self.tls else None, timeout=timeout,
        )  # fmt: skip

    def ping(self, timeout: float = 1.0) -> bool:
        return self.command("PING", timeout=timeout) == "PONG"

    def cli_args(self, *, user: str | None = None, password: str | None = None) -> list[str]:
        """The ``redis-cli`` connection flags for this server (host, port, TLS, auth)."""
        args = [REDIS_CLI_BIN, "-h", self.host, "-p", str(self.port), "--no-auth-warning"]
        if self.tls:
            assert self.ca_file is not None
            args += ["--tls", "--cacert", str(self.ca_file)]
        if user is None and password is None:
            password = self.password
        if user is not None:
            args += ["--user", user]
        if password is not None:
            args += ["--pass", password]
        return args

    def cli(
        self,
        *args: str | int,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        check: bool = True,
    ) -> str:
        """Run ``redis-cli <flags> args...`` and return its stdout (raw mode, not a tty).

        Note that ``redis-cli`` exits 0 on an error *reply*: the text (``ERR ...``,
        ``NOPERM ...``) is in the returned string. ``check`` raises on a non-zero exit
        (connection failures and the like) and on a failed AUTH, after which ``redis-cli``
        would otherwise carry on as the default user.
        """
        r = subprocess.run(
            [*self.cli_args(user=user, password=password), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and "AUTH failed" in r.stderr:
            raise RedisServerError(f"redis-cli: {r.stderr.strip()}")
        if check and r.returncode != 0:
            raise RedisServerError(
                f"redis-cli {' '.join(map(str, args))} failed ({r.returncode}): "
                f"{r.stderr.strip()} {r.stdout.strip()}"
            )
        return r.stdout

    def env_with_ca(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) with ``SSL_CERT_FILE`` = this server's CA,
        for a subprocess whose TLS client reads that variable (it is set machine-wide)."""
        if self.ca_file is None:
            raise RedisServerError("not a TLS server (or not started)")
        env = dict(os.environ if base is None else base)
        env["SSL_CERT_FILE"] = str(self.ca_file)
        return env

    def info(self, section: str = "server") -> dict[str, str]:
        raw = self.command("INFO", section)
        assert isinstance(raw, bytes)
        return _parse_info(raw.decode())

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {self.scheme}://{self.host}:{self._port} pid={self.pid} {state}>"


class _PortInUse(RedisServerError):
    pass


def _parse_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------


class RedisCluster(_Server):
    """A ``masters``-node Redis Cluster (no replicas) on loopback, every slot covered.

    Each node is a :class:`RedisServer` with ``--cluster-enabled yes`` on a port whose bus
    port (port + 10000) is free too. ``node_timeout_ms`` is ``cluster-node-timeout``: after
    ``kill_node(i)`` the other nodes mark it failed (and, with full coverage required,
    ``cluster_state`` becomes ``fail``) once that time has passed.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        password: str | None = None,
        node_timeout_ms: int = 5000,
        extra_args: Sequence[str] = (),
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        self.password = password
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.nodes: list[RedisServer] = []

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL (a cluster client discovers the rest)."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def start(self) -> Self:
        if self.nodes:
            return self
        _require(REDIS_CLI_BIN)
        try:
            for _ in range(self.masters):
                node = RedisServer(
                    free_port_with_bus(),
                    password=self.password,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--cluster-require-full-coverage", "yes",
                        *self.extra_args,
                    ],
                )  # fmt: skip
                self.nodes.append(node)
                node.start()
            self._create()
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        cmd = [REDIS_CLI_BIN, "--cluster", "create", *(f"{h}:{p}" for h, p in self.startup_nodes),
               "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
        if self.password is not None:
            cmd += ["-a", self.password, "--no-auth-warning"]
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        if r.returncode != 0 or "[OK] All 16384 slots covered" not in r.stdout:
            raise RedisServerError(
                f"redis-cli --cluster create failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            )

    def cluster_info(self, i: int) -> dict[str, str]:
        raw = self.nodes[i].command("CLUSTER", "INFO")
        assert isinstance(raw, bytes)
        return _parse_info(raw.decode())

    def slot_map(self, i: int) -> list[tuple[int, int, int]]:
        """``CLUSTER SLOTS`` of node ``i`` as sorted (first, last, master port)."""
        raw = self.nodes[i].command("CLUSTER", "SLOTS")
        assert isinstance(raw, list)
        return sorted((int(e[0]), int(e[1]), int(e[2][1])) for e in raw)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every running node says ``cluster_state:ok``, knows every node and all nodes
        agree on the slot map (so clients see no spurious MOVED right after start)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                live = [i for i, n in enumerate(self.nodes) if n.is_running()]
                infos = [self.cluster_info(i) for i in live]
                maps = [self.slot_map(i) for i in live]
                if (
                    all(inf.get("cluster_state") == "ok" for inf in infos)
                    and all(inf.get("cluster_slots_assigned") == "16384" for inf in infos)
                    and all(
                        int(inf.get("cluster_known_nodes", 0)) == len(self.nodes) for inf in infos
                    )
                    and all(m == maps[0] for m in maps)
                ):
                    return
                last = repr(infos)
            except (OSError, RespError) as e:
                last = repr(e)
            time.sleep(0.1)
        raise RedisServerError(f"cluster not ok after {timeout}s: {last}")

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (no replicas: its slots become unavailable)."""
        self.nodes[i].kill()

    def stop(self, timeout: float = 10.0) -> None:
        for n in self.nodes:
            n.stop(timeout)
        self.nodes = []

    def __repr__(self) -> str:
        return f"<RedisCluster {[n.port for n in self.nodes]}>"
