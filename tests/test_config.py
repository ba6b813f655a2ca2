"""Configuration: precedence, validation listing every problem, secrets never printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import Secret, load_config, redact_dsn
from collector.exceptions import ConfigError


def test_defaults_point_at_binance_routed_market_path() -> None:
    """With nothing configured, the collector follows !forceOrder@arr on fstream's /market."""
    config = load_config({})
    assert config.binance.fstream_url == "wss://fstream.binance.com"
    assert config.binance.all_market is True
    assert config.database.dsn is None
    assert config.writer.batch_max_age_s <= 0.05


def test_env_wins_over_toml(tmp_path: Path) -> None:
    """Environment variables override the TOML file, which overrides defaults."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[binance]\nfstream_url = "ws://127.0.0.1:1"\nusdm_symbols = ["BTCUSDT"]\n'
        "[writer]\nqueue_max = 10\n"
    )
    config = load_config({"COLLECTOR_WRITER_QUEUE_MAX": "20"}, toml)
    assert config.binance.fstream_url == "ws://127.0.0.1:1"
    assert config.binance.usdm_symbols == ("BTCUSDT",)
    assert config.writer.queue_max == 20
    env = {"COLLECTOR_CONFIG": str(toml), "COLLECTOR_BINANCE_USDM_SYMBOLS": "ETHUSDT, SOLUSDT"}
    assert load_config(env).binance.usdm_symbols == ("ETHUSDT", "SOLUSDT")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    """One ConfigError names each bad setting and what to fix."""
    toml = tmp_path / "c.toml"
    toml.write_text('[binance]\nfstream_url = "https://x"\nbogus = 1\n[http]\nport = 70000\n')
    with pytest.raises(ConfigError) as info:
        load_config({"COLLECTOR_WRITER_QUEUE_MAX": "many", "COLLECTOR_LOG_LEVEL": "loud"}, toml)
    assert info.value.problems == [
        "[binance] bogus: unknown setting (known: " + info.value.problems[0].split("known: ")[1],
        "COLLECTOR_WRITER_QUEUE_MAX: expected an integer, got 'many'",
        "[binance] fstream_url: must start with ws:// or wss://, got 'https://x'",
        "[http] port: must be 0..65535, got 70000",
        "[log] level: must be debug, info, warning or error",
    ]
    assert str(info.value).startswith("invalid configuration (5 problem(s)):\n  - [binance] bogus")


def test_a_retired_setting_in_an_old_file_is_accepted_and_ignored(tmp_path: Path) -> None:
    """`healthy_after_s` (replaced by resetting the backoff on confirmation) still loads."""
    toml = tmp_path / "c.toml"
    toml.write_text("[binance]\nhealthy_after_s = 30.0\nreconnect_jitter_s = 0.1\n")
    config = load_config({}, toml)
    assert config.binance.reconnect_jitter_s == 0.1
    assert not hasattr(config.binance, "healthy_after_s")


def test_a_heartbeat_slower_than_the_ledger_grace_allows_is_refused() -> None:
    """heartbeat_s above 10 s would let live sessions look dead to the ledger (30 s grace)."""
    with pytest.raises(ConfigError) as info:
        load_config({"COLLECTOR_BINANCE_HEARTBEAT_S": "30"})
    assert info.value.problems == [
        "[binance] heartbeat_s: must be above 0 and at most 10 (the ledger counts an open "
        "session live for 30 s after its last mark)"
    ]


def test_secrets_come_from_files_and_never_print(tmp_path: Path) -> None:
    """A DSN from a *_FILE variable is used but prints as <SECRET>."""
    secret_file = tmp_path / "dsn"
    secret_file.write_text("postgresql://u:hunter2@db/x\n")
    config = load_config({"COLLECTOR_DATABASE_DSN_FILE": str(secret_file)})
    assert config.database.dsn == Secret("postgresql://u:hunter2@db/x")
    assert "hunter2" not in repr(config)
    assert "<SECRET>" in repr(config)
    assert redact_dsn("postgresql://u:hunter2@db:5432/x") == "postgresql://u:***@db:5432/x"


def test_accounts_take_credentials_from_env_or_files(tmp_path: Path) -> None:
    """Accounts name env vars or files for keys; keys in the TOML itself are refused."""
    key_file = tmp_path / "secret"
    key_file.write_text("s3cret\n")
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[accounts]]\nname = "pm"\nkind = "portfolio_margin"\napi_key_env = "PM_KEY"\n'
        f'api_secret_file = "{key_file}"\nproducts = ["um", "margin"]\n'
        '[[accounts]]\nname = "bad"\nkind = "spot"\napi_key = "inline"\napi_secret_env = "NOPE"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config({"PM_KEY": "k"}, toml)
    assert info.value.problems == [
        "[[accounts]] 'bad' kind: must be one of classic, portfolio_margin",
        "[[accounts]] 'bad' api_key: do not put credentials in the config file; use api_key_env "
        "(an environment variable name) or api_key_file (a file path)",
        "[[accounts]] 'bad' api_secret_env: environment variable 'NOPE' is not set",
    ]
    toml.write_text(toml.read_text().split('[[accounts]]\nname = "bad"')[0])
    [account] = load_config({"PM_KEY": "k"}, toml).accounts
    assert (account.name, account.kind, account.products) == (
        "pm",
        "portfolio_margin",
        ("um", "margin"),
    )
    assert account.api_key.reveal() == "k"
    assert account.api_secret.reveal() == "s3cret"
    assert "s3cret" not in repr(account)


def test_bad_config_exits_2_with_the_message(tmp_path: Path) -> None:
    """`collector run` with a bad config exits non-zero and says what to fix."""
    result = subprocess.run(
        [sys.executable, "-m", "collector", "run"],
        env={"COLLECTOR_HTTP_PORT": "-1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "collector: invalid configuration (1 problem(s)):\n"
        "  - [http] port: must be 0..65535, got -1\n"
    )


@pytest.mark.parametrize("command", ["run", "migrate", "check", "simulate"])
def test_every_subcommand_has_help(command: str) -> None:
    """`collector <command> --help` explains the command."""
    result = subprocess.run(
        [sys.executable, "-m", "collector", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith(f"usage: collector {command}")


def test_check_exits_1_when_nothing_answers() -> None:
    """`collector check` against a port where nothing listens exits 1."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "check",
            "--url",
            "http://127.0.0.1:9/readyz",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "is not answering" in result.stderr
