"""OKX's history for gap repair: `GET /api/v5/public/liquidation-orders` (docs/okx.md section 2.2).

`OkxHistory.read_back(start, end)` pages back from `end` per scope (a SWAP instrument family, a
FUTURES family and `alias`, MARGIN as a whole), `state=filled`, `limit=100`, until it passes
`start`, the endpoint runs out, or its one-day look-back ends, within `repair_requests_per_2s`
(OKX allows 40 per 2 s per IP). Rows parse with `okx_parse.parse_liquidation_orders`, which
gives them the stream's content keys. The endpoint is missing from OKX's current documentation,
so it is best effort: a 404 or an error code raises `HistoryUnavailable` (repair is switched
off); a rate limit, a 5xx or the network raise `HistoryFailed` (this gap is given up). The
mechanism is `repair.GapRepairer`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import structlog

from collector.config import OkxConfig
from collector.exceptions import MalformedPayload
from collector.metrics import Metrics
from collector.retry import AttemptBudget
from collector.sources.okx_parse import CHANNEL, OkxInstrument, parse_liquidation_orders
from collector.sources.repair import HistoryFailed, HistoryUnavailable, ReadBack
from collector.venues import Venue, VenueApiError, VenueLiquidation

log = structlog.get_logger(__name__)

PATH = "/api/v5/public/liquidation-orders"
PAGE_LIMIT = 100
"""The documented maximum of `limit` (section 2.2)."""
LOOK_BACK = timedelta(days=1)
""""Retrieve information on liquidation orders in the last day" (section 2.2)."""
# Our clock and OKX's may differ a little: never claim the last minute of the look-back.
_LOOK_BACK_MARGIN = timedelta(minutes=1)
RATE_WINDOW_S = 2.0
# A 429 (code 50011) is waited out for one window this many times before the gap is given up.
RATE_LIMIT_RETRIES = 3
# Pages per scope (family, alias) and gap, a stop for a history that never ends.
MAX_PAGES = 200
_ONE_MS = timedelta(milliseconds=1)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def stream_name(inst_type: str) -> str:
    """The ledger's name of one instType's subscription: `liquidation-orders:SWAP`."""
    return f"{CHANNEL}:{inst_type}"


class OkxHistory:
    """OKX's REST read-back of `liquidation-orders` (a `repair.History`), one stream per
    configured instType."""

    venue = Venue.OKX
    source = "rest:okx:liquidation-orders"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        config: OkxConfig,
        instruments: Mapping[str, OkxInstrument],
        metrics: Metrics,
        *,
        clock: Clock = _utc_now,
    ) -> None:
        self._http = http
        self._config = config
        self._instruments = instruments
        self._metrics = metrics
        self._clock = clock
        self._url = config.rest_url.rstrip("/") + PATH
        self._budget = AttemptBudget(config.repair_requests_per_2s, RATE_WINDOW_S)
        self.requests = 0

    def scopes(self, inst_type: str) -> Sequence[dict[str, str]]:
        """What to read of `inst_type`, as request parameters: each known SWAP family (the
        endpoint requires one), each known FUTURES family and alias (the parameter table calls
        `alias` required for FUTURES: docs/okx.md section 2.2), MARGIN as a whole. Empty while
        no family of a SWAP/FUTURES type is known."""
        if inst_type == "MARGIN":
            return [{}]
        scopes = {
            (i.inst_family, i.alias if inst_type == "FUTURES" else "")
            for i in self._instruments.values()
            if i.inst_type == inst_type and i.inst_family
        }
        return [
            {"instFamily": family, **({"alias": alias} if alias else {})}
            for family, alias in sorted(scopes)
        ]

    async def read_back(self, start: datetime, end: datetime) -> list[ReadBack]:
        """Every filled liquidation of `[start, end)` the endpoint holds, per instType stream
        (see the module). A SWAP/FUTURES type none of whose families is known yet is left out."""
        now = self._clock()
        start = max(start, now - timedelta(seconds=self._config.repair_lookback_s))
        floor = now - LOOK_BACK + _LOOK_BACK_MARGIN
        out = []
        for inst_type in self._config.inst_types:
            scopes = self.scopes(inst_type)
            if not scopes:
                log.warning("okx.repair_no_families", inst_type=inst_type)
                continue
            before = self.requests
            rows: list[VenueLiquidation] = []
            covered = start
            for scope in scopes:
                found, complete_from = await self._scope(inst_type, scope, start, end, floor)
                rows += found
                covered = max(covered, complete_from)
            out.append(ReadBack(stream_name(inst_type), rows, covered, self.requests - before))
        if not out:
            raise HistoryFailed("no SWAP/FUTURES instrument family known yet")
        return out

    async def _scope(
        self, inst_type: str, scope: dict[str, str], start: datetime, end: datetime,
        floor: datetime,
    ) -> tuple[list[VenueLiquidation], datetime]:  # fmt: skip
        """The rows of one scope (family, alias) in `[start, end)` and from when on they are
        complete."""
        seen: set[bytes] = set()
        rows: list[VenueLiquidation] = []
        after = _ms(end)
        oldest = end
        for _ in range(MAX_PAGES):
            params = {"instType": inst_type, **scope, "state": "filled",
                      "limit": str(PAGE_LIMIT), "after": str(after)}  # fmt: skip
            page = await self._page(params)
            fresh = [r for r in page if r.content_key not in seen]
            seen.update(r.content_key for r in fresh)
            rows += [r for r in fresh if start <= r.trade_time < end]
            if len(page) < PAGE_LIMIT:  # the endpoint has nothing older
                return rows, max(start, floor)
            oldest = min(r.trade_time for r in page)
            if oldest < start:
                return rows, start
            if not fresh:  # a full page of one millisecond: complete only after it
                return rows, oldest + _ONE_MS
            # `after` is exclusive: ask again from the oldest millisecond, whose other rows
            # may not have fit in this page (the keys drop what was seen).
            after = _ms(oldest) + 1
        return rows, oldest + _ONE_MS

    async def _page(self, params: dict[str, str]) -> list[VenueLiquidation]:
        venue = self.venue.value
        requests = self._metrics.venue_repair_requests
        for _ in range(RATE_LIMIT_RETRIES + 1):
            await self._pace()
            self.requests += 1
            try:
                async with self._http.get(
                    self._url, params=params,
                    timeout=aiohttp.ClientTimeout(total=self._config.open_timeout_s),
                ) as response:  # fmt: skip
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                requests.labels(venue, "failed").inc()
                raise HistoryFailed(repr(exc)) from exc
            if status == 404:
                requests.labels(venue, "not_found").inc()
                raise HistoryUnavailable(f"HTTP 404 from {PATH}")
            code = _code(body)
            if status == 429 or code == "50011":
                requests.labels(venue, "rate_limited").inc()
                await asyncio.sleep(RATE_WINDOW_S)
                continue
            if code is not None and code != "0":
                requests.labels(venue, "error_code").inc()
                raise HistoryUnavailable(f"HTTP {status}, code {code} from {PATH}")
            if status != 200:
                requests.labels(venue, "failed").inc()
                raise HistoryFailed(f"HTTP {status} from {PATH}: {body[:200]!r}")
            try:
                rows = parse_liquidation_orders(
                    body, received_at=self._clock(), instruments=self._instruments
                )
            except (MalformedPayload, VenueApiError) as exc:
                requests.labels(venue, "failed").inc()
                raise HistoryFailed(str(exc)) from exc
            requests.labels(venue, "ok").inc()
            return rows
        raise HistoryFailed(f"rate limited {RATE_LIMIT_RETRIES + 1} times by {PATH}")

    async def _pace(self) -> None:
        """Wait for a slot within `repair_requests_per_2s`."""
        now = time.monotonic()
        at = self._budget.reserve(now)
        if at > now:
            await asyncio.sleep(at - now)


def _code(body: bytes) -> str | None:
    """The `code` of an OKX JSON body, or None when the body is not one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = obj.get("code") if isinstance(obj, dict) else None
    return code if isinstance(code, str) else None
