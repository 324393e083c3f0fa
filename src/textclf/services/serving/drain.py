"""Graceful shutdown: on SIGTERM (or Ctrl-C) stop being ready, finish the requests in flight, then stop.

uvicorn alone stops listening at once on SIGTERM and closes every idle kept-alive connection, so
a load balancer still sending there sees refused and reset connections. Here the first SIGTERM
or SIGINT only starts a drain:

1. ``/ready`` answers 503 at once (load balancers stop sending), every other route keeps
   answering, and each answer carries ``Connection: close`` (clients reconnect elsewhere);
2. once no request is in flight, or ``--graceful_timeout`` seconds after the signal, the signal
   goes on to uvicorn's own handler: it stops listening, closes idle connections, gives requests
   still running up to ``--graceful_timeout`` more, runs the app's shutdown, and the process exits 0.

A second SIGINT while draining stops the drain at once (a second SIGTERM is ignored: ``docker
stop`` and Kubernetes follow it with SIGKILL anyway). The handler chains to the one installed
before it, uvicorn's, from the app's startup in the main thread; it does the same in every
``--workers`` process (uvicorn's supervisor sends each worker SIGTERM). Elsewhere (the app run
in a thread by tests) nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

log = logging.getLogger("textclf.serve")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLOSE = (b"connection", b"close")


class Drain:
    """The requests in flight, whether the server is draining, and the signal handler that starts the drain."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.draining = False
        self.active = 0
        self._previous: dict[int, object] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def install(self) -> bool:
        """Chain the SIGTERM/SIGINT handlers (main thread only; call in the running loop); whether installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):  # uvicorn's Server.handle_exit: what stops the server in the end
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        return bool(self._previous)

    def _handle(self, sig: int, frame) -> None:
        if self.draining:
            if sig == signal.SIGINT:  # a second Ctrl-C: stop now
                self._hand_over(sig, frame)
            return
        self.draining = True  # /ready answers 503 from now on
        log.warning("%s: draining: /ready answers 503; %d request(s) in flight get up to %gs (--graceful_timeout)",
                    signal.Signals(sig).name, self.active, self.timeout)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._start, sig, frame)

    def _start(self, sig: int, frame) -> None:
        self._task = asyncio.ensure_future(self._wait_then_stop(sig, frame))

    async def _wait_then_stop(self, sig: int, frame) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while self.active > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.active:
            log.warning("drain: %d request(s) still running after %gs; stopping", self.active, self.timeout)
        self._hand_over(sig, frame)

    def _hand_over(self, sig: int, frame) -> None:
        handler = self._previous.get(sig) or next(iter(self._previous.values()))
        handler(sig, frame)  # type: ignore[operator]


class DrainMiddleware:
    """ASGI middleware counting the HTTP requests in flight for :class:`Drain`; answers say ``Connection: close`` while draining."""

    def __init__(self, app, drain: Drain):
        self.app = app
        self.drain = drain

    async def __call__(self, scope, receive, send):
        """Count the request while it runs."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        drain = self.drain

        async def send_closing(message):
            if message["type"] == "http.response.start" and drain.draining:
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, CLOSE]}
            await send(message)

        drain.active += 1
        try:
            await self.app(scope, receive, send_closing)
        finally:
            drain.active -= 1
