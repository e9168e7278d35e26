"""Run an ASGI app on loopback in a background thread: for the demo, the tests and users' tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from receiver.serving import ServerLimits, server_config


class _Server(uvicorn.Server):
    """uvicorn's server, told to exit through an event instead of noticing on its 0.1 s tick."""

    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._exit = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        while not await self.on_tick(0):  # tick 0 refreshes the Date header, once a second here
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown without its fixed 0.1 s pauses: a test suite starts hundreds of these."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            await asyncio.wait_for(self._drain(), timeout=self.config.timeout_graceful_shutdown)
        except TimeoutError:
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _drain(self) -> None:
        # uvicorn signals neither a closed connection nor a finished task: poll, briefly.
        while self.server_state.connections or self.server_state.tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        for server in self.servers:
            await server.wait_closed()

    def exit(self) -> None:
        """Ask the server to shut down; callable from any thread."""
        self.should_exit = True
        loop = self._loop
        if loop is not None:  # else main_loop has not started and will see should_exit
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._exit.set)


class BackgroundServer:
    """`with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")`.

    The socket is bound at construction, so `url` is known before the app is: an app that must know
    its own URL is set as `server.app` before `start()`.
    """

    def __init__(
        self, app: Any = None, host: str = "127.0.0.1", port: int = 0, *, limits: ServerLimits | None = None
    ) -> None:
        self.app = app
        self.limits = limits  # None: uvicorn's defaults; else what `receiver serve` runs with
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name their protocol.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(2048)
        self.host, self.port = self._sock.getsockname()[:2]
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "auto",
            "access_log": False,
            "timeout_graceful_shutdown": 2,
        }
        config = (
            uvicorn.Config(self.app, **options)
            if self.limits is None
            else server_config(self.app, self.limits, **options)
        )
        self._server = server = _Server(config)
        self._thread = thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def request_stop(self) -> None:
        """Start shutting down without waiting: servers stopped together shut down side by side."""
        if self._server is not None:
            self._server.exit()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
