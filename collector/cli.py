"""The `collector` command: run, migrate, check, sql, export, import, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from collector import __version__, logs
from collector.config import Config, load_from_process
from collector.exceptions import CollectorError, ConfigError
from collector.files.commands import add_parsers as add_file_parsers
from collector.signals import install_signal_handlers
from collector.sql import add_parser as add_sql_parser

log = structlog.get_logger(__name__)


def _load(args: argparse.Namespace) -> Config:
    config = load_from_process(args.config)
    if getattr(args, "no_migrate", False):
        from dataclasses import replace  # noqa: PLC0415

        config = replace(config, database=replace(config.database, migrate_on_start=False))
    return config


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    config = _load(args)
    logs.configure(config.log.level, config.log.format)
    from collector.supervisor import run  # noqa: PLC0415

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await run(config, stop=stop)

    return asyncio.run(main())


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations and exit."""
    config = _load(args)
    logs.configure(config.log.level, config.log.format)
    from collector.db.connection import connect_checked, database_dsn, wait_for_database  # noqa: PLC0415
    from collector.db.migrate import migrate  # noqa: PLC0415

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        async with database_dsn(config) as dsn:
            # A server that is still starting (a compose or Kubernetes start-up) is waited for,
            # as `run` does; SIGTERM ends the wait (exit 1, nothing applied).
            if not await wait_for_database(dsn, config, stop):
                log.warning("migrate.stopped_waiting_for_the_database")
                return 1
            conn = await connect_checked(dsn, config)
            try:
                applied = await migrate(conn)
            finally:
                await conn.close()
        log.info("migrate.done", applied=applied)
        return 0

    return asyncio.run(main())


def cmd_check(args: argparse.Namespace) -> int:
    """Ask the running daemon's /readyz (or /healthz with --live); exit 0 when it answers 200."""
    if args.url:
        url = args.url
    else:
        config = _load(args)
        host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::", "") else config.http.host  # noqa: S104
        url = f"http://{host}:{config.http.port}/{'healthz' if args.live else 'readyz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:  # noqa: S310
            body = response.read().decode(errors="replace")
            print(body)
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"))
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"collector check: {url} is not answering: {exc}", file=sys.stderr)
        return 1


SIMULATED_VENUES = ("binance", "bybit", "okx")
"""What `collector simulate` can serve, in the order of its ports and of its settings line."""
_BINANCE_HOSTS = ("fstream", "dstream", "fapi", "dapi", "papi", "sapi")
_PORT_OFFSETS = {
    "binance": dict(zip(_BINANCE_HOSTS, range(6), strict=True)),
    "bybit": {"ws": 6, "rest": 7},
    "okx": {"ws": 8, "rest": 9},
}
"""Each venue's hosts, as offsets from `--port-base`: a fixed layout, whichever are served."""
_PORTS = 10


def _environment_line(venues: Sequence[str], urls: Mapping[str, Mapping[str, str]]) -> str:
    """The settings that point a collector at the running emulators, as one shell line.

    Only the served venues are enabled, so a collector started with this line never reaches a
    real exchange. `urls` maps a venue to its hosts' base URLs (Binance: fstream … sapi; Bybit
    and OKX: ws, rest)."""
    words = [f"COLLECTOR_VENUES_ENABLED={','.join(venues)}"]
    for venue in venues:
        words += (f"COLLECTOR_{venue.upper()}_{name.upper()}_URL={urls[venue][name]}"
                  for name in _PORT_OFFSETS[venue])  # fmt: skip
    return " ".join(words)


EMULATOR_MISSING = (
    "collector simulate: the Binance emulator is not installed: it is part of a checkout of the "
    "repository, not of the wheel or the container image. From a checkout: "
    "pip install -e '.[emulator]'"
)


def _simulate_problems(args: argparse.Namespace) -> tuple[list[str], tuple[str, ...]]:
    """What is wrong with `collector simulate`'s arguments, and the venues it is to serve."""
    problems = []
    names = [v.strip().lower() for v in args.venues.split(",") if v.strip()]
    venues = tuple(v for v in SIMULATED_VENUES if v in names)
    unknown = sorted(set(names) - set(SIMULATED_VENUES))
    if unknown or not venues or len(names) != len(set(names)):
        problems.append(f"--venues: must list one or more of {', '.join(SIMULATED_VENUES)}, "
                        f"each once, got {args.venues!r}")  # fmt: skip
    for flag, rate in (("--rate", args.rate), ("--bybit-rate", args.bybit_rate),
                       ("--okx-rate", args.okx_rate)):  # fmt: skip
        if rate is not None and not (math.isfinite(rate) and rate >= 0):
            problems.append(f"{flag}: must be a finite number of events per second >= 0, "
                            f"got {rate:g}")  # fmt: skip
    if not (args.port_base == 0 or 1 <= args.port_base <= 65535 - (_PORTS - 1)):
        problems.append(f"--port-base: must be 0 (free ports) or 1..{65535 - (_PORTS - 1)} "
                        f"({_PORTS} consecutive ports), got {args.port_base}")  # fmt: skip
    return problems, venues


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve the Binance, Bybit and OKX emulators (or those `--venues` names) on loopback until
    interrupted; print the settings line that points a collector at them."""
    logs.configure("info", "auto")
    try:
        from collector.emulator import EmulatorOptions  # noqa: PLC0415
        from collector.emulator.bybit import BybitEmulator, BybitOptions  # noqa: PLC0415
        from collector.emulator.okx import OkxEmulator, OkxOptions  # noqa: PLC0415
        from collector.emulator.simulate import run_simulator  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name != "collector.emulator":
            raise  # the emulator is there but something it imports is not: a real error
        print(EMULATOR_MISSING, file=sys.stderr)
        return 2
    from collector.health import listen  # noqa: PLC0415

    problems, venues = _simulate_problems(args)
    if problems:
        raise ConfigError(problems)
    ports = {
        venue: {name: 0 if args.port_base == 0 else args.port_base + offset
                for name, offset in _PORT_OFFSETS[venue].items()}
        for venue in venues
    }  # fmt: skip
    if args.port_base != 0:
        for venue in venues:  # taken ports: a message now, not a traceback later
            for name, port in ports[venue].items():
                shown = name if venue == "binance" else f"{venue} {name}"
                fix = "choose another --port-base, or 0 for free ports"
                for sock in listen("127.0.0.1", port, setting=f"--port-base ({shown})", fix=fix):
                    sock.close()
    rate = {
        "binance": args.rate,
        "bybit": args.rate if args.bybit_rate is None else args.bybit_rate,
        "okx": args.rate if args.okx_rate is None else args.okx_rate,
    }

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        urls: dict[str, Mapping[str, str]] = {}
        async with contextlib.AsyncExitStack() as stack:
            # Bybit and OKX first, so that the one settings line can name every URL.
            for venue in venues:
                if venue == "binance":
                    continue
                emulator: BybitEmulator | OkxEmulator = (
                    BybitEmulator(BybitOptions(seed=args.seed, rate_per_s=rate[venue]))
                    if venue == "bybit"
                    else OkxEmulator(OkxOptions(seed=args.seed, rate_per_s=rate[venue]))
                )
                await emulator.start("127.0.0.1", ports=ports[venue])
                stack.push_async_callback(emulator.stop)
                urls[venue] = {"ws": emulator.ws_url, "rest": emulator.rest_url}
                log.info("emulator.started", venue=venue, rate_per_s=rate[venue], **urls[venue])

            def started(binance: Mapping[str, str]) -> None:
                urls["binance"] = binance
                print(_environment_line(venues, urls), flush=True)

            if "binance" in venues:
                options = EmulatorOptions.for_rate(rate["binance"], seed=args.seed)
                await run_simulator(options, host="127.0.0.1", ports=ports["binance"], stop=stop,
                                    on_started=started)  # fmt: skip
            else:
                print(_environment_line(venues, urls), flush=True)
                await stop.wait()
        return 0

    return asyncio.run(main())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    parser = argparse.ArgumentParser(
        prog="collector",
        description="Records every Binance liquidation it can see into Postgres.",
    )
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", type=Path, default=None,
            help="TOML config file (default: $COLLECTOR_CONFIG); environment variables "
            "COLLECTOR_<SECTION>_<KEY> override it",
        )  # fmt: skip

    p = sub.add_parser(
        "run",
        help="run the collector daemon",
        description="Stream Binance liquidations (and poll configured accounts) into Postgres "
        "until SIGTERM/SIGINT, then drain and exit. With no database configured, an embedded "
        "PostgreSQL is started in [database] embedded_dir.",
    )
    with_config(p)
    p.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply migrations/*.sql in order, each in its own transaction, recorded in "
        "schema_migrations, then exit.",
    )
    with_config(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "check",
        help="health probe for Docker/Kubernetes (exit 0 healthy, 1 not)",
        description="Ask the running daemon's /readyz (or /healthz with --live) and exit 0 if "
        "it answers 200, 1 otherwise.",
    )
    with_config(p)
    p.add_argument("--live", action="store_true", help="check liveness (/healthz) only")
    p.add_argument("--url", default=None, help="full URL to probe instead of the configured one")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.set_defaults(func=cmd_check)

    add_sql_parser(sub, with_config)
    add_file_parsers(sub, with_config)

    p = sub.add_parser(
        "simulate",
        help="run the in-repo Binance, Bybit and OKX emulators on loopback",
        description="Serve emulators of Binance (websocket streams and REST), Bybit and OKX "
        "(their public liquidation streams and REST) on 127.0.0.1 for offline demos, tests and "
        "benchmarks. Prints the environment settings that point a collector at them.",
    )
    p.add_argument(
        "--rate", type=float, default=20.0,
        help="liquidation events per second, per venue (default 20)",
    )  # fmt: skip
    p.add_argument("--bybit-rate", type=float, default=None, help="Bybit's (default: --rate)")
    p.add_argument("--okx-rate", type=float, default=None, help="OKX's (default: --rate)")
    p.add_argument("--seed", type=int, default=0, help="random seed for generated events")
    p.add_argument(
        "--venues", default=",".join(SIMULATED_VENUES),
        help="comma-separated venues to serve (default: binance,bybit,okx)",
    )  # fmt: skip
    p.add_argument(
        "--port-base", type=int, default=9400,
        help="first of ten consecutive ports: Binance fstream, dstream, fapi, dapi, papi, sapi, "
        "then Bybit ws, rest, then OKX ws, rest (those of venues not served stay free); "
        "0 picks free ports",
    )  # fmt: skip
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `collector` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 2
    except CollectorError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
