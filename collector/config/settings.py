"""How a section is declared: a frozen dataclass whose fields are `setting(default, rule)`, with
an optional `validate()` yielding `(settings, problem)` for rules that span fields; the shared
rules, ranges and field groups; `Secret`; the StrEnums that settings take.

The sections are `sections` (database, Binance, writer, HTTP, log, REST, accounts and `Config`),
`sections_venues` (`[venues]`, `[bybit]`, `[okx]`) and `sections_out` (`[feed]`, `[[alerts]]`).
`collector.config.loader` reads the file and the environment into any of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit


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


def between(low: float, high: float, *, above: bool = False, note: str = "") -> Rule:
    """`low..high`; above `low` (not at it) when `above`. NaN fails every comparison."""
    low_s, high_s = (str(int(x)) if float(x).is_integer() else repr(x) for x in (low, high))
    text = f"must be above {low_s} and at most {high_s}" if above else f"must be {low_s}..{high_s}"
    return Rule(
        lambda v: (v > low if above else v >= low) and v <= high and not math.isnan(v),
        f"{text}{note}, got {{value!r}}",
    )


def one_of(*choices: str, ignore_case: bool = False) -> Rule:
    """One of `choices` (compared in lower case when `ignore_case`)."""
    text = f"must be {', '.join(choices[:-1])} or {choices[-1]}"
    return Rule(lambda v: (v.lower() if ignore_case else v) in choices, text)


def url(*schemes: str) -> Rule:
    """A URL with one of `schemes` (a `Secret` one is checked, and quoted as `<SECRET>`)."""
    text = " or ".join(f"{s}://" for s in schemes)
    return Rule(
        lambda v: urlsplit(v.reveal() if isinstance(v, Secret) else v).scheme in schemes,
        f"must start with {text}, got {{value!r}}",
    )


def subset(*choices: str) -> Rule:
    """A non-empty list of `choices`, each at most once."""
    return Rule(
        lambda v: bool(v) and set(v) <= set(choices) and len(set(v)) == len(v),
        f"must list one or more of {', '.join(choices)}, each once, got {{value!r}}",
    )


Convert = Callable[[Any, list[str]], Any]


def setting(
    default: Any = dataclasses.MISSING,
    rule: Rule | None = None,
    *,
    convert: Convert | None = None,
    credential: bool = False,
) -> Any:
    """A field with its `rule` (no `default`: required). `convert(value, problems)` normalises a
    value that was set. A `credential` (never shown in reprs) is read in a `[[...]]` table from
    the variable `<name>_env` names or the file `<name>_file` names, never from the TOML."""
    meta = {"rule": rule, "convert": convert, "credential": credential}
    return dataclasses.field(default=default, repr=not credential, metadata=meta)


def ordered(section: object, low: str, high: str, need: str) -> Iterator[tuple[str, str]]:
    """The `(settings, problem)` a section's `validate()` yields when `low` exceeds `high`."""
    lo, hi = getattr(section, low), getattr(section, high)
    if lo > hi:
        yield f"{low}/{high}", f"need {need}, got {lo!r} > {hi!r}"


def upper(symbols: tuple[str, ...], _problems: list[str]) -> tuple[str, ...]:
    return tuple(s.upper() for s in symbols)


DAY = 86400.0
WEEK = 7 * DAY
# Every number has a range. Durations are above 0 (a zero or negative interval would spin); the
# maxima catch unit mistakes (ms for s) and typos.
UP_TO_10MIN = between(0, 600, above=True)
UP_TO_HOUR = between(0, 3600, above=True)
UP_TO_DAY = between(0, DAY, above=True)
UP_TO_WEEK = between(0, WEEK, above=True)
WS_URL, HTTP_URL = url("ws", "wss"), url("http", "https")


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The settings every venue's websocket client shares ([binance], [bybit], [okx]): a section
    that inherits them lists them first. Backoff over consecutive failed attempts (connect,
    upgrade, subscribe) from `reconnect_initial_s` up to `reconnect_max_s`; a confirmed
    connection resets it, and one that ends (for any reason) is replaced after a random delay in
    [0, `reconnect_jitter_s`], not after a backoff."""

    open_timeout_s: float = setting(10.0, UP_TO_10MIN)
    reconnect_initial_s: float = setting(1.0, UP_TO_HOUR)
    reconnect_max_s: float = setting(60.0, UP_TO_DAY)
    reconnect_jitter_s: float = setting(0.25, between(0, 60))

    def validate(self) -> Iterator[tuple[str, str]]:
        yield from ordered(self, "reconnect_initial_s", "reconnect_max_s", "initial <= max")
