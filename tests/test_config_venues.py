"""Configuration of the venues beside Binance: [venues], [bybit] and [okx], from defaults, the
TOML file and the environment, each setting checked against its rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import load_config
from collector.exceptions import ConfigError


def _problems(environ: dict[str, str], toml: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(environ, toml)
    return info.value.problems


def test_every_venue_is_on_by_default_at_the_real_exchanges() -> None:
    """With nothing configured Binance, Bybit and OKX are recorded from their public hosts."""
    config = load_config({})
    assert config.venues.enabled == ("binance", "bybit", "okx")
    assert (config.bybit.ws_url, config.bybit.rest_url) == (
        "wss://stream.bybit.com",
        "https://api.bybit.com",
    )
    assert config.bybit.categories == ("linear", "inverse")
    assert (config.okx.ws_url, config.okx.rest_url) == (
        "wss://ws.okx.com:8443",
        "https://www.okx.com",
    )
    assert config.okx.inst_types == ("SWAP", "FUTURES", "MARGIN")
    assert (config.bybit.heartbeat_s, config.okx.heartbeat_s, config.okx.repair) == (20, 20, True)
    assert config.bybit.max_args_chars == 21_000


def test_toml_and_environment_set_the_venue_sections(tmp_path: Path) -> None:
    """`[venues]`, `[bybit]`, `[okx]` come from the file; COLLECTOR_BYBIT_* / COLLECTOR_OKX_*
    variables win over it, as for every section."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[venues]\nenabled = ["okx", "Bybit"]\n'
        '[bybit]\nws_url = "ws://127.0.0.1:1"\ncategories = ["inverse"]\n'
        '[okx]\ninst_types = ["SWAP"]\nrepair = true\n'
    )
    config = load_config(
        {
            "COLLECTOR_BYBIT_REST_URL": "http://127.0.0.1:2",
            "COLLECTOR_OKX_REPAIR": "false",
            "COLLECTOR_OKX_WS_URL": "ws://127.0.0.1:3",
        },
        toml,
    )
    assert config.venues.enabled == ("okx", "bybit")
    assert (config.bybit.ws_url, config.bybit.rest_url, config.bybit.categories) == (
        "ws://127.0.0.1:1",
        "http://127.0.0.1:2",
        ("inverse",),
    )
    assert (config.okx.ws_url, config.okx.inst_types, config.okx.repair) == (
        "ws://127.0.0.1:3",
        ("SWAP",),
        False,
    )
    env = {"COLLECTOR_VENUES_ENABLED": "binance"}
    assert load_config(env, toml).venues.enabled == ("binance",)


def test_an_unknown_venue_is_one_problem() -> None:
    """A venue the collector does not know stops the start with one message naming the list;
    so does an empty list."""
    assert _problems({"COLLECTOR_VENUES_ENABLED": "binance,kraken,ftx"}) == [
        "[venues] enabled: must name one or more known venues (binance, bybit, okx), got "
        "('binance', 'kraken', 'ftx')"
    ]
    assert _problems({"COLLECTOR_VENUES_ENABLED": " "}) == [
        "[venues] enabled: must name one or more known venues (binance, bybit, okx), got ()"
    ]


def test_venue_settings_are_checked_against_their_rules(tmp_path: Path) -> None:
    """Categories, instTypes, URLs, heartbeats and limits outside their rules are each listed,
    as are unknown keys."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[bybit]\ncategories = ["spot"]\nws_url = "https://x"\nmax_args_chars = 30000\n'
        "bogus = 1\n"
        '[okx]\ninst_types = ["SWAP", "SWAP"]\nheartbeat_s = 30\nrepair_requests_per_2s = 41\n'
    )
    problems = _problems({}, toml)
    assert problems[0].startswith("[bybit] bogus: unknown setting (known: ")
    assert problems[1:] == [
        "[bybit] ws_url: must start with ws:// or wss://, got 'https://x'",
        "[bybit] categories: must list one or more of linear, inverse, each once, got ('spot',)",
        "[bybit] max_args_chars: must be 100..21000, got 30000",
        "[okx] inst_types: must list one or more of SWAP, FUTURES, MARGIN, each once, got "
        "('SWAP', 'SWAP')",
        "[okx] repair_requests_per_2s: must be 1..40, got 41",
        "[okx] heartbeat_s/pong_timeout_s: need heartbeat_s + pong_timeout_s < 30 (OKX cuts a "
        "silent link at 30 s), got 30.0 + 5.0",
    ]


def test_reconnect_delays_must_be_ordered_per_venue() -> None:
    """`reconnect_initial_s` above `reconnect_max_s` is refused for Bybit and OKX alike."""
    env = {
        "COLLECTOR_BYBIT_RECONNECT_INITIAL_S": "10", "COLLECTOR_BYBIT_RECONNECT_MAX_S": "5",
        "COLLECTOR_OKX_RECONNECT_INITIAL_S": "10", "COLLECTOR_OKX_RECONNECT_MAX_S": "5",
    }  # fmt: skip
    assert _problems(env) == [
        "[bybit] reconnect_initial_s/reconnect_max_s: need initial <= max, got 10.0 > 5.0",
        "[okx] reconnect_initial_s/reconnect_max_s: need initial <= max, got 10.0 > 5.0",
    ]


def test_a_misspelled_venue_variable_is_named() -> None:
    """COLLECTOR_BYBIT_* variables are settings like the others: a typo gets a suggestion."""
    assert _problems({"COLLECTOR_BYBIT_WS_URLL": "ws://127.0.0.1:1"}) == [
        "COLLECTOR_BYBIT_WS_URLL: unknown environment variable "
        "(did you mean COLLECTOR_BYBIT_WS_URL?)"
    ]
