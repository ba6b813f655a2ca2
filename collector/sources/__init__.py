"""Sources: Binance websockets (market liquidations) and REST (exchange info, account orders)."""
