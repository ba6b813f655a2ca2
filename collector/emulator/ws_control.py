"""Binance's live control messages (docs/binance.md §1.5): which requests are valid, their
replies and their errors, as the stream host (`ws.StreamHost`) answers them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from collector.emulator.ws_state import ConnectionInfo

METHODS: Final = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_MAX_REQUEST_ID: Final = 2**64 - 1


class ControlError(Exception):
    """A control request Binance answers with `{"error":{…},"id":…}`."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def answer(
    info: ConnectionInfo,
    data: str | bytes,
    subscribe: Callable[[list[str]], None],
    unsubscribe: Callable[[list[str]], None],
) -> tuple[bytes, bool]:
    """The reply to the control message `data` (its result, or its error) and whether `data`
    was JSON at all (if not, the host drops the connection after the reply, §1.4)."""
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"Invalid JSON: expected value at line {exc.lineno} column {exc.colno}"
        return orjson.dumps({"error": {"code": 3, "msg": msg}}), False
    request_id = request.get("id") if isinstance(request, dict) else None
    if not is_request_id(request_id):
        request_id = None
    try:
        result = execute(info, request, subscribe, unsubscribe)
        reply: dict[str, Any] = {"result": result, "id": request_id}
    except ControlError as exc:
        reply = {"error": {"code": exc.code, "msg": exc.msg}, "id": request_id}
    return orjson.dumps(reply), True


def execute(
    info: ConnectionInfo,
    request: Any,
    subscribe: Callable[[list[str]], None],
    unsubscribe: Callable[[list[str]], None],
) -> Any:
    """Run one control request; return its `result` or raise `ControlError`."""
    if not isinstance(request, dict):
        raise ControlError(2, "Invalid request: expected a JSON object")
    if not is_request_id(request.get("id")):
        raise ControlError(2, "Invalid request: request ID must be an unsigned integer")
    if "method" not in request:
        raise ControlError(2, "Invalid request: missing field `method`")
    method = request["method"]
    if method not in METHODS:
        shown = method if isinstance(method, str) else orjson.dumps(method).decode()
        raise ControlError(
            2, f"Invalid request: unknown variant {shown}, expected one of {', '.join(METHODS)}"
        )
    params = request.get("params", [])
    if not isinstance(params, list):
        raise ControlError(2, "Invalid request: params must be an array")
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if not all(isinstance(p, str) for p in params):
            raise ControlError(2, "Invalid request: stream names must be strings")
        if method == "SUBSCRIBE":
            subscribe(params)
        else:
            unsubscribe(params)
        return None
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            raise ControlError(2, "Invalid request: too many parameters")
        return list(info.subscriptions)
    max_params = 2 if method == "SET_PROPERTY" else 1
    if len(params) > max_params:
        raise ControlError(2, "Invalid request: too many parameters")
    if not params or not isinstance(params[0], str):
        raise ControlError(2, "Invalid request: property name must be a string")
    if params[0] != "combined":
        raise ControlError(0, "Unknown property")
    if method == "GET_PROPERTY":
        return info.is_combined
    if len(params) < 2 or not isinstance(params[1], bool):
        raise ControlError(1, "Invalid value type: expected Boolean")
    info.is_combined = params[1]
    return None


def is_request_id(value: Any) -> bool:
    """Futures wants an unsigned integer `id` (§1.5); JSON booleans and floats are not."""
    return type(value) is int and 0 <= value <= _MAX_REQUEST_ID
