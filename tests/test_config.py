"""Configuration: precedence, validation listing every problem, secrets never printed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from collector.config import (
    AccountKind,
    Config,
    KeyType,
    Product,
    Secret,
    load_config,
    redact_dsn,
)
from collector.exceptions import ConfigError


def _problems(environ: dict[str, str], toml: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(environ, toml)
    return info.value.problems


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
    """`healthy_after_s` (replaced by resetting the backoff on confirmation) still loads, from
    a file or the environment."""
    toml = tmp_path / "c.toml"
    toml.write_text("[binance]\nhealthy_after_s = 30.0\nreconnect_jitter_s = 0.1\n")
    config = load_config({"COLLECTOR_BINANCE_HEALTHY_AFTER_S": "30"}, toml)
    assert config.binance.reconnect_jitter_s == 0.1
    assert not hasattr(config.binance, "healthy_after_s")


def test_a_heartbeat_slower_than_the_ledger_grace_allows_is_refused() -> None:
    """heartbeat_s above 10 s would let live sessions look dead to the ledger (30 s grace)."""
    with pytest.raises(ConfigError) as info:
        load_config({"COLLECTOR_BINANCE_HEARTBEAT_S": "30"})
    assert info.value.problems == [
        "[binance] heartbeat_s: must be above 0 and at most 10 (the ledger counts an open "
        "session live for 30 s after its mark), got 30.0"
    ]


def test_redundancy_and_stall_defaults_override_and_ranges() -> None:
    """Two connections per shard and a 60 s stall threshold by default; 1 to 4 connections."""
    b = load_config({}).binance
    assert (b.redundancy, b.stall_after_s) == (2, 60.0)
    env = {"COLLECTOR_BINANCE_REDUNDANCY": "1", "COLLECTOR_BINANCE_STALL_AFTER_S": "30"}
    b = load_config(env).binance
    assert (b.redundancy, b.stall_after_s) == (1, 30.0)
    with pytest.raises(ConfigError) as info:
        load_config({"COLLECTOR_BINANCE_REDUNDANCY": "0", "COLLECTOR_BINANCE_STALL_AFTER_S": "0"})
    assert info.value.problems == [
        "[binance] redundancy: must be 1..4, got 0",
        "[binance] stall_after_s: must be above 0 and at most 86400, got 0.0",
    ]


def test_database_ping_settings_default_override_and_must_be_positive() -> None:
    """The database ping runs every 10 s within 3 s by default; the environment sets both, and
    a value that is not positive is a configuration error."""
    d = load_config({}).database
    assert (d.ping_interval_s, d.ping_timeout_s) == (10.0, 3.0)
    env = {"COLLECTOR_DATABASE_PING_INTERVAL_S": "2.5", "COLLECTOR_DATABASE_PING_TIMEOUT_S": "1"}
    d = load_config(env).database
    assert (d.ping_interval_s, d.ping_timeout_s) == (2.5, 1.0)
    with pytest.raises(ConfigError) as info:
        load_config({"COLLECTOR_DATABASE_PING_INTERVAL_S": "0"})
    assert info.value.problems == [
        "[database] ping_interval_s: must be above 0 and at most 3600, got 0.0"
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


def test_integer_settings_refuse_fractions(tmp_path: Path) -> None:
    """2.7 in the TOML file or "2.7" in the environment is an error for an integer, never 2."""
    toml = tmp_path / "c.toml"
    toml.write_text("[writer]\nqueue_max = 100.9\nwriters = 2.0\n[rest]\nenrich_per_poll = true\n")
    assert _problems({"COLLECTOR_WRITER_BATCH_MAX_ROWS": "2.7"}, toml) == [
        "[writer] queue_max: expected an integer, got 100.9",
        "COLLECTOR_WRITER_BATCH_MAX_ROWS: expected an integer, got '2.7'",
        "[writer] writers: expected an integer, got 2.0",
        "[rest] enrich_per_poll: expected an integer, got True",
    ]
    config = load_config({"COLLECTOR_WRITER_QUEUE_MAX": " 300 "})
    assert (config.writer.queue_max, type(config.writer.queue_max)) == (300, int)


def test_every_number_has_a_range(tmp_path: Path) -> None:
    """Zero or negative durations, NaN, infinity and absurd sizes are refused with the range."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        "shutdown_grace_s = 0\n[binance]\nheartbeat_s = -1\nidle_timeout_s = nan\n"
        "rotate_after_s = 90000\n[writer]\nqueue_max = 0\nbatch_max_age_s = 0\n"
        "retry_initial_s = 5\nretry_max_s = 1\n[database]\npool_min_size = 3\n"
        "pool_max_size = 2\n[http]\nmax_event_age_s = -5\n[rest]\nrecv_window_ms = 60001\n"
    )
    assert _problems({"COLLECTOR_REST_POLL_INTERVAL_S": "inf"}, toml) == [
        "[binance] rotate_after_s: must be above 60 and at most 86400, got 90000.0",
        "[binance] idle_timeout_s: must be above 0 and at most 86400, got nan",
        "[binance] heartbeat_s: must be above 0 and at most 10 (the ledger counts an open session"
        " live for 30 s after its mark), got -1.0",
        "[writer] queue_max: must be 1..10000000, got 0",
        "[writer] batch_max_age_s: must be above 0 and at most 60, got 0.0",
        "[http] max_event_age_s: must be 0..604800, got -5.0",
        "[rest] poll_interval_s: must be above 0 and at most 86400, got inf",
        "[rest] recv_window_ms: must be 1..60000 (Binance's maximum), got 60001",
        "shutdown_grace_s: must be above 0 and at most 3600, got 0.0",
        "[writer] retry_initial_s/retry_max_s: need initial <= max, got 5.0 > 1.0",
        "[database] pool_min_size/pool_max_size: need min <= max, got 3 > 2",
    ]


def test_no_number_is_left_without_a_range() -> None:
    """Every numeric setting, whatever its section, refuses an absurd value with its range."""
    defaults = Config()
    environ, expected = {}, []
    for section, key in _setting_names(defaults):
        value = getattr(getattr(defaults, section) if section else defaults, key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            name = "_".join(["COLLECTOR", *([section.upper()] if section else []), key.upper()])
            environ[name] = "-1000000000000"
            expected.append(f"[{section}] {key}" if section else key)
    problems = _problems(environ)
    assert sorted(p.split(":")[0] for p in problems) == sorted(expected)
    assert all(
        p.endswith(("got -1000000000000", "got -1000000000000.0"))
        for p in problems
        if "control_messages" not in p
    )


def test_the_unused_rotate_handover_timeout_is_an_unknown_setting(tmp_path: Path) -> None:
    """rotate_handover_timeout_s was never read; in a file or the environment it is unknown."""
    toml = tmp_path / "c.toml"
    toml.write_text("[binance]\nrotate_handover_timeout_s = 30.0\n")
    [problem] = _problems({}, toml)
    assert problem.startswith("[binance] rotate_handover_timeout_s: unknown setting (known: ")
    assert "rotate_handover_timeout_s" not in problem.split("known: ")[1]
    assert _problems({"COLLECTOR_BINANCE_ROTATE_HANDOVER_TIMEOUT_S": "30"}) == [
        "COLLECTOR_BINANCE_ROTATE_HANDOVER_TIMEOUT_S: unknown environment variable "
        "(did you mean COLLECTOR_BINANCE_OPEN_TIMEOUT_S?)"
    ]


def test_an_empty_value_is_reported_like_any_unreadable_one(tmp_path: Path) -> None:
    """An empty variable or file for a number or a flag is a problem naming it (it used to
    crash the load with a TypeError)."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    environ = {
        "COLLECTOR_DATABASE_POOL_MIN_SIZE": "",
        "COLLECTOR_BINANCE_ALL_MARKET": " ",
        "COLLECTOR_HTTP_PORT_FILE": str(empty),
    }
    assert _problems(environ) == [
        "COLLECTOR_DATABASE_POOL_MIN_SIZE: expected an integer, got ''",
        "COLLECTOR_BINANCE_ALL_MARKET: expected true or false, got ' '",
        "COLLECTOR_HTTP_PORT_FILE: expected an integer, got ''",
    ]


def test_an_empty_credential_is_refused(tmp_path: Path) -> None:
    """A blank key variable or an empty secret file fails the load, naming the account (such an
    account used to be left out, or kept with an empty key, without a word)."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[accounts]]\nname = "a"\nkind = "classic"\napi_key_env = "BLANK"\n'
        f'api_secret_file = "{empty}"\n'
    )
    assert _problems({"BLANK": "  "}, toml) == [
        "[[accounts]] 'a' api_key_env: environment variable 'BLANK' is not set",
        f"[[accounts]] 'a' api_secret_file: file {str(empty)!r} is empty",
    ]


def test_account_choices_are_enums(tmp_path: Path) -> None:
    """An account's kind, key type and products load as their StrEnums, equal to the strings."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[accounts]]\nname = "a"\nkind = "classic"\napi_key_env = "K"\napi_secret_env = "K"\n'
        'isolated_symbols = ["btcusdt"]\n'
    )
    [account] = load_config({"K": "k"}, toml).accounts
    assert account.kind is AccountKind.CLASSIC
    assert account.key_type is KeyType.HMAC
    assert account.products == (Product.UM, Product.CM, Product.MARGIN) == ("um", "cm", "margin")
    assert account.isolated_symbols == ("BTCUSDT",)


def test_unknown_collector_variables_are_reported() -> None:
    """A misspelled COLLECTOR_* variable is an error (with the likely intended name); the
    non-setting variables and Kubernetes service links are allowed."""
    toml_free = {
        "COLLECTOR_DATABASE_DNS": "postgresql://u:hunter2@db/x",
        "COLLECTOR_WRITER_QUEUEMAX_FILE": "/nowhere",
        "COLLECTOR_NONSENSE": "1",
        "COLLECTOR_TEST_DSN": "postgresql://postgres@127.0.0.1/postgres",
        "COLLECTOR_MIGRATIONS_DIR": "/app/migrations",
        "COLLECTOR_CONFIG": "",
        "COLLECTOR_DB_PASSWORD": "pw",
        "COLLECTOR_SHUTDOWN_GRACE_S": "5",
        "COLLECTOR_METRICS_SERVICE_HOST": "10.0.0.1",  # Kubernetes service links
        "COLLECTOR_METRICS_PORT_9108_TCP_ADDR": "10.0.0.1",
        "COLLECTOR_PORT": "tcp://10.0.0.2:9108",
    }
    problems = _problems(toml_free)
    assert problems == [
        "COLLECTOR_DATABASE_DNS: unknown environment variable "
        "(did you mean COLLECTOR_DATABASE_DSN?)",
        "COLLECTOR_NONSENSE: unknown environment variable "
        "(settings are COLLECTOR_<SECTION>_<KEY>, or that with _FILE)",
        "COLLECTOR_WRITER_QUEUEMAX_FILE: unknown environment variable "
        "(did you mean COLLECTOR_WRITER_QUEUE_MAX_FILE?)",
    ]
    assert "hunter2" not in "".join(problems)


def test_account_credential_variables_may_start_with_collector(tmp_path: Path) -> None:
    """An account's api_key_env may name a COLLECTOR_* variable without it being unknown."""
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[accounts]]\nname = "a"\nkind = "classic"\napi_key_env = "COLLECTOR_A_KEY"\n'
        'api_secret_env = "COLLECTOR_A_SECRET"\n'
    )
    config = load_config({"COLLECTOR_A_KEY": "k", "COLLECTOR_A_SECRET": "s"}, toml)
    assert [a.name for a in config.accounts] == ["a"]


def _setting_names(config: Config) -> list[tuple[str, str]]:
    names = [("", "shutdown_grace_s")]
    for section in ("database", "binance", "writer", "http", "log", "rest"):
        names += [(section, f.name) for f in dataclasses.fields(getattr(config, section))]
    return names


def test_file_variant_works_for_every_setting(tmp_path: Path) -> None:
    """Every setting accepts COLLECTOR_<SECTION>_<KEY>_FILE, shutdown_grace_s included."""
    grace = tmp_path / "grace"
    grace.write_text("7.5\n")
    config = load_config({"COLLECTOR_SHUTDOWN_GRACE_S_FILE": str(grace)})
    assert config.shutdown_grace_s == 7.5
    defaults = Config()
    environ: dict[str, str] = {}
    for section, key in _setting_names(defaults):
        value = getattr(getattr(defaults, section) if section else defaults, key)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = ",".join(value) if isinstance(value, tuple) else str(value)
        name = "_".join(["COLLECTOR", *([section.upper()] if section else []), key.upper()])
        path = tmp_path / name
        path.write_text(f"{text}\n")
        environ[name + "_FILE"] = str(path)
    # Every setting but those with no default: the dsn and [http] api_token_file.
    assert len(environ) == len(_setting_names(defaults)) - 2
    assert load_config(environ) == defaults
    (tmp_path / "COLLECTOR_SHUTDOWN_GRACE_S").write_text("-2\n")
    (tmp_path / "COLLECTOR_HTTP_PORT").write_text("80.5\n")
    assert _problems(environ) == [
        "COLLECTOR_HTTP_PORT_FILE: expected an integer, got '80.5'",
        "shutdown_grace_s: must be above 0 and at most 3600, got -2.0",
    ]


BAD_PORT = "[database] dsn: the port must be a number 1..65535"


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("postgresql://u:hunter2@host:54x/db", BAD_PORT),
        ("postgresql://u@a:5432,b:99999/db", BAD_PORT),
        ("postgresql://u@h/db?port=5o", BAD_PORT),
        ("postgresql://u:hunter2@h/db?sslmode", "[database] dsn: the query (after '?') must be "
         "key=value pairs"),
        ("mysql://u:hunter2@h/db", "[database] dsn: the URI must start with postgresql:// or "
         "postgres://"),
        ("hunter2", "[database] dsn: expected a postgresql:// URI "
         "(postgresql://user@host:5432/dbname) or libpq keyword=value pairs (host=... dbname=...)"),
        ("host=db password='hunter2", "[database] dsn: expected a postgresql:// URI "
         "(postgresql://user@host:5432/dbname) or libpq keyword=value pairs (host=... dbname=...)"),
        ("host=db port=5x dbname=c", BAD_PORT),
        ("host=db dbname=c connect_timeout=5 password=hunter2 fallback_application_name=x",
         "[database] dsn: keyword(s) connect_timeout, fallback_application_name not supported "
         "(use [database] connect_timeout_s); supported: host, port, dbname, user, password, "
         "passfile, sslmode, sslcert, sslkey, sslrootcert, sslcrl, sslpassword, "
         "ssl_min_protocol_version, ssl_max_protocol_version, target_session_attrs, krbsrvname, "
         "gsslib, application_name, options"),
    ],
)  # fmt: skip
def test_a_dsn_asyncpg_cannot_use_is_refused_at_load(dsn: str, problem: str) -> None:
    """A DSN with a bad port, scheme or form is one problem naming [database] dsn, never
    quoting the DSN (which may hold a password)."""
    assert _problems({"COLLECTOR_DATABASE_DSN": dsn}) == [problem]


@pytest.mark.parametrize(
    ("dsn", "uri"),
    [
        ("host=db port=5433 dbname=collector user=me password='p w@x\\'s'",
         "postgresql://me:p%20w%40x%27s@db:5433/collector"),
        ("host = /run/postgresql dbname=c sslmode=disable",
         "postgresql:///c?host=%2Frun%2Fpostgresql&sslmode=disable"),
        ("host=a,b port=5432,5433 user=u", "postgresql://u@/?host=a%2Cb&port=5432%2C5433"),
        ("host=::1 dbname=x", "postgresql://[::1]/x"),
        ("postgres://u@h:/db", "postgres://u@h:/db"),
    ],
)  # fmt: skip
def test_keyword_dsns_become_equivalent_uris(dsn: str, uri: str) -> None:
    """libpq keyword=value DSNs are converted to the URI asyncpg reads; URIs stay as given."""
    config = load_config({"COLLECTOR_DATABASE_DSN": dsn})
    assert config.database.dsn == Secret(uri)


async def test_a_converted_keyword_dsn_connects(pg_admin_dsn: str) -> None:
    """The URI made from a keyword DSN reaches the real server as the same user and database."""
    parts = urlsplit(pg_admin_dsn)
    host = parts.hostname or parse_qs(parts.query)["host"][0]
    keywords = f"host={host} port={parts.port or 5432} user={parts.username} dbname=postgres"
    dsn = load_config({"COLLECTOR_DATABASE_DSN": keywords}).database.dsn
    assert dsn is not None
    conn = await asyncpg.connect(dsn.reveal())
    try:
        row = await conn.fetchrow("SELECT current_user AS u, current_database() AS d")
    finally:
        await conn.close()
    assert (row["u"], row["d"]) == (parts.username, "postgres")


def test_redact_dsn_hides_every_password() -> None:
    """Passwords in the authority (even with an unencoded '@') and in the query become ***; a
    piece that is no libpq keyword after a password may be part of it, so it goes too."""
    assert redact_dsn("postgresql://u:p@ss@h:54x/db?password=zz&sslpassword=yy&a=1") == (
        "postgresql://u:***@h:54x/db?password=***&sslpassword=***"
    )
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_private_keys_are_loaded_at_start(tmp_path: Path) -> None:
    """A key that is not a PEM private key, or not of the configured type, fails the load,
    naming the account and the setting but never the key."""
    ed_key = tmp_path / "ed.pem"
    ed_key.write_text(_pem(ed25519.Ed25519PrivateKey.generate()))
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[[accounts]]\nname = "rsa-bad"\nkind = "classic"\nkey_type = "rsa"\n'
        'api_key_env = "K"\napi_secret_env = "GARBAGE"\n'
        '[[accounts]]\nname = "rsa-is-ed"\nkind = "classic"\nkey_type = "rsa"\n'
        f'api_key_env = "K"\napi_secret_file = "{ed_key}"\n'
        '[[accounts]]\nname = "ed-ok"\nkind = "portfolio_margin"\nkey_type = "ed25519"\n'
        f'api_key_env = "K"\napi_secret_file = "{ed_key}"\n'
    )
    problems = _problems({"K": "k", "GARBAGE": "hunter2-not-a-key"}, toml)
    assert problems == [
        "[[accounts]] 'rsa-bad' api_secret: not a PEM private key for rsa",
        "[[accounts]] 'rsa-is-ed' api_secret: the PEM key is not rsa",
    ]
    assert "hunter2" not in "".join(problems)
    good_rsa = tmp_path / "rsa.pem"
    good_rsa.write_text(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    toml.write_text(
        '[[accounts]]\nname = "rsa-ok"\nkind = "classic"\nkey_type = "rsa"\n'
        f'api_key_env = "K"\napi_secret_file = "{good_rsa}"\n'
        '[[accounts]]\nname = "ed-ok"\nkind = "portfolio_margin"\nkey_type = "ed25519"\n'
        f'api_key_env = "K"\napi_secret_file = "{ed_key}"\n'
    )
    config = load_config({"K": "k"}, toml)
    assert [(a.name, a.key_type) for a in config.accounts] == [
        ("rsa-ok", "rsa"),
        ("ed-ok", "ed25519"),
    ]


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


@pytest.mark.parametrize("command", ["run", "migrate", "check", "sql", "simulate"])
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
