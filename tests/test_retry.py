"""The one failure policy: which errors each loop retries, and the backoff: jittered,
geometric, capped, reset after success."""

from __future__ import annotations

import random

import aiohttp
import asyncpg

from collector.exceptions import ConfigError, MalformedPayload, MigrationError
from collector.retry import (
    CLOCK_SYNC_RETRY,
    COMPONENT_RESTART,
    DATABASE_WAIT,
    REST_ATTEMPTS,
    REST_CLOCK_RESYNCS,
    REST_LIMITS_RETRY_S,
    WS_ROTATION_RETRY_S,
    Attempt,
    AttemptBudget,
    Backoff,
    Policy,
    classify,
    exchange_info_retry,
    is_data_error,
    is_fatal,
    is_transient,
    is_transient_response,
    poll_database_retry,
    poll_retry,
    rest_retry,
    rollup_retry,
    ws_reconnect,
)


def test_backoff_grows_geometrically_with_jitter_up_to_the_cap_and_resets() -> None:
    """Each delay lies in [d/2, d] for d = initial * 2**n capped at max; reset starts over."""
    backoff = Backoff(1.0, 10.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(7)]
    for n, delay in enumerate(delays):
        ceiling = min(10.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] <= 10.0
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_attempt_budget_books_at_most_limit_attempts_per_window() -> None:
    """Three attempts per 10 s: the fourth waits for the first to leave the window, and so on."""
    now = [100.0]
    budget = AttemptBudget(3, 10.0, clock=lambda: now[0])
    assert [budget.reserve() for _ in range(3)] == [100.0, 100.0, 100.0]
    assert budget.reserve() == 110.0
    assert budget.reserve(105.0) == 110.0
    assert budget.reserve(111.0) == 111.0
    now[0] = 200.0
    assert [budget.reserve() for _ in range(3)] == [200.0, 200.0, 200.0]


def test_each_kind_of_attempt_classifies_as_its_loop_did() -> None:
    """The one table keeps each loop's rules: a new connection waits out any server answer but
    a refusal, a refresh retries bad answers and any database error, and SQL on an open
    connection retries only the database's transient classes."""
    refusals = [
        asyncpg.InvalidCatalogNameError("x"),
        asyncpg.InvalidPasswordError("x"),
        asyncpg.InsufficientPrivilegeError("x"),
    ]
    busy = [asyncpg.TooManyConnectionsError("x"), asyncpg.CannotConnectNowError("x")]
    for exc in [*busy, asyncpg.FeatureNotSupportedError("x"), ConnectionRefusedError()]:
        assert is_transient(exc, Attempt.CONNECT), exc
    for exc in [*refusals, asyncpg.ClientConfigurationError("x"), ConfigError(["x"])]:
        assert not is_transient(exc, Attempt.CONNECT), exc
    for exc in [
        *refusals,
        MalformedPayload("HTTP 503"),
        asyncpg.UndefinedTableError("x"),
        asyncpg.ClientConfigurationError("x"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
    ]:
        assert is_transient(exc, Attempt.REFRESH), exc
    for exc in [KeyError("x"), ConfigError(["x"])]:
        assert not is_transient(exc, Attempt.REFRESH), exc
    assert is_transient(aiohttp.ServerDisconnectedError())
    assert is_transient(asyncpg.SerializationError("x"))
    for exc in [
        *refusals,
        asyncpg.FeatureNotSupportedError("x"),
        asyncpg.UniqueViolationError("x"),
        MalformedPayload("x"),
        KeyError("x"),
    ]:
        assert not is_transient(exc), exc
    assert classify(KeyError("x")).reason == "anything else is a bug: it propagates"


def test_fatal_errors_and_rejected_data_are_named_by_the_policy() -> None:
    """Configuration and migration errors are fatal; SQLSTATE classes 22 and 23 are bad data."""
    assert is_fatal(ConfigError(["x"]))
    assert is_fatal(MigrationError("0001_x.sql", RuntimeError("boom")))
    assert not is_fatal(RuntimeError("boom"))
    assert is_data_error(asyncpg.UniqueViolationError("x"))
    assert is_data_error(asyncpg.UntranslatableCharacterError("x"))
    assert not is_data_error(asyncpg.UndefinedTableError("x"))


def test_rest_answers_worth_retrying() -> None:
    """5xx, 408, the WAF's 403 and Binance's UNKNOWN/DISCONNECTED/TIMEOUT/busy codes are retried;
    other 4xx answers are not."""
    for status, code in [(500, None), (503, -1008), (403, None), (408, None), (400, -1001)]:
        assert is_transient_response(status, code), (status, code)
    for status, code in [(400, -1102), (404, None), (401, -2015)]:
        assert not is_transient_response(status, code), (status, code)


def test_policies_start_low_and_cap() -> None:
    """Every named policy starts below its cap; the component restart resets after 5 minutes."""
    for policy in [
        COMPONENT_RESTART,
        DATABASE_WAIT,
        rollup_retry(30.0),
        exchange_info_retry(1.0, 3600.0),
    ]:
        assert 0 < policy.initial_s <= policy.max_s
        backoff = policy.backoff(random.Random(1))
        assert all(d <= policy.max_s for d in (backoff.next_delay() for _ in range(20)))
    assert COMPONENT_RESTART.healthy_after_s == 300.0
    assert rollup_retry(30.0).max_s == 120.0
    assert exchange_info_retry(0.05, 3600.0).initial_s == 0.25


def test_the_loops_moved_into_retry_keep_their_figures() -> None:
    """The REST, clock and websocket figures named in retry.py are the ones their loops used."""
    assert poll_retry(30.0, 900.0) == Policy(30.0, 900.0)
    assert poll_retry(0.2, 0.1) == Policy(0.2, 0.2)  # never below the poll interval
    assert poll_database_retry(0.5, 30.0) == Policy(0.5, 30.0)
    assert rest_retry(0.5, 8.0) == Policy(0.5, 8.0)
    assert ws_reconnect(1.0, 60.0) == Policy(1.0, 60.0)
    assert (CLOCK_SYNC_RETRY.initial_s, CLOCK_SYNC_RETRY.max_s) == (1.0, 60.0)
    assert (REST_ATTEMPTS, REST_CLOCK_RESYNCS) == (5, 2)
    assert (REST_LIMITS_RETRY_S, WS_ROTATION_RETRY_S) == (60.0, 60.0)
