"""Binance wire values to exact Python values, shared by the websocket and REST parsers.

Prices and quantities arrive as decimal strings and become `Decimal` (a JSON float is refused:
it is already inexact); times arrive as integer epoch milliseconds and become UTC datetimes,
exact to the millisecond. Bad values raise `MalformedPayload` naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from collector.exceptions import MalformedPayload

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# 9999-12-31T23:59:59.999Z, the largest time Postgres and Python share.
MAX_MS = 253402300799999
# Below this (year 2096) `ms / 1000` as a float is within 0.5 us of the exact time, so
# fromtimestamp() rounds to the exact millisecond (checked over 3 million random values).
_FLOAT_EXACT_MS = 4_000_000_000_000
# Postgres `numeric` holds up to 131072 digits before the decimal point and 16383 after.
_PG_NUMERIC_INT_DIGITS = 131072
_PG_NUMERIC_FRAC_DIGITS = 16383
# A decimal string this short without an exponent has fewer digits than either limit.
_SHORT = 1000


def millis(value: Any, field: str) -> datetime:
    """Integer epoch milliseconds as an exact UTC datetime."""
    if type(value) is not int:  # bool is not int here; floats and strings are refused
        raise MalformedPayload(f"expected integer milliseconds, got {value!r}", field=field)
    if not 0 <= value <= MAX_MS:
        raise MalformedPayload(f"time out of range: {value}", field=field)
    if value < _FLOAT_EXACT_MS:  # C-fast, and exact in this range
        return datetime.fromtimestamp(value / 1000, UTC)
    return _EPOCH + timedelta(milliseconds=value)


def decimal(value: Any, field: str) -> Decimal:
    """A decimal string (or a JSON integer) as an exact, finite Decimal."""
    if type(value) is not str and (isinstance(value, bool) or not isinstance(value, int)):
        raise MalformedPayload(f"expected a decimal string, got {value!r}", field=field)
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise MalformedPayload(f"not a decimal: {value!r}", field=field) from None
    if not result.is_finite():
        raise MalformedPayload(f"not a finite decimal: {value!r}", field=field)
    if type(value) is str and len(value) <= _SHORT and "e" not in value and "E" not in value:
        # Fewer digits than the string's length, far within Postgres' range: no need to look.
        return result
    exponent = result.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if result.adjusted() >= _PG_NUMERIC_INT_DIGITS or -exponent > _PG_NUMERIC_FRAC_DIGITS:
        # Postgres could not store it, and arithmetic on it may overflow Python's context.
        raise MalformedPayload(f"decimal out of range: {str(value)[:40]!r}", field=field)
    return result
