"""What every websocket session shares, Binance's (`binance_session.Connection`) and the other
venues' (`venue_session.VenueSession`): opening the socket with its failures named, the read
loop that keeps the ledger's liveness mark, and letting a reader finish before cancelling it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import aiohttp

# A cap on one frame far above any venue's message (aiohttp's default is 4 MiB), so that a
# broken server still cannot make us buffer without limit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How long aiohttp waits for the server's close frame after sending ours.
CLOSE_HANDSHAKE_S = 5.0


class ConnectFailed(Exception):
    """The socket could not be opened; `reason` is the ledger's and the metrics' label
    (`http_<status>`, `connect_timeout`, `connect_failed`), the aiohttp error its cause."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


async def connect(
    http: aiohttp.ClientSession, url: str, *, timeout_s: float, autoping: bool
) -> aiohttp.ClientWebSocketResponse:
    """Upgrade to a websocket at `url` within `timeout_s`, with no aiohttp heartbeat (each
    venue pings as it documents). Raises `ConnectFailed`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await http.ws_connect(
                url,
                autoping=autoping,
                heartbeat=None,
                max_msg_size=MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_HANDSHAKE_S),
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise ConnectFailed(f"http_{exc.status}") from exc
    except TimeoutError as exc:
        raise ConnectFailed("connect_timeout") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectFailed("connect_failed") from exc


async def let_finish(task: asyncio.Task[None] | None, timeout_s: float) -> None:
    """Let a session's reader finish what it read (it may be waiting for queue space) rather
    than cancel it mid-put; cancel it only if it does not end within `timeout_s`."""
    if task is None or task is asyncio.current_task():
        return
    _, pending = await asyncio.wait({task}, timeout=timeout_s)
    for left in pending:
        left.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await left


class Receiving(Protocol):
    """The ledger's flag: whether the reader waits on the socket."""

    receiving: bool


async def read_frames(
    ws: aiohttp.ClientWebSocketResponse,
    ledger: Receiving,
    *,
    on_frame: Callable[[], datetime],
    on_text: Callable[[str, datetime], Awaitable[None]],
    on_binary: Callable[[bytes], Awaitable[None]],
    answer_pings: bool,
    log: Any,
    event: str,
) -> str:
    """Read `ws` until it closes or fails; return why (`server_closed` or `error`).

    `ledger.receiving` is true exactly while the reader waits on the socket; `on_frame` stamps
    each frame (returning its receive time) before `on_text`/`on_binary` handle it. With
    `answer_pings`, a ping is answered with a pong carrying its payload (else aiohttp's
    autoping has). Errors are logged as `event`.
    """
    reason = "server_closed"
    text_type, ping_type, pong_type = (
        aiohttp.WSMsgType.TEXT,
        aiohttp.WSMsgType.PING,
        aiohttp.WSMsgType.PONG,
    )
    try:
        while True:
            ledger.receiving = True
            try:
                msg = await ws.receive()
            finally:
                ledger.receiving = False
            received_at = on_frame()
            if msg.type is text_type:
                await on_text(msg.data, received_at)
            elif msg.type is ping_type:
                if answer_pings:
                    await ws.pong(msg.data)
            elif msg.type is pong_type:
                pass
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await on_binary(msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                reason = "error"
                log.warning(event, error=repr(ws.exception()))
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    except (aiohttp.ClientError, OSError) as exc:
        reason = "error"
        log.warning(event, error=repr(exc))
    return reason
