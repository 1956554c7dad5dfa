"""A private, throwaway etcd cluster for tests (plain Python, no pytest, no driver).

Three members (by default) of ``etcd`` on free 127.0.0.1 ports, each with a data directory
under one temporary directory (on ``/dev/shm`` when there is one: etcd syncs every write, and
tmpfs makes that free). Each ``Popen`` pid *is* a member, stopped by that pid; the ``atexit``
hook of ``redis_servers`` and ``PR_SET_PDEATHSIG`` kill what is left.

    with EtcdCluster() as etcd:
        etcd.url                         # etcd://127.0.0.1:<port>,127.0.0.1:<port>,...
        etcd.etcdctl("del", "lease:x")   # runs etcdctl (API v3) against the members
        i = etcd.leader()                # the Raft leader's index (None: none known)
        etcd.kill_member(0)              # a crash of member 0 (SIGKILL); its data stays
        etcd.start_member(0)             # it rejoins (same ports and data), waits until healthy

``scripts/test.sh`` installs the ``etcd-server`` and ``etcd-client`` packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Self

from redis_servers import LOOPBACK, _dies_with_us, _Server, _stop_processes, free_port

__all__ = ["EtcdCluster", "EtcdClusterError", "etcd_installed"]

START_TIMEOUT = 60.0


class EtcdClusterError(RuntimeError):
    """The cluster could not be started or etcdctl failed (the output is in the message)."""


def etcd_installed() -> bool:
    """Whether ``etcd`` and ``etcdctl`` are on PATH."""
    return shutil.which("etcd") is not None and shutil.which("etcdctl") is not None


def _base_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class EtcdCluster(_Server):
    """One private etcd cluster; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, members: int = 3) -> None:
        if not etcd_installed():
            raise EtcdClusterError(
                "etcd not found; apt-get install etcd-server etcd-client (scripts/test.sh does)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="dl-pytest-etcd-", dir=_base_dir()))
        self.names = [f"m{i}" for i in range(members)]
        self.client_ports: list[int] = []
        self.peer_ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._token = ""
        self._initial = ""

    @property
    def endpoints(self) -> str:
        """``127.0.0.1:<port>,...`` of every member."""
        return ",".join(f"{LOOPBACK}:{p}" for p in self.client_ports)

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoints}"

    def start(self) -> Self:
        used: set[int] = set()
        for _ in self.names:
            for ports in (self.client_ports, self.peer_ports):
                port = free_port()
                while port in used:
                    port = free_port()
                used.add(port)
                ports.append(port)
        initial = ",".join(
            f"{n}=http://{LOOPBACK}:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        self._token = f"dl-pytest-{uuid.uuid4().hex[:12]}"
        self._initial = initial
        for i in range(len(self.names)):
            self._procs.append(self._launch(i, "new"))
        self._track()
        self._wait_healthy()
        return self

    def _launch(self, i: int, state: str) -> subprocess.Popen[bytes]:
        """Runs member ``i`` on its ports and data directory (its log appended)."""
        name, client, peer = self.names[i], self.client_ports[i], self.peer_ports[i]
        client_url = f"http://{LOOPBACK}:{client}"
        peer_url = f"http://{LOOPBACK}:{peer}"
        log = (self.dir / f"{name}.log").open("ab")
        # fmt: off
        args = [
            "etcd", "--name", name, "--data-dir", str(self.dir / name),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self._initial, "--initial-cluster-token", self._token,
            "--initial-cluster-state", state, "--logger", "zap", "--log-outputs", "stderr",
        ]
        # fmt: on
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.dir,
                preexec_fn=_dies_with_us(),
            )
        finally:
            log.close()

    def kill_member(self, i: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Stops member ``i`` (SIGKILL: a crash), keeping its data for :meth:`start_member`."""
        proc = self._procs[i]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait(timeout=timeout)

    def start_member(self, i: int, wait: bool = True) -> None:
        """Starts member ``i`` stopped by :meth:`kill_member` again (same ports, same data:
        it rejoins the cluster); with ``wait``, until every member reports healthy."""
        assert self._procs[i].poll() is not None, "still running"
        self._procs[i] = self._launch(i, "existing")
        if wait:
            self._wait_healthy()

    def leader(self) -> int | None:
        """The index of the member that is the Raft leader (None if no member knows one)."""
        for i, port in enumerate(self.client_ports):
            if self._procs[i].poll() is not None:
                continue
            req = urllib.request.Request(
                f"http://{LOOPBACK}:{port}/v3/maintenance/status", data=b"{}", method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    status = json.loads(r.read())
            except (OSError, ValueError):
                continue
            header = status.get("header", {})
            if str(status.get("leader", "0")) == str(header.get("member_id", "")):
                return i
        return None

    def _healthy(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=2) as r:
                body: bytes = r.read()
        except OSError:
            return False
        return b'"health":"true"' in body

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            if all(self._healthy(p) for p in self.client_ports):
                return
            time.sleep(0.1)
        logs = "\n".join(
            (self.dir / f"{n}.log").read_text(errors="replace")[-2000:] for n in self.names
        )
        self.stop()
        raise EtcdClusterError(f"etcd cluster did not become healthy: {logs}")

    def etcdctl(self, *args: str) -> str:
        """Runs ``etcdctl`` (API v3) against the members; returns its stdout."""
        out = subprocess.run(
            ["etcdctl", f"--endpoints={self.endpoints}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=False,
        )
        if out.returncode != 0:
            raise EtcdClusterError(f"etcdctl {args}: {out.stderr}")
        return out.stdout.strip()

    def stop(self, timeout: float = 10.0) -> None:
        procs, self._procs = self._procs, []
        _stop_processes(procs, [signal.SIGKILL], timeout, kill_wait=None)
        self._untrack()
        shutil.rmtree(self.dir, ignore_errors=True)
