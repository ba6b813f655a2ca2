"""Prometheus side of the deployment: the alert rules (promtool check and unit tests), the scrape
config, the metric names alerts and the health dashboard use, and `promtool check metrics` on a
live scrape of the real daemon running against the emulator.

promtool comes from Debian's `prometheus` package; without it the promtool tests are skipped.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from collector.emulator import Emulator, EmulatorOptions, make_force_order_event
from collector.metrics import Metrics
from tests.daemon import count_rows, eventually, make_config, running

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
HEALTH_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "health.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install -y --no-install-recommends prometheus)",
)

# -- PromQL metric names --------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w:$])([a-zA-Z_:][\w:]*)\s*(\()?", expr):
        if m[2] is None and m[1].lower() not in _KEYWORDS:
            names.add(m[1])
    return names


def exported_sample_names() -> set[str]:
    """Every sample name the collector's registry can expose, from collector/metrics.py."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
        }[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def alert_rules() -> Iterator[dict[str, Any]]:
    """Every rule of alerts.yml (recording and alerting)."""
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    for group in doc["groups"]:
        yield from group["rules"]


def dashboard_exprs() -> list[str]:
    """The PromQL of every health-dashboard target and variable."""
    doc = json.loads(HEALTH_DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]["query"])
              for v in doc["templating"]["list"]]  # fmt: skip
    return exprs


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    """metric_names() finds exactly the series an expression reads."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(collector_write_seconds_bucket{job=~"$job"}'
        "[$__rate_interval]))) > on () group_left () collector:alert_x and up offset 1d"
    )
    assert metric_names(expr) == {"collector_write_seconds_bucket", "collector:alert_x", "up"}


def test_alerts_and_health_dashboard_use_only_exported_metrics() -> None:
    """Every metric in alerts.yml and the health dashboard is defined in collector/metrics.py."""
    exported = exported_sample_names()
    recorded = {r["record"] for r in alert_rules() if "record" in r}
    builtin = {"up"}
    used = {n for r in alert_rules() for n in metric_names(str(r["expr"]))}
    used |= {n for e in dashboard_exprs() for n in metric_names(e)}
    unknown = used - exported - recorded - builtin
    assert unknown == set()
    assert {n for n in used if n.startswith("collector_")} >= {
        "collector_events_received_total", "collector_last_event_age_seconds",
        "collector_ws_reconnects_total", "collector_queue_depth", "collector_write_seconds_bucket",
        "collector_rest_weight_used", "collector_rest_weight_limit",
        "collector_rest_rate_limited_total", "collector_account_state",
        "collector_account_backfill_complete", "collector_ws_shard_degraded",
    }  # fmt: skip


def test_every_alert_has_a_severity_and_a_summary() -> None:
    """Each alert carries a severity label and summary/description annotations."""
    alerts = [r for r in alert_rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "CollectorDown", "CollectorNoEvents", "CollectorReconnectStorm", "CollectorQueueNearFull",
        "CollectorWriteErrors", "CollectorRateLimited", "CollectorIpBanned",
        "CollectorAccountUnhealthy", "CollectorAccountFailing", "CollectorBackfillStalled",
        "CollectorStreamsDegraded",
    }  # fmt: skip
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert set(alert["annotations"]) == {"summary", "description"}, alert["alert"]


# -- promtool -------------------------------------------------------------------------------------


async def promtool(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run promtool; return its exit code and combined output."""
    assert PROMTOOL is not None
    proc = await asyncio.create_subprocess_exec(
        PROMTOOL, *args, cwd=PROMETHEUS, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@needs_promtool
async def test_promtool_accepts_the_rules_and_the_config() -> None:
    """`promtool check rules` and `promtool check config` pass on the shipped files."""
    rc, out = await promtool("check", "rules", "alerts.yml")
    assert (rc, "SUCCESS: 22 rules found" in out) == (0, True), out
    rc, out = await promtool("check", "config", "prometheus.yml")
    assert rc == 0, out


@needs_promtool
async def test_alert_unit_tests_pass() -> None:
    """`promtool test rules` fires and silences the alerts as alerts_test.yml expects."""
    rc, out = await promtool("test", "rules", "alerts_test.yml")
    assert rc == 0, out


@needs_promtool
async def test_live_scrape_of_the_running_daemon_passes_promtool_check_metrics(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """The real daemon's /metrics, after it stored an emulated liquidation, lints clean."""
    async with Emulator(EmulatorOptions()) as emu, running(make_config(emu, pg_dsn)) as daemon:
        await emu.wait_for_connections(1, host="fstream")
        await emu.wait_until(lambda: all(c.streams for c in emu.connections))
        now_ms = int(time.time() * 1000)
        event = make_force_order_event("BTCUSDT", "SELL", "0.5", "60000", "60000", now_ms, now_ms)
        assert await emu.publish(event) >= 1
        await eventually(count_rows(pg), lambda n: n == 1)
        url = f"http://127.0.0.1:{daemon.runtime.http_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
            scrape = await response.read()

    rc, out = await promtool("check", "metrics", stdin=scrape)
    assert (rc, out) == (0, "")
    text = scrape.decode()
    assert 'collector_events_received_total{host="fstream",market="UM"' in text
    assert 'collector_rows_inserted_total{table="market_liquidations"} 1.0' in text
    for name in ("collector_queue_depth", "collector_write_seconds_bucket",
                 "collector_last_event_age_seconds", "collector_ws_connections"):  # fmt: skip
        assert f"\n{name}" in text, name


@needs_promtool
async def test_events_per_second_stat_is_right_one_minute_after_a_start(tmp_path: Path) -> None:
    """The health dashboard's Events/s stat, evaluated by promtool over a counter that starts at
    0 and grows 2/s, scraped every 15 s: exactly 2 from one minute after the start (a 5-minute
    window reads 0.4 there, and low for five minutes)."""
    stat = next(
        p for p in json.loads(HEALTH_DASHBOARD.read_text(encoding="utf-8"))["panels"]
        if p["title"] == "Events/s"
    )  # fmt: skip
    expr = stat["targets"][0]["expr"].replace("$job", ".*").replace("$instance", ".*")
    series = ('collector_events_received_total{job="collector",instance="c:9108",host="fstream",'
              'market="UM",stream_kind="all_market"}')  # fmt: skip
    expected = [{"labels": '{instance="c:9108"}', "value": 2}]
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": series, "values": "0+30x40"}],
            "promql_expr_test": [
                {"expr": expr, "eval_time": at, "exp_samples": expected}
                for at in ("1m", "2m", "5m", "10m")
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "events_stat_test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    rc, out = await promtool("test", "rules", str(path))
    assert rc == 0, out
