"""A throwaway stock PostgreSQL cluster for the benchmarks: initdb + pg_ctl in a temporary
directory, loopback only, a free port, every setting at its default (autovacuum on, fsync on,
synchronous_commit on) unless the caller names some (`settings`), deleted on exit.

    with stock_cluster() as cluster:
        print(cluster.dsn)          # postgresql://postgres@127.0.0.1:<port>/postgres

The binaries come from $BENCH_PG_BIN, default /usr/lib/postgresql/15/bin (Debian's
postgresql-15). PostgreSQL refuses to run as root, so as root the cluster runs as the system
user `postgres` (the Debian package creates it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its superuser DSN (database `postgres`) and data directory."""

    dsn: str
    data_dir: Path
    version: str

    def database_dsn(self, name: str, application_name: str | None = None) -> str:
        """The DSN of database `name` on this cluster (with an application_name if given)."""
        parts = urlsplit(self.dsn)._replace(path=f"/{name}")
        if application_name:
            parts = parts._replace(query=f"application_name={application_name}")
        return urlunsplit(parts)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@contextlib.contextmanager
def stock_cluster(settings: Mapping[str, str] | None = None) -> Iterator[Cluster]:
    """Start a fresh cluster with default settings (but `settings`, e.g.
    {"track_commit_timestamp": "on"}); stop and delete it on exit."""
    initdb, pg_ctl, postgres = (PG_BIN / n for n in ("initdb", "pg_ctl", "postgres"))
    if not initdb.exists():
        raise SystemExit(f"{initdb} not found: install postgresql-15 or set BENCH_PG_BIN")
    owner = None
    top = Path(tempfile.mkdtemp(prefix="collector-bench-pg-"))
    if os.geteuid() == 0:
        owner = "postgres"
        entry = pwd.getpwnam(owner)
        os.chown(top, entry.pw_uid, entry.pw_gid)
        top.chmod(0o700)
    data, log = top / "data", top / "server.log"
    port = free_port()
    started = False
    # SIGTERM (a benchmark stopped by its pid) unwinds like Ctrl-C, so the cluster still stops.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        subprocess.run(
            _as_owner([str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--no-sync"], owner),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # Only where it listens differs from the defaults: loopback, a free port, its own
        # socket directory (so it never collides with a system cluster's).
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={top}"
        options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
        subprocess.run(
            _as_owner([str(pg_ctl), "-D", str(data), "-l", str(log), "-o", options, "-w",
                       "-t", "60", "start"], owner),
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        started = True
        version = subprocess.run(
            [str(postgres), "--version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        yield Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, version)
    finally:
        if started:
            subprocess.run(
                _as_owner([str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "stop"], owner),
                check=False, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        shutil.rmtree(top, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
