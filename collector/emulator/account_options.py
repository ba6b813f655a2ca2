"""Options and counters of the account REST emulator: every documented default, and every ⚠
(undocumented) point of docs/binance.md as a switch, so tests can exercise each reading.

Pure data: `account_rest` applies the options and fills the counters.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from collector.emulator.account_limits import Clock, wall_clock_ms

DAY_MS: Final = 86_400_000


class SortOrder(StrEnum):
    """Row order of a list endpoint."""

    ASC = "asc"
    DESC = "desc"


class TimeField(StrEnum):
    """Which field `startTime`/`endTime` filter on (⚠ §4.5: undocumented)."""

    TIME = "time"
    UPDATE_TIME = "updateTime"


@dataclass(frozen=True, slots=True)
class AccountOptions:
    """How the account endpoints behave. Defaults follow docs/binance.md; ⚠ items are switchable."""

    clock: Clock = wall_clock_ms
    """"Now" in ms for server time, minute windows, bans, retention and late rows."""
    skew_ms: Mapping[str, int] = field(default_factory=dict)
    """Per host (fapi, dapi, papi, sapi): server clock = clock() + skew. Provokes -1021."""
    futures_weight_limit: int | None = None
    """fapi + dapi weight per minute (§3.1); None = EmulatorOptions.weight_limit_1m (2400)."""
    papi_weight_limit: int = 6000
    """⚠ §3.1: unconfirmed (third parties say 6000 or 3000)."""
    sapi_weight_limit: int = 12000
    """Per `/sapi` endpoint, independent budgets (§3.1)."""
    api_weight_limit: int = 6000
    """`/api/v3/*` on the sapi host (time, ping)."""
    is_futures_retry_after_sent: bool = True
    """⚠ §3.2: the futures docs do not promise `Retry-After` on 429/418 (fapi, dapi, papi); the
    sapi host (`/sapi`, `/api`) always sends it."""
    ban_after_429s: int = 3
    """429s per minute an IP may ignore before its next over-limit request draws a 418 and a ban."""
    ban_base_s: int = 120
    """First ban length; doubles per repeat offence up to 3 days (§3.2)."""
    futures_sort: SortOrder = SortOrder.ASC
    """⚠ §4.5: order of the four limit-style endpoints (futures general info says ascending)."""
    papi_margin_sort: SortOrder = SortOrder.DESC
    """⚠ §4.2: undocumented for /papi/v1/margin/forceOrders."""
    sapi_sort: SortOrder = SortOrder.DESC
    """§4.2: "Response in descending order"."""
    filter_field: TimeField = TimeField.TIME
    """⚠ §4.5: the field limit-style windows filter on (page-style ones use updatedTime)."""
    is_start_inclusive: bool = True
    """⚠ §4.5: whether a row at exactly `startTime` is in the window."""
    is_end_inclusive: bool = True
    """⚠ §4.5: whether a row at exactly `endTime` is in the window."""
    dapi_default_window_days: int = 200
    """⚠ §4.1: dapi's window without startTime, 200 days per docs (90 per 2026 connectors)."""
    um_retention_days: int | None = None
    """History kept for fapi and papi um; None = all."""
    cm_retention_days: int | None = 90
    """⚠ §4.1: dapi and papi cm keep about 90 days."""
    margin_retention_days: int | None = None
    """History kept for the margin endpoints; None = all."""
    is_retention_error: bool = False
    """A startTime before the retention: False = serve the rows still kept, True = -1130."""
    max_span_hours: int | None = None
    """⚠ §4.5: a maximum endTime - startTime (-1127 beyond it); None = no maximum."""
    is_unknown_param_rejected: bool = True
    """Parameters an endpoint does not take draw -1104 (§5)."""
    is_isolated_symbol_required: bool = True
    """sapi forceLiquidationRec without `isolatedSymbol` returns only cross-margin rows."""
    has_schema_drift: bool = False
    """Add the 2026 connector fields (§4.1): pair/cumBase on fapi, goodTillDate/cumQuote on dapi."""
    signed_log_size: int = 256
    """How many signed requests `stats.signed` keeps."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("papi_weight_limit", "sapi_weight_limit", "api_weight_limit", "ban_base_s"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.futures_weight_limit is not None and self.futures_weight_limit < 1:
            problems.append("futures_weight_limit must be >= 1")
        if self.ban_after_429s < 0:
            problems.append("ban_after_429s must be >= 0")
        if self.dapi_default_window_days < 1:
            problems.append("dapi_default_window_days must be >= 1")
        if problems:
            raise ValueError("invalid AccountOptions: " + "; ".join(problems))


@dataclass(slots=True)
class SignedRequest:
    """One signed request as received: what was verified, byte for byte, and the verdict."""

    host: str
    path: str
    api_key: str
    payload: str
    """Raw query string minus `&signature=…`, plus the raw body: exactly what was verified."""
    signature: str
    """The signature parameter, percent-decoded."""
    code: int = 0
    """0 if the request passed the signature and timestamp checks, else the error code."""


@dataclass(slots=True)
class AccountStats:
    """Counters tests assert on ("zero 429s", "no 418", "weight never above N")."""

    requests: Counter[str] = field(default_factory=Counter)
    """Matched requests per route path, on all four REST hosts, whatever the outcome."""
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)
    """(route path, HTTP status) → count."""
    errors: Counter[int] = field(default_factory=Counter)
    """Binance error code (-1022, -2015, …; -1003 for 429/418) → count."""
    rate_limited_429: int = 0
    minutes_429: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    """Pool name → the minutes (epoch ms // 60000) in which that pool answered a 429."""
    banned_418: int = 0
    faults_served: int = 0
    """Scripted 5xx answers."""
    stalls: int = 0
    """Scripted stalls started."""
    stalled_now: int = 0
    """Responses currently held by a stall."""
    max_used_weight: Counter[str] = field(default_factory=Counter)
    """Highest used weight reported per pool (futures, papi, api, each sapi path)."""
    signed: deque[SignedRequest] = field(default_factory=deque)
    """The most recent signed requests, oldest first."""
