"""Signed-request checks of the account emulator: API keys, signatures, timestamps, error bodies.

Pure code, no I/O: the REST layer (`account_rest`) feeds it the raw query string and the server
clock. Rules and messages follow docs/binance.md §2.2 (signing), §2.3 (timing) and
§5 (error codes); where docs/binance.md leaves a choice open the docstring says which one is made.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

API_KEY_HEADER: Final = "X-MBX-APIKEY"
DEFAULT_RECV_WINDOW_MS: Final = 5000
MAX_RECV_WINDOW_MS: Final = 60000
"""§2.3: "The value cannot be greater than 60000" (papi/sapi; assumed for fapi/dapi too)."""
AHEAD_TOLERANCE_MS: Final = 1000
"""§2.3: a timestamp at or beyond serverTime + 1000 is rejected whatever the recvWindow."""

API_KEY_FORMAT: Final = re.compile(r"[A-Za-z0-9]{1,128}")
"""What the emulator accepts as a well-formed API key (real keys are 64 alphanumerics). Anything
else, notably a key read from a file with its trailing newline, draws -2014."""


class AccountKind(StrEnum):
    """Whether an account is a classic one or has Portfolio Margin enabled (§4.4)."""

    CLASSIC = "classic"
    PORTFOLIO_MARGIN = "portfolio_margin"


class KeyType(StrEnum):
    """How an API key signs requests (§2.2)."""

    HMAC = "HMAC"
    RSA = "RSA"
    ED25519 = "ED25519"


class Permission(StrEnum):
    """API-key permissions the account endpoints care about.

    Enabling Portfolio Margin removes "Enable Futures" from an account's keys (§4.4), so the
    defaults are {FUTURES, MARGIN} for classic accounts and {PORTFOLIO_MARGIN, MARGIN} for PM ones.
    """

    FUTURES = "futures"
    MARGIN = "margin"
    PORTFOLIO_MARGIN = "portfolio_margin"


def default_permissions(kind: AccountKind) -> frozenset[Permission]:
    """The permissions a freshly created key of an account of `kind` has."""
    if kind is AccountKind.PORTFOLIO_MARGIN:
        return frozenset({Permission.PORTFOLIO_MARGIN, Permission.MARGIN})
    return frozenset({Permission.FUTURES, Permission.MARGIN})


class ApiError(Exception):
    """A Binance error answer: an HTTP status and the body `{"code": …, "msg": …}` (§5)."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body Binance sends for this error."""
        return {"code": self.code, "msg": self.msg}


# -- the error catalogue (§5); exact texts matter because clients match on them -----------------


def bad_api_key_format() -> ApiError:
    """-2014: the X-MBX-APIKEY header is missing or not a well-formed key."""
    return ApiError(-2014, "API-key format invalid.", 401)


def rejected_api_key() -> ApiError:
    """-2015: unknown key, or a key without permission for this API (e.g. PM key on fapi)."""
    return ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)


def invalid_signature() -> ApiError:
    """-1022: the signature does not verify, or is not the last parameter."""
    return ApiError(-1022, "Signature for this request is not valid.")


def timestamp_outside_recv_window() -> ApiError:
    """-1021: serverTime - timestamp > recvWindow."""
    return ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")


def timestamp_ahead() -> ApiError:
    """-1021: timestamp >= serverTime + 1000."""
    return ApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")


def mandatory_missing(name: str) -> ApiError:
    """-1102 for one parameter that is missing, empty or malformed."""
    return ApiError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def either_missing(first: str, second: str) -> ApiError:
    """-1102 when one of two parameters must be sent and neither was."""
    return ApiError(-1102, f"Param '{first}' or '{second}' must be sent, but both were empty/null!")


def invalid_parameter(name: str) -> ApiError:
    """-1130: a parameter's value is out of range or not one of its allowed values."""
    return ApiError(-1130, f"Data sent for parameter '{name}' is not valid.")


def unread_parameters(read: int, sent: int) -> ApiError:
    """-1104: parameters the endpoint does not take were sent."""
    return ApiError(
        -1104,
        f"Not all sent parameters were read; read '{read}' parameter(s) but was sent '{sent}'.",
    )


def start_after_end() -> ApiError:
    """-1023: startTime > endTime."""
    return ApiError(-1023, "Start time is greater than end time.")


def span_too_long(hours: int) -> ApiError:
    """-1127: endTime - startTime exceeds the endpoint's maximum span."""
    return ApiError(-1127, f"More than {hours} hours between startTime and endTime.")


def order_does_not_exist() -> ApiError:
    """-2013: a margin order lookup found nothing."""
    return ApiError(-2013, "Order does not exist.")


# -- keys and signatures ------------------------------------------------------------------------


def hmac_signature(secret: str, payload: str) -> str:
    """HMAC-SHA256 of `payload` keyed with `secret`, lower-case hex (§2.2)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One registered API key: which account it belongs to, how it signs, what it may do.

    `secret` is the HMAC secret, or the PEM of the RSA / Ed25519 public key.
    """

    api_key: str
    account: str
    key_type: KeyType
    secret: str = field(repr=False)
    permissions: frozenset[Permission]
    public_key: RSAPublicKey | Ed25519PublicKey | None = field(default=None, repr=False)

    def verify(self, payload: str, signature: str) -> bool:
        """Whether `signature` (already percent-decoded) signs `payload` with this key.

        HMAC: hex, compared case-insensitively. RSA (PKCS#1 v1.5, SHA-256) and Ed25519: strict
        base64, so an un-encoded `+` that arrived as a space fails, as on Binance (§2.2).
        """
        data = payload.encode()
        if self.key_type is KeyType.HMAC:
            expected = hmac_signature(self.secret, payload).encode()
            return hmac.compare_digest(expected, signature.lower().encode("utf-8", "replace"))
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        try:
            if isinstance(self.public_key, RSAPublicKey):
                self.public_key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(self.public_key, Ed25519PublicKey):
                self.public_key.verify(raw, data)
            else:  # pragma: no cover - make_api_key always loads one
                return False
        except InvalidSignature:
            return False
        return True


def make_api_key(
    api_key: str,
    account: str,
    key_type: KeyType | str,
    secret_or_public_pem: str,
    permissions: Iterable[Permission | str],
) -> ApiKey:
    """Validate and build an `ApiKey`; raises ValueError for a malformed key, secret or PEM."""
    if not API_KEY_FORMAT.fullmatch(api_key):
        raise ValueError(f"API key {api_key!r} is not 1-128 ASCII letters and digits")
    kind = KeyType(key_type)
    public_key: RSAPublicKey | Ed25519PublicKey | None = None
    if kind is KeyType.HMAC:
        if not secret_or_public_pem:
            raise ValueError("an HMAC key needs a non-empty secret")
    else:
        try:
            loaded = serialization.load_pem_public_key(secret_or_public_pem.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{kind} key {api_key!r}: not a PEM public key") from exc
        expected = RSAPublicKey if kind is KeyType.RSA else Ed25519PublicKey
        if not isinstance(loaded, expected):
            raise ValueError(f"{kind} key {api_key!r}: PEM holds a {type(loaded).__name__}")
        public_key = loaded
    return ApiKey(
        api_key,
        account,
        kind,
        secret_or_public_pem,
        frozenset(Permission(p) for p in permissions),
        public_key,
    )


@dataclass(frozen=True, slots=True)
class SignedQuery:
    """A request's parameters split the way Binance verifies them (§2.2).

    `payload` is the query string exactly as received minus its final `&signature=…`, followed by
    the raw body; `signature` is percent-decoded; `params` are the decoded other parameters (for
    a repeated name the last value wins) and `sent` counts them.
    """

    payload: str
    signature: str
    params: dict[str, str]
    sent: int


def parse_signed_query(raw_query: str, body: str = "") -> SignedQuery:
    """Split a raw (still percent-encoded) query string and body into a `SignedQuery`.

    Raises -1102 when no `signature` is sent, and -1022 when it is not the last parameter of the
    query string ("Please make sure the signature is the end part of your query string", §2.2).
    """
    segments = raw_query.split("&") if raw_query else []
    names = [unquote_plus(segment.partition("=")[0]) for segment in segments]
    if "signature" not in names:
        raise mandatory_missing("signature")
    if names[-1] != "signature" or names.count("signature") > 1:
        raise invalid_signature()
    last = segments[-1]
    signature = unquote_plus(last.partition("=")[2])
    if not signature:
        raise mandatory_missing("signature")
    payload = raw_query[: max(0, len(raw_query) - len(last) - 1)] + body
    params: dict[str, str] = {}
    for name, segment in zip(names[:-1], segments[:-1], strict=True):
        if segment:
            params[name] = unquote_plus(segment.partition("=")[2])
    return SignedQuery(payload, signature, params, sent=len(params))


def parse_long(params: Mapping[str, str], name: str) -> int | None:
    """An optional LONG parameter: None when absent, -1130 when not a decimal integer."""
    value = params.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"-?[0-9]{1,19}", value):
        raise invalid_parameter(name)
    return int(value)


def check_timestamp(params: Mapping[str, str], server_ms: int) -> None:
    """Apply §2.3 to `timestamp` / `recvWindow` against the server clock `server_ms`.

    Accept when `timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow`.
    Raises -1102 for a missing or malformed timestamp, -1130 for a recvWindow outside 1..60000,
    and -1021 with the message that names which side of the window was missed.
    """
    raw = params.get("timestamp", "")
    if not re.fullmatch(r"[0-9]{1,19}", raw):
        raise mandatory_missing("timestamp")
    timestamp = int(raw)
    recv_window = parse_long(params, "recvWindow")
    if recv_window is None:
        recv_window = DEFAULT_RECV_WINDOW_MS
    elif not 0 < recv_window <= MAX_RECV_WINDOW_MS:
        raise invalid_parameter("recvWindow")
    if timestamp >= server_ms + AHEAD_TOLERANCE_MS:
        raise timestamp_ahead()
    if server_ms - timestamp > recv_window:
        raise timestamp_outside_recv_window()
