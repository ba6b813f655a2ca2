"""Database DSNs: `redact_dsn` for logs, `check_dsn` for what asyncpg would refuse at load.

Pure string work: no connection is made here (that is `collector.database`), and no problem
message ever quotes a DSN, which may hold a password.
"""

from __future__ import annotations

import re
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
_MASK = "***"
UNPARSEABLE_DSN = "<unparseable dsn>"
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t\r\n\f\v]*=[ \t\r\n\f\v]*")


def _is_secret_key(name: str) -> bool:
    # password, sslpassword, passfile, and any future pass-something.
    return "pass" in name.lower()


def _redact_query(query: str) -> str:
    """Mask the values of a URI query's secret and unknown keys (`&`-separated)."""
    out: list[str] = []
    in_secret = False  # segments after a secret, up to the next known key, are its pieces
    for segment in query.split("&"):
        key, eq, _ = segment.partition("=")
        name = unquote_plus(key)
        if eq and _is_secret_key(name):
            out.append(f"{key}={_MASK}")
            in_secret = True
        elif eq and name in _DSN_KEYWORDS:
            out.append(segment)
            in_secret = False
        elif in_secret:
            continue
        elif eq:
            out.append(f"{key}={_MASK}")
        else:
            out.append(_MASK)
    return "&".join(out)


def _redact_uri(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    # A password may hold unencoded `@`, `/`, `?` or `:`; only the last `@` surely ends it. If
    # a `:` comes before that `@`, everything from the first `:` to it is masked (with an `@` in
    # the query this masks too much, never too little).
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        prefix = f"{scheme}://{user}:{_MASK}@"
    else:
        userinfo, at, hostpart = rest.partition("@")
        prefix = f"{scheme}://{userinfo}{at}"
    path, question, query = hostpart.partition("?")
    return f"{prefix}{path}{question}{_redact_query(query) if question else ''}"


def _keyword_value_end(dsn: str, pos: int) -> int | None:
    """Where the libpq keyword value starting at `pos` ends (None: an unterminated quote)."""
    if dsn.startswith("'", pos):
        i = pos + 1
        while i < len(dsn):
            if dsn[i] == "\\":
                i += 2
            elif dsn[i] == "'":
                return i + 1
            else:
                i += 1
        return None
    i = pos
    while i < len(dsn) and not dsn[i].isspace():
        i += 2 if dsn[i] == "\\" else 1
    return min(i, len(dsn))


def _redact_keywords(dsn: str) -> str:
    """Redact libpq's `key=value key='quoted value'` form."""
    out: list[str] = []
    in_secret = False
    pos = 0
    while True:
        while pos < len(dsn) and dsn[pos].isspace():
            pos += 1
        if pos >= len(dsn):
            return " ".join(out)
        match = _KEYWORD.match(dsn, pos)
        if match is None:
            if not in_secret:
                return UNPARSEABLE_DSN  # not a keyword DSN: nothing in it is known to be safe
            while pos < len(dsn) and not dsn[pos].isspace():  # a piece of an unquoted password
                pos += 1
            continue
        name = match.group(1)
        end = _keyword_value_end(dsn, match.end())
        if end is None:  # the rest of the string is one unterminated value
            if not in_secret:
                out.append(f"{name}={_MASK}")
            return " ".join(out)
        if _is_secret_key(name):
            out.append(f"{name}={_MASK}")
            in_secret = True
        elif name in _DSN_KEYWORDS:
            out.append(f"{name}={dsn[match.end() : end]}")
            in_secret = False
        elif not in_secret:
            out.append(f"{name}={_MASK}")
        pos = end


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
        return _redact_keywords(dsn)
    except Exception:  # a redactor that fails must not echo its input
        return UNPARSEABLE_DSN


# libpq keywords (`host=db dbname=x`) that have an equivalent in the URIs asyncpg reads.
_URI_KEYWORDS = (
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
    "application_name",
    "options",
)
_DSN_WHERE = "[database] dsn"
_DSN_FORMS = (
    "expected a postgresql:// URI (postgresql://user@host:5432/dbname) "
    "or libpq keyword=value pairs (host=... dbname=...)"
)
# `key = value`: the value single-quoted (backslash escapes) or a run without whitespace.
_KEYWORD_PAIR = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)"
)


def _parse_keyword_dsn(text: str) -> dict[str, str] | None:
    """libpq's `key=value ...` form (values optionally single-quoted, backslash escapes); None
    when `text` is not in that form."""
    pairs: dict[str, str] = {}
    pos = 0
    while text[pos:].strip():
        match = _KEYWORD_PAIR.match(text, pos)
        if match is None or (match.end() < len(text) and not text[match.end()].isspace()):
            return None
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = value[1:-1]
        pairs[key] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    return pairs or None


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
        pairs = _parse_keyword_dsn(text) if "=" in text else None
        if pairs is None:
            problems.append(f"{_DSN_WHERE}: {_DSN_FORMS}")
            return None
        converted = _keyword_dsn_to_uri(pairs, problems)
        if converted is None:
            return None
        text = converted
    return text if _check_dsn_uri(text, problems) else None
