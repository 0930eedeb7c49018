"""Serve the emulator (or the test webhook receiver) on its own event loop in a
background thread, so sync SDK tests, async tests and the daemon's own loop stay
independent."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType
from typing import Any, Self

from .app import ConnectionDropped, create_app
from .emulator import Emulator, EmulatorConfig
from .http11 import HTTPServer


class BackgroundServer:
    """An ASGI app under http11.HTTPServer on a private loop in a daemon thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def start(self, timeout: float = 10.0) -> Self:
        if self._thread is not None:
            return self
        # Bind here so port 0 resolves before the thread starts and nothing races for it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"stripe-emulator:{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("emulator server did not start in time")
        if self._error is not None:
            raise RuntimeError("emulator server failed to start") from self._error
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(sock))
        except BaseException as exc:  # surfaced to start() if it happens early
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._stop = asyncio.Event()
        # Emulated dropped connections are deliberate; keep them out of the error log.
        server = HTTPServer(self.make_app(), quiet=(ConnectionDropped,))
        await self.on_start()
        try:
            await server.start(sock)
            self._ready.set()
            await self._stop.wait()
        finally:
            await server.close(grace=1.0)
            await self.on_stop()
            sock.close()

    def make_app(self) -> Any:
        raise NotImplementedError

    async def on_start(self) -> None:
        """Runs on the server loop before serving."""

    async def on_stop(self) -> None:
        """Runs on the server loop after serving."""

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmulatorServer(BackgroundServer):
    """The emulator on 127.0.0.1 (port 0: a free one); webhook delivery runs on its loop."""

    def __init__(
        self,
        emulator: Emulator | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: EmulatorConfig | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.emulator = emulator or Emulator(config)

    def make_app(self) -> Any:
        return create_app(self.emulator)

    async def on_start(self) -> None:
        self.emulator.webhooks.attach(asyncio.get_running_loop())

    async def on_stop(self) -> None:
        await self.emulator.webhooks.aclose()
