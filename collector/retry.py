"""The one failure policy: which errors are worth retrying, and how long to wait between tries.

Classification (`is_transient`, `is_fatal`, `is_data_error`) is a table of rules, each with its
reason, first match wins. Three outcomes, three places that act on them:

- transient: the loop that tried retries the same operation after a backoff (the writer keeps
  its batch, the rollup its pass, a REST request its attempt, start-up its connection);
- fatal (`is_fatal`): a person must fix the configuration or the schema; the process exits
  non-zero at once, whoever meets it;
- anything else is permanent for that operation: rejected data is dead-lettered by the writer,
  a bug propagates to the supervisor, which restarts its component with backoff.

Backoff is one shape for every loop (`Backoff`: jittered, geometric, capped, reset after
success, as websockets' `backoff()`), with the bases, caps and reset rules of each loop named
below (`Policy`), beside the attempt limits and fixed retry delays, each with its reason.
Protocol figures (Binance's ban and WAF pauses, its rate-limit minute) stay where they are
used, with their doc links.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import aiohttp
import asyncpg

from collector.exceptions import ConfigError, MalformedPayload, MigrationError

# --- Classification -------------------------------------------------------------------------


class Attempt(StrEnum):
    """What was being attempted: a few rules hold only for some kinds of attempt."""

    OPERATION = "operation"  # SQL on an open connection, an HTTP request (writer, rollup, REST)
    CONNECT = "connect"  # opening a connection to the database at start
    REFRESH = "refresh"  # one pass of a periodic refresh (exchangeInfo); the next pass asks anew


_EVERY = frozenset(Attempt)


@dataclass(frozen=True, slots=True)
class Rule:
    """One classification rule: an error matching `types` (and, for a server error, one of the
    SQLSTATE prefixes in `sqlstates`) during one of `during` is transient or not, for `reason`."""

    transient: bool
    reason: str
    types: tuple[type[BaseException], ...]
    sqlstates: tuple[str, ...] | None = None
    during: frozenset[Attempt] = _EVERY

    def matches(self, exc: BaseException, during: Attempt) -> bool:
        """Whether this rule decides for `exc` met during `during`."""
        if during not in self.during or not isinstance(exc, self.types):
            return False
        if self.sqlstates is None:
            return True
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return any(
            sqlstate == prefix if len(prefix) != 2 else sqlstate[:2] == prefix
            for prefix in self.sqlstates
        )


_PG = asyncpg.PostgresError
# Errors no restart can cure: a person must fix the configuration or a migration.
FATAL_ERRORS: tuple[type[Exception], ...] = (ConfigError, MigrationError)

# A new connection refused for good: asking again gets the same answer until a person acts.
# `db.connection.permanent_problem` says what to fix for each.
PERMANENT_REFUSALS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidCatalogNameError,  # 3D000: no such database
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000, 28P01: the login is refused
    asyncpg.InsufficientPrivilegeError,  # 42501: no CONNECT privilege
    asyncpg.ClientConfigurationError,  # the driver cannot use the DSN
)

# fmt: off
RULES: tuple[Rule, ...] = (
    Rule(False, "a person must fix the configuration or a migration", FATAL_ERRORS),
    Rule(True, "a refresh asks anew next pass: a bad answer or a database error is not for good",
         (MalformedPayload, _PG, asyncpg.InterfaceError),
         during=frozenset({Attempt.REFRESH})),
    Rule(False, "the database refuses this login for good", PERMANENT_REFUSALS),
    Rule(True, "the network: refused, reset, unreachable or timed out", (OSError, TimeoutError)),
    Rule(True, "HTTP transport trouble (aiohttp's connection and payload errors)",
         (aiohttp.ClientError,)),
    # InternalClientError: asyncpg's protocol state after the server vanished mid-operation
    # (e.g. "cannot switch to state 15; another operation is in progress" on ROLLBACK).
    Rule(True, "asyncpg lost its connection, or its protocol state with it",
         (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)),
    Rule(True, "a server that answers a new connection with anything but a refusal is starting, "
         "recovering or full: it is waited out", (_PG,), during=frozenset({Attempt.CONNECT})),
    Rule(True, "connection exception", (_PG,), ("08",)),
    Rule(True, "serialization failure or deadlock: the transaction can run again", (_PG,), ("40",)),
    Rule(True, "insufficient resources (disk, memory, connections)", (_PG,), ("53",)),
    Rule(True, "not accepting connections for now, or a lock not available", (_PG,), ("55",)),
    Rule(True, "operator intervention: the server shuts down or restarts (57P0x)", (_PG,), ("57",)),
    Rule(True, "the server's own I/O or internal error", (_PG,), ("58", "XX")),
    Rule(True, "a read-only transaction: a standby not yet promoted after a failover",
         (_PG,), ("25006",)),
    Rule(True, "a server error without a SQLSTATE says nothing about the data", (_PG,), ("",)),
    Rule(False, "the data itself is rejected (22 data exception, 23 integrity constraint)",
         (_PG,), ("22", "23")),
    Rule(False, "any other server error (42: a missing table, bad SQL) recurs on every retry",
         (_PG,)),
    Rule(False, "anything else is a bug: it propagates", (BaseException,)),
)
# fmt: on


def classify(exc: BaseException, during: Attempt = Attempt.OPERATION) -> Rule:
    """The first rule of `RULES` that decides for `exc` (the last one decides for anything)."""
    return next(rule for rule in RULES if rule.matches(exc, during))


def is_transient(exc: BaseException, during: Attempt = Attempt.OPERATION) -> bool:
    """True for failures that retrying the same operation later can cure (see `RULES`).

    Connection loss, timeouts, a server restarting or shutting down (57P0x), resource pressure
    (53), serialization failures (40), a database that does not accept connections for now or a
    lock not available (55) and a standby not yet promoted (25006) are transient. Rejected data
    (22, 23), programming errors (42), configuration and migration errors and bugs are not.
    """
    return classify(exc, during).transient


def is_fatal(exc: BaseException) -> bool:
    """True for `FATAL_ERRORS`: the process exits non-zero on them; a component failing with
    anything else is restarted."""
    return isinstance(exc, FATAL_ERRORS)


def is_data_error(exc: BaseException) -> bool:
    """True when Postgres rejected the data itself (SQLSTATE class 22 or 23): the row is
    dead-lettered, the rest of its batch commits."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in ("22", "23")


# Binance's answers to a REST request (docs/binance.md §3.2, §5): 5xx and 408 are Binance-side
# trouble and a GET can simply be sent again; 403 is the WAF limiting us (for minutes); these
# error codes are UNKNOWN, DISCONNECTED, TIMEOUT and "server busy". 418/429 (bans, rate limits)
# and -1021 (clock) are waited out by the REST client itself, by their own rules.
TRANSIENT_HTTP_STATUSES = frozenset({403, 408})
TRANSIENT_BINANCE_CODES = frozenset({-1000, -1001, -1007, -1008})


def is_transient_response(status: int, code: int | None) -> bool:
    """True when a REST answer with HTTP `status` and Binance error `code` is worth retrying."""
    return status >= 500 or status in TRANSIENT_HTTP_STATUSES or code in TRANSIENT_BINANCE_CODES


# --- Backoff --------------------------------------------------------------------------------


@dataclass(slots=True)
class Backoff:
    """Delays for successive retries: `initial_s * factor**n`, capped, with full jitter in
    [delay/2, delay]. `reset()` after a success starts over."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        delay = min(self.max_s, self.initial_s * self.factor**self.attempt)
        self.attempt += 1
        return delay / 2 + self.rng.random() * delay / 2

    def reset(self) -> None:
        """Start over after a success."""
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class Policy:
    """One loop's backoff: its first delay, its cap, and (for loops whose success is a long
    run, not one answer) how long a run must last to count as a success and start over."""

    initial_s: float
    max_s: float
    healthy_after_s: float | None = None

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        """A fresh `Backoff` following this policy."""
        return Backoff(self.initial_s, self.max_s, rng=rng or random.Random())


# A failed component (supervisor.supervise): 1 s lets a passing crash heal at once, 60 s keeps a
# crash loop from flooding the log; a run of 5 minutes was healthy, so its next failure starts
# again at 1 s instead of where a crash loop long ago left off.
COMPONENT_RESTART = Policy(1.0, 60.0, healthy_after_s=300.0)
# Waiting for the database at start (db.connection.wait_for_database): a server that is starting
# (the embedded one, compose's) answers within seconds; at most 30 s apart, its arrival is
# noticed soon after a long outage too. The wait ends at the first connection: no reset.
DATABASE_WAIT = Policy(1.0, 30.0)


def writer_retry(retry_initial_s: float, retry_max_s: float) -> Policy:
    """A batch that failed to commit ([writer] retry_*): each batch starts over, since a commit
    ends the outage that the growing delays measured."""
    return Policy(retry_initial_s, retry_max_s)


# A REST request is sent at most this many times for network trouble or a transient answer.
REST_ATTEMPTS = 5
# A -1021 (timestamp outside recvWindow) is answered by a clock resync and a resend, at most this
# many times per request: one still rejected after two fresh offsets fails instead of looping.
REST_CLOCK_RESYNCS = 2
# exchangeInfo's weight limits could not be read (rest.client.limits_ready): ask again a minute
# later, not at the next `exchange_info_refresh_s`, since the pool keeps the documented figure
# (or what a 429 taught) meanwhile, not the announced one.
REST_LIMITS_RETRY_S = 60.0


def rest_retry(retry_initial_s: float, retry_max_s: float) -> Policy:
    """One REST request's attempts ([rest] retry_*), at most `REST_ATTEMPTS` per request: a
    request that outlasts them fails, and its poller backs off by its own policy."""
    return Policy(retry_initial_s, retry_max_s)


def poll_retry(poll_interval_s: float, failure_backoff_max_s: float) -> Policy:
    """A failed poll of one account scope (rest.pollers): the first retry comes one poll
    interval later, as the next poll would, doubling up to [rest] poll_failure_backoff_max_s
    (never below the interval, so a failing scope never polls faster than a healthy one). A
    poll that succeeds resets it."""
    return Policy(poll_interval_s, max(poll_interval_s, failure_backoff_max_s))


def poll_database_retry(retry_initial_s: float, retry_max_s: float) -> Policy:
    """A database outage met by an account poller ([rest] retry_*): waited out without an
    attempt cap, with what was fetched kept in memory; every operation starts over."""
    return Policy(retry_initial_s, retry_max_s)


# A failed server-time sync (rest.clock): 1 s lets a passing error heal at once; at most a minute
# apart, since the requests of that family wait for the offset meanwhile. A good sync resets it.
CLOCK_SYNC_RETRY = Policy(1.0, 60.0)


def ws_reconnect(reconnect_initial_s: float, reconnect_max_s: float) -> Policy:
    """Reconnecting a websocket shard ([binance] reconnect_*) after a failed attempt: a connect
    that failed, a session that ended unconfirmed, or one our own reader failed (a bug, so that
    a frame that kills every session cannot make us hammer the server). A confirmed connection
    resets it; one that ends after being confirmed is replaced at once (after at most
    `reconnect_jitter_s`), not by this policy."""
    return Policy(reconnect_initial_s, reconnect_max_s)


# A make-before-break rotation whose new connection failed is tried again this much later: the
# old connection keeps the streams covered meanwhile, and (at the default `rotate_after_s`) the
# 24 h cut is an hour away.
WS_ROTATION_RETRY_S = 60.0


def rollup_retry(interval_s: float) -> Policy:
    """A rollup pass the database could not run: from 1 s up to four intervals, so the rollups
    lag at most a few passes behind a database that is back. A pass that runs resets it."""
    return Policy(1.0, max(interval_s, 1.0) * 4)


def exchange_info_retry(reconnect_initial_s: float, refresh_s: float) -> Policy:
    """A failed exchangeInfo refresh: it is not urgent (rows wait for a contract size at most),
    so the first retry waits five websocket reconnect delays, and never longer than the regular
    refresh interval. A refresh that succeeds resets it."""
    return Policy(reconnect_initial_s * 5, refresh_s)


class AttemptBudget:
    """At most `limit` attempts in any `window_s`: `reserve(at)` books the earliest slot at or
    after `at` and returns it. Sliding window; the clock is injectable."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._booked: deque[float] = deque()

    def reserve(self, at: float | None = None) -> float:
        """Book one attempt no earlier than `at` (default now); return its time."""
        at = self._clock() if at is None else at
        booked = self._booked
        while booked and booked[0] <= at - self._window_s:
            booked.popleft()
        if len(booked) >= self._limit:
            at = max(at, booked.popleft() + self._window_s)
        booked.append(at)
        return at


async def sleep_or_stop(delay_s: float, stop: asyncio.Event) -> bool:
    """Sleep `delay_s` unless `stop` is set first; return True when stopped."""
    try:
        async with asyncio.timeout(delay_s):
            await stop.wait()
    except TimeoutError:
        return False
    return True
