"""Alerts on their durable cursor: what committed while the alerts were down is alerted when they
are back (rows older than the max age skipped and counted), two replicas send each alert once
(the claim in alert_claims), the webhook URL from `url_file`, and the configuration errors of
`[[alerts]]` and `[nats]` exiting 2 with one message."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.config import AlertConfig, AlertKind, FeedConfig, Secret, load_config
from collector.exceptions import ConfigError
from collector.out.alerts import Alerts
from tests.daemon import eventually, metric_value
from tests.factories import NOW, liquidation
from tests.feed_harness import Served, insert, served
from tests.test_feed_alerts import receiving

FRESH = NOW + timedelta(minutes=1)  # the alerts' wall clock: the factories' rows are fresh


def large(url: str = "", **kwargs: Any) -> AlertConfig:
    settings: dict[str, Any] = {"name": "big", "url": Secret(url) if url else None,
                                "min_notional_usd": 100.0, "retry_initial_s": 0.01,
                                "retry_max_s": 0.02, **kwargs}  # fmt: skip
    return AlertConfig(**settings)


@contextlib.asynccontextmanager
async def alerts_on(
    s: Served, *rules: AlertConfig, cursor: str = "alerts"
) -> AsyncIterator[Alerts]:
    """Alerts following `s`'s feed on the durable cursor `cursor`, until the context ends."""
    alerts = Alerts(rules, s.feed, FeedConfig(alerts_cursor=cursor), s.metrics, now=lambda: FRESH)
    stop = asyncio.Event()
    task = asyncio.create_task(alerts.run(stop))
    try:
        await eventually(lambda: alerts.cursor.position is not None, what="the cursor loaded")
        yield alerts
    finally:
        stop.set()
        await task


async def last_cursor(pg: asyncpg.Connection) -> tuple[int, int]:
    row = await pg.fetchrow(
        "SELECT committed_xid::text::bigint, seq FROM liquidation_feed"
        " ORDER BY committed_xid DESC, seq DESC LIMIT 1"
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def stored(pg: asyncpg.Connection, name: str) -> tuple[int, int] | None:
    row = await pg.fetchrow(
        "SELECT committed_xid::text::bigint, seq FROM consumer_cursors WHERE name = $1", name
    )
    return None if row is None else (int(row[0]), int(row[1]))


def notional_of(body: dict[str, Any]) -> str:
    return str(body["liquidation"]["notional_usd"])


async def test_rows_committed_while_the_alerts_were_down_are_alerted_after_the_restart(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """One alert before the stop; while down, a fresh row and one received an hour earlier
    commit; after the restart (a new process: a new feed) the fresh one is alerted, the old one
    skipped and counted, the first not sent again."""
    old = liquidation(3, qty="0.020")._replace(received_at=NOW - timedelta(hours=1))
    async with receiving([]) as hook:
        async with served(pg_dsn) as s, alerts_on(s, large(hook.url)):
            await insert(pg, liquidation(1))
            at_stop = await last_cursor(pg)
            await eventually(lambda: stored(pg, "alerts"), lambda c: c == at_stop, timeout=60)
        assert len(hook.bodies) == 1
        await insert(pg, liquidation(2, qty="0.030"))
        await insert(pg, old)
        last = await last_cursor(pg)
        async with served(pg_dsn) as s, alerts_on(s, large(hook.url)):
            registry = s.metrics.registry
            await eventually(lambda: stored(pg, "alerts"), lambda c: c == last, timeout=60)
            skipped = metric_value(
                registry, "collector_alerts_rows_skipped_total", reason="too_old"
            )
            sent = metric_value(registry, "collector_alerts_sent_total", rule="big")
    assert [notional_of(b) for b in hook.bodies] == ["138.740", "297.300"]
    assert (skipped, sent) == (1, 1)
    claims = await pg.fetch("SELECT rule, sent_at IS NOT NULL AS sent FROM alert_claims")
    assert [(c["rule"], c["sent"]) for c in claims] == [("big", True), ("big", True)]


@pytest.mark.parametrize("shared_cursor", [False, True])
async def test_two_replicas_send_each_alert_once(
    pg_dsn: str, pg: asyncpg.Connection, shared_cursor: bool
) -> None:
    """Two processes' feeds and alerts on one database (their own cursors: each judges every
    row; or one shared cursor): three large liquidations and the cascade they make reach the
    receiver once each; the replica that did not claim an alert counts it `claimed`."""
    cascade = AlertConfig("cascade", None, kind=AlertKind.CASCADE, threshold_usd=250.0,
                          window_s=60.0, retry_initial_s=0.01, retry_max_s=0.02)  # fmt: skip
    async with receiving([]) as hook:
        rules = (
            large(hook.url),
            cascade.__class__(
                **{**{f: getattr(cascade, f) for f in cascade.__slots__}, "url": Secret(hook.url)}
            ),
        )
        names = ("alerts", "alerts") if shared_cursor else ("replica-a", "replica-b")
        async with (
            served(pg_dsn) as a, served(pg_dsn) as b,
            alerts_on(a, *rules, cursor=names[0]), alerts_on(b, *rules, cursor=names[1]),
        ):  # fmt: skip
            await insert(pg, liquidation(0), liquidation(1000), liquidation(2000))
            last = await last_cursor(pg)
            for name in set(names):
                await eventually(lambda n=name: stored(pg, n), lambda c: c == last, timeout=60)
            registries = (a.metrics.registry, b.metrics.registry)

            def total(metric: str, **labels: str) -> float:
                return sum(metric_value(r, metric, **labels) for r in registries)

            await eventually(lambda: total("collector_alerts_sent_total", rule="big") == 3)
            await eventually(lambda: total("collector_alerts_sent_total", rule="cascade") == 1)
            claimed_elsewhere = total(
                "collector_alerts_dropped_total", rule="big", reason="claimed"
            )
    assert sorted(b.get("kind") for b in hook.bodies) == ["cascade", "large", "large", "large"]
    assert len({str(b) for b in hook.bodies}) == 4
    if not shared_cursor:  # each replica judged every row: the other one's claims won
        assert claimed_elsewhere == 3
    claims = await pg.fetch("SELECT rule, key, sent_at IS NOT NULL AS sent FROM alert_claims")
    assert sorted(c["rule"] for c in claims) == ["big", "big", "big", "cascade"]
    assert all(c["sent"] for c in claims)
    cascade_key = next(c["key"] for c in claims if c["rule"] == "cascade")
    assert cascade_key == f"cascade:LONG:{1_795_000_001_000 // 60_000}"


async def test_the_webhook_url_comes_from_url_file(
    pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """`url_file` (a Docker/k8s secret) names the file holding the URL; it is posted to."""
    async with receiving([]) as hook:
        secret = tmp_path / "hook_url"
        secret.write_text(hook.url + "\n", encoding="utf-8")
        toml = tmp_path / "collector.toml"
        toml.write_text(
            f'[[alerts]]\nname = "big"\nurl_file = "{secret}"\nmin_notional_usd = 100\n',
            encoding="utf-8",
        )
        rule = load_config({}, toml).alerts[0]
        assert (rule.url, rule.url_file, rule.webhook_url()) == (
            None,
            str(secret),
            Secret(hook.url),
        )
        assert hook.url not in repr(rule)
        async with served(pg_dsn) as s, alerts_on(s, rule):
            await insert(pg, liquidation(0))
            await eventually(lambda: len(hook.bodies) == 1, timeout=60)
    assert hook.bodies[0]["liquidation"]["notional_usd"] == "138.740"


def _problems(tmp_path: Path, text: str) -> list[str]:
    toml = tmp_path / "collector.toml"
    toml.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config({}, toml)
    return caught.value.problems


def test_alert_and_nats_config_errors_name_the_setting(tmp_path: Path) -> None:
    """Both or neither of url and url_file, an unreadable url_file, and bad [nats] settings:
    each a problem naming its setting, never the URL."""
    hook = tmp_path / "hook"
    hook.write_text("https://hooks.example.invalid/T0KEN", encoding="utf-8")
    bad = tmp_path / "bad"
    bad.write_text("ftp://hooks.example.invalid/T0KEN", encoding="utf-8")
    problems = _problems(
        tmp_path,
        f"""
[[alerts]]
name = "both"
url = "https://hooks.example.invalid/T0KEN"
url_file = "{hook}"
min_notional_usd = 1
[[alerts]]
name = "neither"
min_notional_usd = 1
[[alerts]]
name = "missing"
url_file = "{tmp_path / "nope"}"
min_notional_usd = 1
[[alerts]]
name = "scheme"
url_file = "{bad}"
min_notional_usd = 1
[nats]
enabled = true
servers = ["http://127.0.0.1:4222"]
stream = "a.b"
subject_prefix = "liq.*"
credentials_file = "{tmp_path / "creds"}"
retry_initial_s = 10
retry_max_s = 1
""",
    )
    assert problems == [
        f"[nats] credentials_file: cannot read '{tmp_path / 'creds'}': No such file or directory",
        "[[alerts]] 'both' url/url_file: set exactly one of url and url_file",
        "[[alerts]] 'neither' url/url_file: set exactly one of url and url_file",
        f"[[alerts]] url_file: cannot read '{tmp_path / 'nope'}': No such file or directory",
        f"[[alerts]] url_file: '{bad}' must hold an http:// or https:// URL",
        "[nats] servers: must list one or more nats:// or tls:// URLs, got ('http://127.0.0.1:4222',)",
        "[nats] stream: must be a JetStream stream name (no spaces, '.', '*', '>', '/'), got 'a.b'",
        "[nats] subject_prefix: must be dot-separated tokens without spaces, '*' or '>',"
        " got 'liq.*'",
        "[nats] retry_initial_s/retry_max_s: need initial <= max, got 10.0 > 1.0",
    ]
    assert not any("T0KEN" in p for p in problems)


def test_a_bad_nats_setting_exits_2_with_the_message(tmp_path: Path) -> None:
    """`collector run` with a bad [nats] setting exits 2 before connecting anywhere."""
    result = subprocess.run(
        [sys.executable, "-m", "collector", "run"],
        env={"COLLECTOR_NATS_SERVERS": "127.0.0.1:4222", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "collector: invalid configuration (1 problem(s)):\n"
        "  - [nats] servers: must list one or more nats:// or tls:// URLs,"
        " got ('127.0.0.1:4222',)\n"
    )
