"""A loopback TCP proxy for fault tests (plain Python, asyncio in a background thread).

    with TcpProxy(redis.port) as proxy:     # listens on 127.0.0.1:<proxy.port>
        url = f"redis://127.0.0.1:{proxy.port}"
        proxy.blackhole()   # connections stay open (new ones are accepted too), nothing flows
        proxy.heal()        # traffic flows again; bytes held back meanwhile are delivered
        proxy.cut()         # close every current connection (cut(rst=True): reset them)
        proxy.set_target(other.port)  # later connections go elsewhere

``blackhole()`` models a network partition as TCP sees it: the peers get no data and no
error, and after ``heal()`` what was sent in between arrives (as retransmissions would).
Connections accepted during a blackhole connect upstream only once healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


class TcpProxy:
    """Forward 127.0.0.1:``listen_port`` (0 = pick one) to ``target_host:target_port``."""

    def __init__(
        self,
        target_port: int,
        target_host: str = LOOPBACK,
        *,
        listen_port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = LOOPBACK
        self.target_host = target_host
        self.target_port = target_port
        self._listen_port = listen_port
        self.connect_timeout = connect_timeout
        self.total_connections = 0
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._port = 0

    # ---- public API (call from any thread but the proxy's own) ------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    @property
    def blackholed(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    def start(self) -> Self:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"tcp-proxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        self._call(self._start())
        return self

    def blackhole(self) -> None:
        """Stop forwarding in both directions; keep accepting and holding connections."""
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        """Forward again (held-back bytes are delivered)."""
        self._call(self._set_flowing(True))

    def cut(self, *, rst: bool = False) -> int:
        """Close every current connection, both sides; returns how many. ``rst`` resets them
        (SO_LINGER 0) instead of a FIN. New connections are still accepted."""
        return self._call(self._cut(rst))

    def set_target(self, port: int, host: str = LOOPBACK) -> None:
        """Send *new* connections to another address (current ones are left alone)."""
        self.target_host, self.target_port = host, port

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self._port} -> {self.target_host}:{self.target_port} "
            f"{'blackholed' if self.blackholed else 'flowing'} conns={self.active_connections}>"
        )

    # ---- inside the loop --------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("proxy not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("TcpProxy methods must not be called from the proxy's own thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, self._listen_port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _cut(self, rst: bool) -> int:
        conns = list(self._conns)
        for c in conns:
            self._abort(c, rst)
        return len(conns)

    @staticmethod
    def _abort(c: _Conn, rst: bool) -> None:
        for w in c.writers():
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            w.transport.abort()
        if c.task is not None:
            c.task.cancel()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut(False)
        tasks = [c.task for c in self._conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        self.total_connections += 1
        try:
            assert self._flowing is not None
            await self._flowing.wait()
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port),
                    self.connect_timeout,
                )
            except (OSError, TimeoutError):
                return
            conn.upstream = up_w
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(conn)
            for w in conn.writers():
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if dst.transport.is_closing():
                    break
                dst.write(data)
                await dst.drain()
            await self._flowing.wait()
            if dst.can_write_eof() and not dst.transport.is_closing():
                dst.write_eof()
        except (ConnectionError, OSError):
            dst.transport.abort()
