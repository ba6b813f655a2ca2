"""collector: records every Binance liquidation it can see into Postgres."""

__version__ = "0.1.0"
