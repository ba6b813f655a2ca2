"""Secrets never reach a log line: every DSN form is redacted in the daemon's real output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

from collector.config import UNPARSEABLE_DSN, redact_dsn
from collector.emulator import Emulator, EmulatorOptions
from tests.collector_process import collector_process, emulator_env, refused_port

# (DSN with {port}, its password, pieces of the password a naive parser would echo,
#  the redacted form expected in the log line, the error asyncpg reports)
FORMS = {
    "userinfo": (
        "postgresql://collector:Us3r-pw@127.0.0.1:{port}/db",
        "Us3r-pw",
        (),
        "postgresql://collector:***@127.0.0.1:{port}/db",
        "ConnectionRefusedError",
    ),
    "query": (
        "postgresql://collector@127.0.0.1:{port}/db?sslmode=disable&password=Qu3ry-pw",
        "Qu3ry-pw",
        (),
        "postgresql://collector@127.0.0.1:{port}/db?sslmode=disable&password=***",
        "ConnectionRefusedError",
    ),
    # A keyword DSN is converted to the equivalent URI at load, and logged as that.
    "keyword": (
        "host=127.0.0.1 port={port} user=collector password=K3yw0rd-pw dbname=db",
        "K3yw0rd-pw",
        (),
        "postgresql://collector:***@127.0.0.1:{port}/db",
        "ConnectionRefusedError",
    ),
    "keyword, quoted": (
        "host=127.0.0.1 port={port} password='Qu0ted pw\\'s' dbname=db",
        "Qu0ted pw\\'s",
        ("Qu0ted", "pw\\'s", "Qu0ted%20pw"),
        "postgresql://:***@127.0.0.1:{port}/db",
        "ConnectionRefusedError",
    ),
}

# DSNs that configuration refuses at start (exit 2) although they hold a password: the one
# message says what to fix and quotes no piece of the password. asyncpg's own parser used to
# raise "bad query field: 's4nd'" or take "Sl4sh" for the port ("invalid literal for int()").
REFUSED = {
    "query, unencoded &": (
        "postgresql://collector@127.0.0.1:{port}/db?password=Amp3r&s4nd&sslmode=disable",
        ("Amp3r", "s4nd"),
        "[database] dsn: the query (after '?') must be key=value pairs",
    ),
    "userinfo, unencoded /": (
        "postgresql://collector:Sl4sh/p4th@127.0.0.1:{port}/db",
        ("Sl4sh", "p4th"),
        "[database] dsn: the port must be a number 1..65535",
    ),
    "userinfo, unencoded @ : /": (
        "postgresql://collector:P@ss:w0rd/x@127.0.0.1:{port}/db",
        ("P@ss", "w0rd"),
        "[database] dsn: the port must be a number 1..65535",
    ),
}


@pytest.mark.parametrize("form", REFUSED)
async def test_a_refused_dsn_exits_2_without_quoting_the_password(form: str) -> None:
    """A DSN that cannot be used exits 2 at start with one message that names the setting and
    contains no piece of the password."""
    template, pieces, problem = REFUSED[form]
    with refused_port() as port:
        env = {"COLLECTOR_DATABASE_DSN": template.format(port=port), "COLLECTOR_HTTP_PORT": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "run", env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out.decode(), err.decode()) == (
        2, "", f"collector: invalid configuration (1 problem(s)):\n  - {problem}\n",
    )  # fmt: skip
    for secret in pieces:
        assert secret not in err.decode()


@pytest.mark.parametrize("form", FORMS)
async def test_database_unavailable_line_never_shows_the_password(form: str) -> None:
    """While the database is unreachable, each retry's line shows the DSN redacted, and no
    output of the process contains the password or a piece of it."""
    template, password, pieces, expected, error = FORMS[form]
    with refused_port() as port:
        dsn = template.format(port=port)
        async with collector_process({"COLLECTOR_DATABASE_DSN": dsn}) as collector:
            line = await collector.wait_for_log(
                lambda r: r.get("event") == "supervisor.database_unavailable"
            )
            assert (line["dsn"], line["error"]) == (expected.format(port=port), error)
            code = await collector.stop()
    output = collector.output()
    assert code == 0, output
    for secret in (password, *pieces):
        assert secret not in output
    assert [json.loads(x)["event"] for x in collector.stderr_lines] == [
        *["supervisor.database_unavailable"] * (len(collector.stderr_lines) - 1),
        "supervisor.stop_requested",
    ]


async def test_started_line_shows_the_dsn_redacted(pg_dsn: str) -> None:
    """`supervisor.started` names the database with its password masked."""
    parts = urlsplit(pg_dsn)
    if parts.password is None:  # trust authentication ignores a password; give it one to hide
        netloc = f"{parts.username}:St4rted-pw@{parts.netloc.rpartition('@')[2]}"
        parts = parts._replace(netloc=netloc)
    dsn = urlunsplit(parts)
    password = urlsplit(dsn).password
    assert password
    host = parts.netloc.rpartition("@")[2]
    async with (
        Emulator(EmulatorOptions()) as emu,
        collector_process({"COLLECTOR_DATABASE_DSN": dsn, **emulator_env(emu)}) as collector,
    ):
        line = await collector.wait_for_log(lambda r: r.get("event") == "supervisor.started")
        code = await collector.stop()
    expected = f"{parts.scheme}://{parts.username}:***@{host}{parts.path}"
    expected += f"?{parts.query}" if parts.query else ""
    assert line["database"] == expected
    assert code == 0, collector.output()
    assert password not in collector.output()


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://h/db", "postgres://h/db"),
        ("postgresql://h/db?password=pw&sslmode=disable", "postgresql://h/db?password=***&sslmode=disable"),
        ("postgresql://u@h/db?application_name=a@b", "postgresql://u@h/db?application_name=a@b"),
        ("postgresql://user@corp:pw@h/db", "postgresql://user@corp:***@h/db"),
        ("postgresql://:pw@h/db", "postgresql://:***@h/db"),
        ("postgresql://u:p?w#x@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?sslpassword=k&passfile=/p", "postgresql://u@h/db?sslpassword=***&passfile=***"),
        ("postgresql://u@h/db?pass%77ord=pw", "postgresql://u@h/db?pass%77ord=***"),
        ("postgresql://u@h/db?pasword=pw&search_path=s", "postgresql://u@h/db?pasword=***&search_path=***"),
        ("postgresql://u@h/db?password", "postgresql://u@h/db?***"),
        ("postgresql://u:pw@h/db?sslcert=/a@b", "postgresql://u:***@b"),
        ("host=h password= dbname=d", "host=h password=***"),  # libpq: the value is dbname=d
        ("host=h password=p w user=u", "host=h password=*** user=u"),
        ("host=h pasword=pw", "host=h pasword=***"),
        ("host=h password='unterminated dbname=d", "host=h password=***"),
        ("host='unterminated password=pw", "host=***"),
        ("host=h options='-c a=b' password=pw", "host=h options='-c a=b' password=***"),
        ("", ""),
        ("u:pw@h/db", UNPARSEABLE_DSN),
        (" postgresql://u:pw@h/db", UNPARSEABLE_DSN),
        ("host=h junk password=pw", UNPARSEABLE_DSN),
    ],
)  # fmt: skip
def test_redact_dsn_masks_every_form(dsn: str, redacted: str) -> None:
    """Passwords in the userinfo, the query and keyword values, misspelt or unknown keys and
    strings that are no DSN at all are masked; everything else is shown as written."""
    assert redact_dsn(dsn) == redacted
