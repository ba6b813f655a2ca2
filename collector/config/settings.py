"""The mechanism every section is built with: `setting(default, rule)` puts a field's rule beside
it (a section's `validate()` checks what spans its fields); the shared rules and ranges; `Secret`;
the StrEnums that settings take.

The sections are `sections` (database, Binance, writer, HTTP, log, REST, accounts and `Config`),
`sections_venues` (`[venues]`, `[bybit]`, `[okx]`) and `sections_out` (`[feed]`, `[[alerts]]`).
Reading files and the environment into them is `collector.config.loader`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class Secret:
    """A string that prints as `<SECRET>` in reprs, logs and exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call only where it is sent to its destination."""
        return self._value

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class AccountKind(StrEnum):
    """Classic accounts poll fapi, dapi and sapi, Portfolio Margin ones papi
    (docs/binance.md §4.4)."""

    CLASSIC = "classic"
    PORTFOLIO_MARGIN = "portfolio_margin"


class KeyType(StrEnum):
    """How an account's API key signs requests (docs/binance.md §2.2)."""

    HMAC = "hmac"
    RSA = "rsa"
    ED25519 = "ed25519"


class Product(StrEnum):
    """Which book an account's force orders come from: USD-M or COIN-M futures, or margin."""

    UM = "um"
    CM = "cm"
    MARGIN = "margin"


class ApiFamily(StrEnum):
    """A Binance REST API: its base URL (`[binance] <family>_url`) and its server clock."""

    FAPI = "fapi"
    DAPI = "dapi"
    PAPI = "papi"
    SAPI = "sapi"


class AlertKind(StrEnum):
    """`large`: one liquidation of at least min_notional_usd; `cascade`: the liquidated USD of
    one side within window_s reaches threshold_usd."""

    LARGE = "large"
    CASCADE = "cascade"


class AlertFormat(StrEnum):
    """The webhook body: our JSON, or Slack's / Discord's incoming-webhook shape."""

    JSON = "json"
    SLACK = "slack"
    DISCORD = "discord"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one setting's value must be; `message` says so (and may quote `{value!r}`)."""

    holds: Callable[[Any], bool]
    message: str

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None when it holds (None, an unset value, always does)."""
        return None if value is None or self.holds(value) else self.message.format(value=value)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def between(low: float, high: float, *, above: bool = False, note: str = "") -> Rule:
    """`low..high`; above `low` (not at it) when `above`."""

    def holds(value: float) -> bool:
        # Written so that NaN fails every comparison and is refused.
        low_ok = value > low if above else value >= low
        return low_ok and value <= high and not math.isnan(value)

    low_s, high_s = _number(low), _number(high)
    text = f"must be above {low_s} and at most {high_s}" if above else f"must be {low_s}..{high_s}"
    return Rule(holds, f"{text}{note}, got {{value!r}}")


def one_of(*choices: str, ignore_case: bool = False) -> Rule:
    """One of `choices` (compared in lower case when `ignore_case`)."""
    text = f"must be {', '.join(choices[:-1])} or {choices[-1]}"
    return Rule(lambda v: (v.lower() if ignore_case else v) in choices, text)


def url(*schemes: str) -> Rule:
    """A URL with one of `schemes`."""
    text = " or ".join(f"{s}://" for s in schemes)
    return Rule(lambda v: urlsplit(v).scheme in schemes, f"must start with {text}, got {{value!r}}")


Convert = Callable[[Any, list[str]], Any]


def setting(default: T, rule: Rule | None = None, *, convert: Convert | None = None) -> T:
    """A field with its `rule`; `convert(value, problems)` normalises a value that was set."""
    return field(default=default, metadata={"rule": rule, "convert": convert})


DAY = 86400.0
WEEK = 7 * DAY
# Every number has a range. Durations are above 0 (a zero or negative interval would spin); the
# maxima catch unit mistakes (ms for s) and typos.
UP_TO_10MIN = between(0, 600, above=True)
UP_TO_HOUR = between(0, 3600, above=True)
UP_TO_DAY = between(0, DAY, above=True)
UP_TO_WEEK = between(0, WEEK, above=True)


def ordered(section: object, low: str, high: str, need: str) -> Iterator[tuple[str, str]]:
    """The `(settings, problem)` a section's `validate()` yields when `low` exceeds `high`."""
    lo, hi = getattr(section, low), getattr(section, high)
    if lo > hi:
        yield f"{low}/{high}", f"need {need}, got {lo!r} > {hi!r}"


WS_URL, HTTP_URL = url("ws", "wss"), url("http", "https")


def subset(*choices: str) -> Rule:
    """A non-empty list of `choices`, each at most once."""
    text = ", ".join(choices)
    return Rule(
        lambda v: bool(v) and set(v) <= set(choices) and len(set(v)) == len(v),
        f"must list one or more of {text}, each once, got {{value!r}}",
    )


def upper(symbols: tuple[str, ...], _problems: list[str]) -> tuple[str, ...]:
    return tuple(s.upper() for s in symbols)
