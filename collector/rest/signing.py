"""Request signing for Binance USER_DATA endpoints (docs/binance.md §2.2).

The signature covers the exact query string that is sent; it is appended last as
`&signature=...`. HMAC-SHA256 gives hex; RSA (PKCS#1 v1.5, SHA-256) and Ed25519 give base64,
which is percent-encoded because it contains `+`, `/` and `=`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlencode

from collector.config import KeyType, Secret, load_private_key

if TYPE_CHECKING:  # cryptography (~8 MB resident) is imported only for an RSA or Ed25519 key
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Param = tuple[str, str | int]


class Signer(Protocol):
    """Signs a query string; returns the signature ready to append (already URL-encoded)."""

    def sign(self, payload: str) -> str:
        """The `signature` value for `payload`, encoded for a query string."""
        ...


class HmacSigner:
    """HMAC-SHA256 with the API secret; hex output."""

    __slots__ = ("_secret",)

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    def sign(self, payload: str) -> str:
        """Hex HMAC-SHA256 of `payload` (hex needs no encoding)."""
        key = self._secret.reveal().encode()
        return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "HmacSigner(<SECRET>)"


class RsaSigner:
    """RSASSA-PKCS1-v1_5 over SHA-256 with a PEM private key; base64, percent-encoded."""

    __slots__ = ("_key",)

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def sign(self, payload: str) -> str:
        """URL-encoded base64 RSA signature of `payload`."""
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import padding  # noqa: PLC0415

        raw = self._key.sign(payload.encode(), padding.PKCS1v15(), hashes.SHA256())
        return quote(base64.b64encode(raw).decode(), safe="")

    def __repr__(self) -> str:
        return "RsaSigner(<SECRET>)"


class Ed25519Signer:
    """Ed25519 with a PEM private key; base64, percent-encoded."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, payload: str) -> str:
        """URL-encoded base64 Ed25519 signature of `payload`."""
        return quote(base64.b64encode(self._key.sign(payload.encode())).decode(), safe="")

    def __repr__(self) -> str:
        return "Ed25519Signer(<SECRET>)"


def make_signer(key_type: str, secret: Secret, account: str) -> Signer:
    """A signer for `key_type` (`hmac`, `rsa`, `ed25519`); for the asymmetric types `secret`
    is the PEM private key. Raises `ConfigError` (naming the account, never the key) when the
    key cannot be loaded or has the wrong type."""
    if key_type == KeyType.HMAC:
        return HmacSigner(secret)
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    key = load_private_key(key_type, secret, account)
    return RsaSigner(key) if isinstance(key, rsa.RSAPrivateKey) else Ed25519Signer(key)


def encode_query(params: Sequence[Param]) -> str:
    """The query string exactly as it is sent, parameters in the given order (UTF-8,
    percent-encoded the way the official Python connector's `urlencode` does)."""
    return urlencode([(k, str(v)) for k, v in params])


def signed_query(params: Sequence[Param], signer: Signer) -> str:
    """`encode_query(params)` followed by `&signature=<signature of that very string>`."""
    query = encode_query(params)
    return f"{query}&signature={signer.sign(query)}"
