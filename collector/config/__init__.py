"""Configuration: defaults < TOML file < environment, validated once at start.

`load_config(environ, toml_path)` returns a frozen `Config` or raises one `ConfigError`
listing every problem. Environment variables are `COLLECTOR_<SECTION>_<KEY>` (for example
`COLLECTOR_DATABASE_DSN`, `COLLECTOR_BINANCE_FSTREAM_URL`); any key also accepts
`..._FILE` naming a file whose stripped content is the value (Docker/k8s secrets).
Accounts (`[[accounts]]`) come from the TOML file only; their credentials are read from the
environment variables or files that the TOML names, never from the TOML itself.

`settings` is how a section is declared (each field beside its rule), `sections`,
`sections_venues` and `sections_out` the sections; `loader` reads every section and table with
one reader driven by their fields; `dsn` checks DSNs at load and redacts them for logs.
"""

from collector.config.dsn import UNPARSEABLE_DSN, redact_dsn
from collector.config.loader import ENV_PREFIX, load_config, load_from_process
from collector.config.sections import (
    AccountConfig,
    BinanceConfig,
    Config,
    DatabaseConfig,
    HttpConfig,
    LogConfig,
    RestConfig,
    WriterConfig,
    load_private_key,
)
from collector.config.sections_out import AlertConfig, FeedConfig, NatsConfig
from collector.config.sections_venues import BybitConfig, OkxConfig, VenuesConfig
from collector.config.settings import (
    AccountKind,
    AlertFormat,
    AlertKind,
    ApiFamily,
    KeyType,
    Product,
    Secret,
)

__all__ = [
    "ENV_PREFIX",
    "UNPARSEABLE_DSN",
    "AccountConfig",
    "AccountKind",
    "AlertConfig",
    "AlertFormat",
    "AlertKind",
    "ApiFamily",
    "BinanceConfig",
    "BybitConfig",
    "Config",
    "DatabaseConfig",
    "FeedConfig",
    "HttpConfig",
    "KeyType",
    "LogConfig",
    "NatsConfig",
    "OkxConfig",
    "Product",
    "RestConfig",
    "Secret",
    "VenuesConfig",
    "WriterConfig",
    "load_config",
    "load_from_process",
    "load_private_key",
    "redact_dsn",
]
