"""Signing: Binance's documented HMAC example byte for byte, RSA and Ed25519 verified with the
public key, and the exact string that is sent."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from collector.config import Secret
from collector.exceptions import ConfigError
from collector.rest.signing import (
    HmacSigner,
    encode_query,
    make_signer,
    signed_query,
)

DOC_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
DOC_PAYLOAD = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
    "&recvWindow=5000&timestamp=1591702613943"
)
DOC_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"
DOC_PARAMS: list[tuple[str, str | int]] = [
    ("symbol", "BTCUSDT"),
    ("side", "BUY"),
    ("type", "LIMIT"),
    ("quantity", 1),
    ("price", 9000),
    ("timeInForce", "GTC"),
    ("recvWindow", 5000),
    ("timestamp", 1591702613943),
]


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Secret:
    return Secret(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def test_hmac_matches_binance_documented_example() -> None:
    """The USD-M docs' HMAC example signs to exactly the documented hex digest."""
    assert HmacSigner(Secret(DOC_SECRET)).sign(DOC_PAYLOAD) == DOC_SIGNATURE


def test_signed_query_is_the_exact_sent_string_with_signature_last() -> None:
    """The encoded parameters are the documented payload and the signature is appended last."""
    signer = make_signer("hmac", Secret(DOC_SECRET), "a")
    assert encode_query(DOC_PARAMS) == DOC_PAYLOAD
    assert signed_query(DOC_PARAMS, signer) == f"{DOC_PAYLOAD}&signature={DOC_SIGNATURE}"


def test_non_ascii_values_are_percent_encoded_before_signing() -> None:
    """A Chinese symbol is UTF-8 percent-encoded and the encoded string is what is signed."""
    signer = HmacSigner(Secret(DOC_SECRET))
    query = signed_query([("symbol", "测试USDT"), ("timestamp", 1)], signer)
    payload = "symbol=%E6%B5%8B%E8%AF%95USDT&timestamp=1"
    assert query == f"{payload}&signature={signer.sign(payload)}"


def test_rsa_signature_verifies_and_is_url_encoded() -> None:
    """RSA signs PKCS#1 v1.5/SHA-256, base64, percent-encoded; the public key verifies it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = make_signer("rsa", _pem(key), "a").sign(DOC_PAYLOAD)
    assert "+" not in signature
    assert "/" not in signature
    assert "=" not in signature
    key.public_key().verify(
        base64.b64decode(unquote(signature)),
        DOC_PAYLOAD.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_ed25519_signature_verifies() -> None:
    """Ed25519 signs the payload bytes, base64 and percent-encoded; the public key verifies it."""
    key = ed25519.Ed25519PrivateKey.generate()
    signature = make_signer("ed25519", _pem(key), "a").sign(DOC_PAYLOAD)
    key.public_key().verify(base64.b64decode(unquote(signature)), DOC_PAYLOAD.encode())


def test_wrong_key_type_is_a_config_error_without_the_key() -> None:
    """An Ed25519 PEM configured as RSA raises ConfigError naming the account, not the key."""
    pem = _pem(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError) as info:
        make_signer("rsa", pem, "acct")
    assert str(info.value) == (
        "invalid configuration (1 problem(s)):\n"
        "  - [[accounts]] 'acct' api_secret: the PEM key is not rsa"
    )
    assert "PRIVATE" not in str(info.value)


def test_garbage_pem_is_a_config_error() -> None:
    """A secret that is not PEM at all is reported as such."""
    with pytest.raises(ConfigError, match="not a PEM private key for ed25519"):
        make_signer("ed25519", Secret("nope"), "acct")


def test_signers_never_print_secrets() -> None:
    """Signer reprs show <SECRET>."""
    assert repr(HmacSigner(Secret(DOC_SECRET))) == "HmacSigner(<SECRET>)"
