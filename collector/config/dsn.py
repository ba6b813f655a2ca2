"""Database DSNs: `redact_dsn` for logs, `check_dsn` for what asyncpg would refuse at load.

Pure string work: no connection is made here (that is `collector.database`), and no problem
message ever quotes a DSN, which may hold a password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

# libpq's connection keywords (PostgreSQL 17); asyncpg reads the same names from a URI's query.
# A redacted DSN shows the values of these, except the secret ones; any other key's value is
# masked too (it may be a misspelt `password`, or a piece of a password with an unencoded `&`).
_DSN_KEYWORDS = frozenset((
    "host", "hostaddr", "port", "dbname", "database", "user", "password", "passfile",
    "require_auth", "channel_binding", "connect_timeout", "client_encoding", "options",
    "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication", "gssencmode",
    "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword",
    "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname", "gsslib",
    "gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
))  # fmt: skip
# The keywords (`host=db dbname=x`) that have an equivalent in the URIs asyncpg reads.
_URI_KEYWORDS = (
    "host", "port", "dbname", "user", "password", "passfile", "sslmode", "sslcert", "sslkey",
    "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib",
    "application_name", "options",
)  # fmt: skip
_MASK = "***"
UNPARSEABLE_DSN = "<unparseable dsn>"
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# One item of libpq's keyword form: `key = value`, the value single-quoted (backslash escapes),
# opened by a quote that never closes (the rest of the text), or a run without whitespace; or a
# stray piece of text that is no `key=value`.
_ITEM = re.compile(
    r"\s*(?:(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"
    r"(?P<value>'(?:[^'\\]|\\.)*'|(?P<open>'.*)|(?:[^\s'\\]|\\.)*)(?=\s|\Z)|(?P<stray>\S+))",
    re.DOTALL,
)
Item = tuple[str | None, str, bool]  # key (None: a stray piece), value as written, whether whole


def _keyword_items(text: str) -> Iterator[Item]:
    pos = 0
    while text[pos:].strip():
        match = _ITEM.match(text, pos)
        if match is None:  # cannot happen: a stray piece matches any non-blank text
            raise ValueError("not a keyword DSN")
        pos = match.end()
        if match["stray"] is not None:
            yield None, match["stray"], False
        else:
            yield match["key"], match["value"], match["open"] is None


def _masked(items: Iterable[Item], stray: str | None) -> list[str]:
    """`key=value` for each item with the value of every secret or unknown key masked. After a
    secret, items up to the next known key may be pieces of it (an unencoded `&`, an unquoted
    space) and are dropped; a stray piece elsewhere becomes `stray` (None: raise, nothing in
    the text is known to be safe). A value whose quote never closes is always masked."""
    out: list[str] = []
    in_secret = False
    for key, value, whole in items:
        name = "" if key is None else unquote_plus(key)
        if key is not None and "pass" in name.lower():  # password, sslpassword, passfile, ...
            out.append(f"{key}={_MASK}")
            in_secret = True
        elif key is not None and name in _DSN_KEYWORDS and whole:
            out.append(f"{key}={value}")
            in_secret = False
        elif in_secret:
            continue
        elif key is not None:
            out.append(f"{key}={_MASK}")
        elif stray is None:
            raise ValueError("not a DSN")
        else:
            out.append(stray)
    return out


def _redact_uri(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    # A password may hold unencoded `@`, `/`, `?` or `:`; only the last `@` surely ends it. If
    # a `:` comes before that `@`, everything from the first `:` to it is masked (with an `@` in
    # the query this masks too much, never too little). With no password the user ends at the
    # first `@`.
    userinfo, at, hostpart = rest.rpartition("@")
    if ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{_MASK}"
    elif at:
        userinfo, at, hostpart = rest.partition("@")
    path, question, query = hostpart.partition("?")
    segments = (segment.partition("=") for segment in query.split("&"))
    items = [(k, v, True) if eq else (None, k, False) for k, eq, v in segments]
    masked = "&".join(_masked(items, _MASK)) if question else ""
    return f"{scheme}://{userinfo}{at}{path}{question}{masked}"


def redact_dsn(dsn: str) -> str:
    """Return `dsn` safe for logs: every password (and anything that may be one) is `***`.

    Handles URIs (a password in the userinfo, even with unencoded `@`, `/` or `:`; `password`,
    `sslpassword` and `passfile` query parameters) and libpq's keyword form. The values of
    unknown keys are masked too. A string that is neither yields `<unparseable dsn>`, never
    itself. Never raises.
    """
    try:
        if _URI_SCHEME.match(dsn):
            return _redact_uri(dsn)
        return " ".join(_masked(_keyword_items(dsn), None))
    except Exception:  # a redactor that fails must not echo its input
        return UNPARSEABLE_DSN


_DSN_WHERE = "[database] dsn"
_DSN_FORMS = (
    "expected a postgresql:// URI (postgresql://user@host:5432/dbname) "
    "or libpq keyword=value pairs (host=... dbname=...)"
)


def _keyword_dsn_to_uri(pairs: dict[str, str], problems: list[str]) -> str | None:
    """The URI asyncpg reads that means what the libpq keywords mean."""
    unsupported = sorted(k for k in pairs if k not in _URI_KEYWORDS)
    if unsupported:
        hint = " (use [database] connect_timeout_s)" if "connect_timeout" in unsupported else ""
        problems.append(
            f"{_DSN_WHERE}: keyword(s) {', '.join(unsupported)} not supported{hint}; "
            f"supported: {', '.join(_URI_KEYWORDS)}"
        )
        return None
    params = dict(pairs)
    user, password = params.pop("user", ""), params.pop("password", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host, port = params.get("host", ""), params.get("port", "")
    netloc = ""
    if host and not host.startswith("/") and "," not in host and "," not in port:
        # One TCP host goes in the authority (readable in logs); sockets and lists in the query.
        del params["host"]
        params.pop("port", None)
        netloc = f"[{host}]" if ":" in host else quote(host, safe="")
        netloc += f":{port}" if port else ""
    if auth:
        netloc = f"{auth}@{netloc}"
    path = "/" + quote(params.pop("dbname", ""), safe="")
    query = urlencode(params)
    return f"postgresql://{netloc}{path}" + (f"?{query}" if query else "")


def _valid_ports(text: str) -> bool:
    return all(p.isdigit() and p.isascii() and 1 <= int(p) <= 65535 for p in text.split(","))


def _check_dsn_uri(dsn: str, problems: list[str]) -> bool:
    """Check what asyncpg would refuse (or misread) only when connecting. Problems never quote
    the DSN, which may hold a password."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        problems.append(f"{_DSN_WHERE}: not a valid URI")
        return False
    if parts.scheme not in ("postgresql", "postgres"):
        problems.append(f"{_DSN_WHERE}: the URI must start with postgresql:// or postgres://")
        return False
    # asyncpg splits the credentials off at the first '@'.
    hostspec = parts.netloc.partition("@")[2] if "@" in parts.netloc else parts.netloc
    ok, bad_port = True, False
    for spec in hostspec.split(",") if hostspec else []:
        if spec.startswith("["):
            match = re.fullmatch(r"\[[^\]]+\](?::(.*))?", spec)
            if match is None:
                problems.append(f"{_DSN_WHERE}: an IPv6 host must be written [address]:port")
                ok = False
                continue
            port = match.group(1)
        else:
            port = spec.partition(":")[2]
        bad_port = bad_port or bool(port and not _valid_ports(port))  # empty: the default
    if parts.query:
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            problems.append(f"{_DSN_WHERE}: the query (after '?') must be key=value pairs")
            return False
        bad_port = bad_port or ("port" in query and not _valid_ports(query["port"]))
    if bad_port:
        problems.append(f"{_DSN_WHERE}: the port must be a number 1..65535")
    return ok and not bad_port


def check_dsn(dsn: str, problems: list[str]) -> str | None:
    """`dsn` as the URI asyncpg reads (a libpq keyword DSN is converted), or None after
    appending what is wrong with it."""
    text = dsn.strip()
    if "://" not in text:
        items = list(_keyword_items(text)) if "=" in text else []
        if not items or not all(key is not None and whole for key, _, whole in items):
            problems.append(f"{_DSN_WHERE}: {_DSN_FORMS}")
            return None
        unquoted = ((k, v[1:-1] if v.startswith("'") else v) for k, v, _ in items)
        converted = _keyword_dsn_to_uri(
            {str(k): re.sub(r"\\(.)", r"\1", v) for k, v in unquoted}, problems
        )
        if converted is None:
            return None
        text = converted
    return text if _check_dsn_uri(text, problems) else None
