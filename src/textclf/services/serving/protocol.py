"""uvicorn's h11 protocol with the read timeouts it lacks: slow or idle clients cannot hold a connection.

uvicorn 0.54 closes a kept-alive connection after ``timeout_keep_alive`` and caps requests with
``limit_concurrency``, but a connection that opens and sends nothing, sends its request headers a
byte at a time, or trickles its body is held as long as the client likes (50 such connections
were all still open after 40 s). :class:`GuardedH11Protocol` adds two timers per connection:

``header_timeout``  from the connection's opening (or the first byte of a kept-alive connection's
                    next request) until the request headers are complete; then the connection
                    is closed (``408`` first when part of a request arrived)
``body_timeout``    from the end of the headers until the end of the body. ``POST /predict``
                    answers ``400`` itself at this deadline (:func:`textclf.services.serving.app.read_body`);
                    the protocol closes any connection whose body is still arriving one second
                    later (a route that never reads its body, a client that keeps trickling)

Each close is one warning line in the log. The settings come from :class:`ConnectionLimits`
(``textclf serve --header_timeout --body_timeout --keep_alive_timeout --max_connections
--graceful_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("textclf.serve")

#: how long after ``body_timeout`` the protocol closes a connection whose body is still arriving
BODY_GRACE_S = 1.0
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: 16\r\nconnection: close\r\n\r\nRequest Timeout\n")


@dataclass(frozen=True)
class ConnectionLimits:
    """What a client may hold: time to send headers and body, idle keep-alive, connections; the shutdown drain."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_connections: int = 1000
    graceful_timeout: float = 10.0


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` plus the header and body timers of :class:`ConnectionLimits` (one connection)."""

    def __init__(self, config, server_state, app_state, _loop=None, limits: ConnectionLimits | None = None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or ConnectionLimits()
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport) -> None:  # type: ignore[override]
        """Start the header timer: a new connection must send its request headers in time."""
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        """Start the header timer on a request's first byte, then update the timers to h11's state."""
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        """After an answer, bytes of a pipelined request already buffered start the next header timer."""
        super().on_response_complete()
        if self._header_timer is None and self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm_header_timer()
        self._follow_state()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for bytes h11 cannot parse, without the traceback it gives when a request is already running.

        A bad chunk (or a bad pipelined request) arrives while the app handles the request before
        it: uvicorn answers 400 and closes, and the app's own answer then failed inside h11
        (``LocalProtocolError``: state MUST_CLOSE). The app now sees a disconnected client, and when
        an answer is already under way the connection is only closed.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            super().send_400_response(msg)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop both timers."""
        self._cancel_timers()
        super().connection_lost(exc)

    # --------------------------------------------------------------- timers
    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _follow_state(self) -> None:
        """Headers complete: stop the header timer and start the body timer (when a body follows); body complete: stop it."""
        state = self.conn.their_state
        if state is not h11.IDLE and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if state is h11.SEND_BODY and self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_timeout + BODY_GRACE_S, self._body_timeout)
        elif state is not h11.SEND_BODY and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request arrived: say why before closing
            self.transport.write(REQUEST_TIMEOUT)
            log.warning("closed the connection of %s: request headers not complete within %gs (--header_timeout)",
                        self._peer(), self.limits.header_timeout)
        self.transport.close()

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        log.warning("closed the connection of %s: request body not complete within %gs (--body_timeout)",
                    self._peer(), self.limits.body_timeout)
        self.transport.close()


def protocol_factory(limits: ConnectionLimits) -> functools.partial:
    """uvicorn's ``Config(http=...)``: :class:`GuardedH11Protocol` with ``limits`` (picklable for ``--workers``)."""
    return functools.partial(GuardedH11Protocol, limits=limits)
