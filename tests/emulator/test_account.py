"""The account side of the REST emulator against a real aiohttp client on loopback
(docs/binance.md §2 signing and timing, §3 weights and 429/418, §4 force-order
endpoints, §5 error bodies). Time is a `ManualClock`; no test sleeps."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256

from collector.emulator import Emulator, EmulatorOptions
from collector.emulator.account_auth import make_api_key
from collector.emulator.account_limits import ManualClock
from collector.emulator.account_orders import Shape
from collector.emulator.account_rest import (
    AccountEmulator,
    AccountOptions,
    SignedRequest,
    SortOrder,
    TimeField,
    account_api,
    account_extension,
    install_account_api,
)

T0 = 1_782_799_980_000
"""A UTC minute boundary (2026-06-30 06:13:00), where every test's clock starts."""
DAY = 86_400_000
PM_ACCOUNT_ID = 7_000_001
DOC_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
DOC_PAYLOAD = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
    "&recvWindow=5000&timestamp=1591702613943"
)
DOC_DIGEST = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"
POLL_HINT = "Please use the websocket for live updates to avoid polling the API."
BAD_SIGNATURE = {"code": -1022, "msg": "Signature for this request is not valid."}
REJECTED_KEY = {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}

FAPI_FIELDS = [
    "orderId", "symbol", "status", "clientOrderId", "price", "avgPrice", "origQty",
    "executedQty", "cumQuote", "timeInForce", "type", "reduceOnly", "closePosition", "side",
    "positionSide", "stopPrice", "workingType", "origType", "time", "updateTime",
]  # fmt: skip
DAPI_FIELDS = [
    "orderId", "symbol", "pair", "status", "clientOrderId", "price", "avgPrice", "origQty",
    "executedQty", "cumBase", "timeInForce", "type", "reduceOnly", "closePosition", "side",
    "positionSide", "stopPrice", "workingType", "priceProtect", "origType", "time", "updateTime",
]  # fmt: skip
NOT_ON_PAPI = {"closePosition", "stopPrice", "workingType", "priceProtect"}
PAPI_MARGIN_FIELDS = [
    "avgPrice", "executedQty", "orderId", "price", "qty", "side", "symbol", "timeInForce",
    "updatedTime",
]  # fmt: skip
MARGIN_ORDER_FIELDS = [
    "clientOrderId", "cummulativeQuoteQty", "executedQty", "icebergQty", "isWorking", "orderId",
    "origQty", "price", "side", "status", "stopPrice", "symbol", "time", "timeInForce", "type",
    "updateTime", "accountId", "selfTradePreventionMode", "preventedMatchId", "preventedQuantity",
]  # fmt: skip


# -- client-side signing, written from the doc (§2.2), independent of the emulator ---------------


@dataclass(frozen=True)
class Signer:
    """An API key and how it turns a payload into the `signature` value sent in the URL."""

    api_key: str
    sign: Callable[[str], str]


def hmac_signer(api_key: str, secret: str) -> Signer:
    """HMAC-SHA256, hex."""
    return Signer(
        api_key, lambda p: hmac.new(secret.encode(), p.encode(), hashlib.sha256).hexdigest()
    )


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the module (generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    """One Ed25519 key for the module."""
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The PEM (SubjectPublicKeyInfo) of `key`'s public half."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def rsa_b64(key: rsa.RSAPrivateKey, payload: str) -> str:
    """RSASSA-PKCS1-v1_5 / SHA-256, base64 (not yet URL-encoded)."""
    return base64.b64encode(key.sign(payload.encode(), padding.PKCS1v15(), SHA256())).decode()


def rsa_signer(api_key: str, key: rsa.RSAPrivateKey) -> Signer:
    """RSA, base64, URL-encoded."""
    return Signer(api_key, lambda p: urllib.parse.quote(rsa_b64(key, p), safe=""))


def ed25519_signer(api_key: str, key: ed25519.Ed25519PrivateKey) -> Signer:
    """Ed25519, base64, URL-encoded."""
    return Signer(
        api_key,
        lambda p: urllib.parse.quote(base64.b64encode(key.sign(p.encode())).decode(), safe=""),
    )


CLASSIC = hmac_signer("CLASSICKEY", "classic-secret")
PM = hmac_signer("PMKEY", "pm-secret")


@dataclass
class Reply:
    """Status, headers and decoded body (JSON when it parses, else text) of one response."""

    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass
class Env:
    """A running emulator with the account API, its manual clock and a client session."""

    emulator: Emulator
    accounts: AccountEmulator
    clock: ManualClock
    session: aiohttp.ClientSession

    async def raw(
        self, host: str, path_and_query: str, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """GET `path_and_query` on `host` exactly as written (no re-encoding)."""
        url = yarl.URL(self.emulator.urls[host] + path_and_query, encoded=True)
        async with self.session.get(url, headers=headers) as response:
            data = await response.read()
            try:
                body: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                body = data.decode()
            return Reply(response.status, response.headers, body)

    async def get(
        self,
        host: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        signer: Signer | None = CLASSIC,
        *,
        timestamp: int | None = None,
    ) -> Reply:
        """A signed GET (unsigned when `signer` is None); `timestamp` defaults to the clock."""
        query = urllib.parse.urlencode(dict(params or {}))
        if signer is None:
            return await self.raw(host, path + (f"?{query}" if query else ""))
        stamp = f"timestamp={self.clock() if timestamp is None else timestamp}"
        query = f"{query}&{stamp}" if query else stamp
        signature = signer.sign(query)
        return await self.raw(
            host, f"{path}?{query}&signature={signature}", {"X-MBX-APIKEY": signer.api_key}
        )


StartEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
async def start() -> AsyncIterator[StartEnv]:
    """Start emulators (with `AccountOptions` overrides) holding a classic and a PM account."""
    started: list[tuple[Emulator, aiohttp.ClientSession]] = []

    async def start_env(now_ms: int = T0, **changes: Any) -> Env:
        clock = ManualClock(now_ms)
        options = AccountOptions(clock=clock, **changes)
        emulator = Emulator(EmulatorOptions(), extensions=[account_extension(options)])
        await emulator.start()
        session = aiohttp.ClientSession()
        started.append((emulator, session))
        accounts = account_api(emulator)
        accounts.add_account("classic", "classic", "CLASSICKEY", "classic-secret")
        accounts.add_account(
            "pm", "portfolio_margin", "PMKEY", "pm-secret", account_id=PM_ACCOUNT_ID
        )
        return Env(emulator, accounts, clock, session)

    yield start_env
    for emulator, session in started:
        await session.close()
        await emulator.stop()


def order_ids(rows: list[dict[str, Any]]) -> list[int]:
    """The orderIds of `rows`, in order."""
    return [row["orderId"] for row in rows]


# -- signing ------------------------------------------------------------------------------------


def test_doc_hmac_example_verifies() -> None:
    """The USD-M docs' worked HMAC example verifies, in either hex case, and a changed one fails."""
    key = make_api_key("DOCKEY", "doc", "HMAC", DOC_SECRET, [])
    assert key.verify(DOC_PAYLOAD, DOC_DIGEST)
    assert key.verify(DOC_PAYLOAD, DOC_DIGEST.upper())
    assert not key.verify(DOC_PAYLOAD.replace("9000", "9001"), DOC_DIGEST)


async def test_doc_hmac_example_over_the_wire(start: StartEnv) -> None:
    """The doc's exact query string and signature pass the signature and timestamp checks."""
    env = await start(now_ms=1591702613943, is_unknown_param_rejected=False)
    env.accounts.add_account("doc", "classic", "DOCKEY", DOC_SECRET)
    headers = {"X-MBX-APIKEY": "DOCKEY"}
    query = f"/fapi/v1/forceOrders?{DOC_PAYLOAD}&signature={DOC_DIGEST}"
    reply = await env.raw("fapi", query, headers)
    assert (reply.status, reply.body) == (200, [])
    assert env.accounts.stats.signed[-1] == SignedRequest(
        "fapi", "/fapi/v1/forceOrders", "DOCKEY", DOC_PAYLOAD, DOC_DIGEST, 0
    )
    env.accounts.configure(is_unknown_param_rejected=True)
    reply = await env.raw("fapi", query, headers)
    assert (reply.status, reply.body) == (
        400,
        {
            "code": -1104,
            "msg": "Not all sent parameters were read; read '3' parameter(s) but was sent '8'.",
        },
    )


async def test_all_key_types_accepted(start: StartEnv) -> None:
    """HMAC, RSA and Ed25519 keys each sign a request the emulator accepts."""
    env = await start()
    env.accounts.add_account("rsa", "classic", "RSAKEY", public_pem(rsa_key()), "RSA")
    env.accounts.add_account("ed", "classic", "EDKEY", public_pem(ed25519_key()), "ED25519")
    signers = [
        CLASSIC,
        rsa_signer("RSAKEY", rsa_key()),
        ed25519_signer("EDKEY", ed25519_key()),
    ]
    for signer in signers:
        reply = await env.get("fapi", "/fapi/v1/forceOrders", {"limit": 100}, signer)
        assert (reply.status, reply.body) == (200, [])
    assert [r.code for r in env.accounts.stats.signed] == [0, 0, 0]


async def test_wrong_signatures_rejected(start: StartEnv) -> None:
    """A signature by the wrong secret or private key draws HTTP 400 with the exact -1022 body."""
    env = await start()
    env.accounts.add_account("rsa", "classic", "RSAKEY", public_pem(rsa_key()), "RSA")
    env.accounts.add_account("ed", "classic", "EDKEY", public_pem(ed25519_key()), "ED25519")
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    signers = [
        hmac_signer("CLASSICKEY", "not-the-secret"),
        rsa_signer("RSAKEY", other_rsa),
        ed25519_signer("EDKEY", ed25519.Ed25519PrivateKey.generate()),
        hmac_signer("RSAKEY", "hmac-for-an-rsa-key"),
    ]
    for signer in signers:
        reply = await env.get("fapi", "/fapi/v1/forceOrders", None, signer)
        assert (reply.status, reply.body) == (400, BAD_SIGNATURE)


async def test_unencoded_base64_signature_rejected(start: StartEnv) -> None:
    """An RSA signature sent without URL-encoding its `+` fails (§2.2); encoded passes."""
    env = await start()
    env.accounts.add_account("rsa", "classic", "RSAKEY", public_pem(rsa_key()), "RSA")
    timestamp = T0
    while "+" not in rsa_b64(rsa_key(), f"timestamp={timestamp}"):
        timestamp -= 1
    query = f"timestamp={timestamp}"
    plain = rsa_b64(rsa_key(), query)
    headers = {"X-MBX-APIKEY": "RSAKEY"}
    reply = await env.raw("fapi", f"/fapi/v1/forceOrders?{query}&signature={plain}", headers)
    assert (reply.status, reply.body) == (400, BAD_SIGNATURE)
    encoded = urllib.parse.quote(plain, safe="")
    reply = await env.raw("fapi", f"/fapi/v1/forceOrders?{query}&signature={encoded}", headers)
    assert (reply.status, reply.body) == (200, [])


async def test_signature_position_and_payload_bytes(start: StartEnv) -> None:
    """The signature must come last and exist; the verified payload is the raw query as sent."""
    env = await start()
    headers = {"X-MBX-APIKEY": "CLASSICKEY"}
    query = f"symbol=BTCUSDT&timestamp={T0}"
    signature = CLASSIC.sign(query)
    reply = await env.raw(
        "fapi", f"/fapi/v1/forceOrders?{query}&signature={signature}&limit=5", headers
    )
    assert (reply.status, reply.body) == (400, BAD_SIGNATURE)
    reply = await env.raw("fapi", f"/fapi/v1/forceOrders?{query}", headers)
    assert (reply.status, reply.body) == (
        400,
        {
            "code": -1102,
            "msg": "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
        },
    )
    # Percent-encoding is part of the payload: %55 decodes to "U" but is signed as sent.
    odd = f"symbol=BTC%55SDT&timestamp={T0}"
    reply = await env.raw(
        "fapi", f"/fapi/v1/forceOrders?{odd}&signature={CLASSIC.sign(odd).upper()}", headers
    )
    assert (reply.status, reply.body) == (200, [])
    assert env.accounts.stats.signed[-1].payload == odd


async def test_api_key_errors(start: StartEnv) -> None:
    """A missing or malformed key draws -2014, an unknown one -2015, both HTTP 401."""
    env = await start()
    bad_format = {"code": -2014, "msg": "API-key format invalid."}
    query = f"/fapi/v1/forceOrders?timestamp={T0}&signature=00"
    assert (await env.raw("fapi", query)).body == bad_format
    reply = await env.raw("fapi", query, {"X-MBX-APIKEY": "CLASSIC-KEY"})
    assert (reply.status, reply.body) == (401, bad_format)
    reply = await env.get("fapi", "/fapi/v1/forceOrders", None, hmac_signer("NOSUCHKEY", "x"))
    assert (reply.status, reply.body) == (401, REJECTED_KEY)


async def test_account_kind_permissions(start: StartEnv) -> None:
    """PM keys are refused on fapi/dapi and classic keys on papi (-2015); each works on its own."""
    env = await start()
    for host, path in (("fapi", "/fapi/v1/forceOrders"), ("dapi", "/dapi/v1/forceOrders")):
        assert (await env.get(host, path, None, PM)).body == REJECTED_KEY
        assert (await env.get(host, path, None, CLASSIC)).body == []
    for path in ("/papi/v1/um/forceOrders", "/papi/v1/cm/forceOrders"):
        assert (await env.get("papi", path, None, CLASSIC)).body == REJECTED_KEY
        assert (await env.get("papi", path, None, PM)).body == []
    margin = "/papi/v1/margin/forceOrders"
    assert (await env.get("papi", margin, None, CLASSIC)).body == REJECTED_KEY
    env.accounts.add_api_key("classic", "MARGINONLY", "m", permissions=["margin"])
    margin_only = hmac_signer("MARGINONLY", "m")
    assert (await env.get("fapi", "/fapi/v1/forceOrders", None, margin_only)).status == 401
    reply = await env.get("sapi", "/sapi/v1/margin/forceLiquidationRec", None, margin_only)
    assert reply.body == {"rows": [], "total": 0}


# -- timing --------------------------------------------------------------------------------------


async def test_timestamp_rules(start: StartEnv) -> None:
    """§2.3: accept ts < server + 1000 and server - ts <= recvWindow; reject with exact -1021s."""
    env = await start()
    ahead = {
        "code": -1021,
        "msg": "Timestamp for this request was 1000ms ahead of the server's time.",
    }
    outside = {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}
    path = "/fapi/v1/forceOrders"
    cases: list[tuple[dict[str, Any], int, Any]] = [
        ({}, T0 + 999, []),
        ({}, T0 + 1000, ahead),
        ({"recvWindow": 60000}, T0 + 1000, ahead),
        ({}, T0 - 5000, []),
        ({}, T0 - 5001, outside),
        ({"recvWindow": 60000}, T0 - 60000, []),
        ({"recvWindow": 60000}, T0 - 60001, outside),
        (
            {"recvWindow": 60001},
            T0,
            {"code": -1130, "msg": "Data sent for parameter 'recvWindow' is not valid."},
        ),
    ]
    for params, timestamp, expected in cases:
        reply = await env.get("fapi", path, params, timestamp=timestamp)
        assert reply.body == expected, (params, timestamp)
        assert reply.status == (200 if expected == [] else 400)
    reply = await env.raw(
        "fapi",
        f"{path}?limit=1&signature={CLASSIC.sign('limit=1')}",
        {"X-MBX-APIKEY": "CLASSICKEY"},
    )
    assert reply.body == {
        "code": -1102,
        "msg": "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
    }
    assert [r.code for r in env.accounts.stats.signed][:3] == [0, -1021, -1021]


async def test_clock_skew_and_time_endpoints(start: StartEnv) -> None:
    """Each host's clock is clock() + its skew, reported by its time endpoint; papi has none."""
    env = await start(skew_ms={"fapi": 3000, "papi": -2000, "sapi": 250})
    assert (await env.get("fapi", "/fapi/v1/time", signer=None)).body == {"serverTime": T0 + 3000}
    assert (await env.get("dapi", "/dapi/v1/time", signer=None)).body == {"serverTime": T0}
    assert (await env.get("sapi", "/api/v3/time", signer=None)).body == {"serverTime": T0 + 250}
    assert (await env.get("papi", "/papi/v1/time", signer=None)).status == 404
    assert (await env.get("papi", "/papi/v1/ping", signer=None)).body == {}
    # A client stamping with the local clock is 3 s behind fapi (fine) but 2 s ahead of papi.
    assert (await env.get("fapi", "/fapi/v1/forceOrders")).body == []
    reply = await env.get("papi", "/papi/v1/um/forceOrders", signer=PM)
    assert reply.body["code"] == -1021
    env.clock.advance(60_000)
    assert (await env.get("fapi", "/fapi/v1/time", signer=None)).body == {"serverTime": T0 + 63_000}


# -- request weight, 429 and 418 -----------------------------------------------------------------


async def test_weight_headers(start: StartEnv) -> None:
    """fapi and dapi share one weight counter; papi, each sapi endpoint and /api have their own."""
    env = await start()

    async def used(host: str, path: str, params: Any = None, signer: Any = CLASSIC) -> str:
        reply = await env.get(host, path, params, signer)
        header = "X-SAPI-USED-IP-WEIGHT-1M" if path.startswith("/sapi") else "X-MBX-USED-WEIGHT-1M"
        return reply.headers[header]

    assert await used("fapi", "/fapi/v1/forceOrders", {"symbol": "BTCUSDT"}) == "20"
    assert await used("fapi", "/fapi/v1/forceOrders") == "70"
    assert await used("dapi", "/dapi/v1/forceOrders") == "120"
    assert await used("dapi", "/dapi/v1/forceOrders", {"symbol": "BTCUSD_PERP"}) == "140"
    assert await used("dapi", "/dapi/v1/time", signer=None) == "141"
    assert await used("fapi", "/fapi/v1/exchangeInfo", signer=None) == "142"
    assert await used("papi", "/papi/v1/um/forceOrders", signer=PM) == "50"
    assert await used("papi", "/papi/v1/margin/forceOrders", signer=PM) == "51"
    order = {"symbol": "BTCUSDT", "orderId": 1}
    assert await used("papi", "/papi/v1/margin/order", order, PM) == "61"
    assert await used("sapi", "/sapi/v1/margin/forceLiquidationRec") == "1"
    assert await used("sapi", "/sapi/v1/margin/forceLiquidationRec") == "2"
    assert await used("sapi", "/sapi/v1/margin/order", order) == "10"
    assert await used("sapi", "/api/v3/time", signer=None) == "1"
    reply = await env.get("fapi", "/fapi/v1/ping", signer=None)
    assert "X-SAPI-USED-IP-WEIGHT-1M" not in reply.headers
    assert env.accounts.used_weight("futures") == 143
    assert env.accounts.stats.max_used_weight["papi"] == 61
    env.clock.advance(60_000)
    assert await used("fapi", "/fapi/v1/time", signer=None) == "1"
    assert await used("papi", "/papi/v1/ping", signer=None) == "1"


async def test_429_then_418_ban(start: StartEnv) -> None:
    """Over the limit: 429 with Retry-After; going on draws 418 and an IP ban on fapi/dapi/papi."""
    env = await start(now_ms=T0 + 15_000, futures_weight_limit=100, ban_after_429s=2)
    too_many = {
        "code": -1003,
        "msg": f"Too many requests; current limit is 100 requests per minute. {POLL_HINT}",
    }
    assert (await env.get("fapi", "/fapi/v1/forceOrders")).status == 200
    assert (await env.get("dapi", "/dapi/v1/forceOrders")).status == 200
    reply = await env.get("fapi", "/fapi/v1/forceOrders")
    assert (reply.status, reply.body) == (429, too_many)
    assert reply.headers["Retry-After"] == "45"
    assert reply.headers["X-MBX-USED-WEIGHT-1M"] == "150"
    reply = await env.get("dapi", "/dapi/v1/time", signer=None)
    assert (reply.status, reply.headers["Retry-After"]) == (429, "45")
    until = T0 + 15_000 + 120_000
    banned = {"code": -1003, "msg": f"Way too many requests; IP banned until {until}. {POLL_HINT}"}
    reply = await env.get("fapi", "/fapi/v1/time", signer=None)
    assert (reply.status, reply.body, reply.headers["Retry-After"]) == (418, banned, "120")
    env.clock.advance(60_000)  # a new minute does not lift the ban
    reply = await env.get("papi", "/papi/v1/um/forceOrders", signer=PM)
    assert (reply.status, reply.body, reply.headers["Retry-After"]) == (418, banned, "60")
    assert (await env.get("sapi", "/sapi/v1/margin/forceLiquidationRec")).status == 200
    stats = env.accounts.stats
    assert (stats.rate_limited_429, stats.banned_418, stats.errors[-1003]) == (2, 2, 4)
    assert env.accounts.banned_until_ms == until
    env.clock.advance(60_000)
    reply = await env.get("fapi", "/fapi/v1/time", signer=None)
    assert (reply.status, reply.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "1")


async def test_repeat_bans_grow_and_reset(start: StartEnv) -> None:
    """A second ban lasts twice as long as the first; reset_limits lifts bans and used weight."""
    env = await start(futures_weight_limit=1, ban_after_429s=0)
    reply = await env.get("fapi", "/fapi/v1/time", signer=None)
    assert reply.status == 200
    reply = await env.get("fapi", "/fapi/v1/time", signer=None)
    assert (reply.status, reply.headers["Retry-After"]) == (418, "120")
    env.clock.advance(120_000)
    assert (await env.get("fapi", "/fapi/v1/time", signer=None)).status == 200
    reply = await env.get("dapi", "/dapi/v1/time", signer=None)
    assert (reply.status, reply.headers["Retry-After"]) == (418, "240")
    assert env.accounts.banned_until_ms == T0 + 120_000 + 240_000
    env.accounts.reset_limits()
    reply = await env.get("papi", "/papi/v1/ping", signer=None)
    assert (reply.status, env.accounts.banned_until_ms) == (200, 0)
    assert env.accounts.used_weight("futures") == 0


async def test_retry_after_can_be_absent_on_futures(start: StartEnv) -> None:
    """With Retry-After switched off (⚠ futures docs), 429s carry none; sapi still sends it."""
    env = await start(
        futures_weight_limit=10, sapi_weight_limit=1, is_futures_retry_after_sent=False
    )
    reply = await env.get("fapi", "/fapi/v1/forceOrders")
    assert reply.status == 429
    assert "Retry-After" not in reply.headers
    await env.get("sapi", "/sapi/v1/margin/forceLiquidationRec")
    reply = await env.get("sapi", "/sapi/v1/margin/forceLiquidationRec")
    assert (reply.status, reply.headers["Retry-After"]) == (429, "60")


async def test_sapi_never_bans(start: StartEnv) -> None:
    """sapi answers 429 however long a client keeps going, never 418; its endpoints are separate."""
    env = await start(sapi_weight_limit=10, ban_after_429s=1)
    statuses = [
        (await env.get("sapi", "/sapi/v1/margin/forceLiquidationRec")).status for _ in range(16)
    ]
    assert statuses == [200] * 10 + [429] * 6
    reply = await env.get("sapi", "/sapi/v1/margin/order", {"symbol": "BTCUSDT", "orderId": 1})
    assert reply.body["code"] == -2013  # its own budget: served, not limited
    stats = env.accounts.stats
    assert (stats.rate_limited_429, stats.banned_418) == (6, 0)
    assert (await env.get("fapi", "/fapi/v1/time", signer=None)).status == 200


# -- limit-style endpoints (§4.1) ----------------------------------------------------------------


async def test_fapi_rows_match_doc_example(start: StartEnv) -> None:
    """Orders seeded with the doc's values come back exactly as the fapi doc example."""
    now = 1596110800000
    env = await start(now_ms=now)
    env.accounts.add_force_order(
        "classic", "um", orderId=6071832819, clientOrderId="autoclose-1596107620040000020",
        price="10871.09", avgPrice="10913.21000", origQty="0.001",
        time=1596107620044, updateTime=1596107620087,
    )  # fmt: skip
    env.accounts.add_force_order(
        "classic", "um", orderId=6072734303, clientOrderId="adl_autoclose", price="11023.14",
        avgPrice="10979.82000", origQty="0.001", side="BUY", positionSide="SHORT",
        time=1596110725059, updateTime=1596110725071,
    )  # fmt: skip
    reply = await env.get("fapi", "/fapi/v1/forceOrders", {"startTime": now - DAY})
    common = {
        "symbol": "BTCUSDT", "status": "FILLED", "origQty": "0.001", "executedQty": "0.001",
        "type": "LIMIT", "reduceOnly": False, "closePosition": False, "stopPrice": "0",
        "workingType": "CONTRACT_PRICE", "origType": "LIMIT",
    }  # fmt: skip
    expected = [
        common | {
            "orderId": 6071832819, "clientOrderId": "autoclose-1596107620040000020",
            "price": "10871.09", "avgPrice": "10913.21000", "cumQuote": "10.91321",
            "timeInForce": "IOC", "side": "SELL", "positionSide": "BOTH",
            "time": 1596107620044, "updateTime": 1596107620087,
        },
        common | {
            "orderId": 6072734303, "clientOrderId": "adl_autoclose", "price": "11023.14",
            "avgPrice": "10979.82000", "cumQuote": "10.97982", "timeInForce": "GTC",
            "side": "BUY", "positionSide": "SHORT", "time": 1596110725059,
            "updateTime": 1596110725071,
        },
    ]  # fmt: skip
    assert reply.body == expected
    assert [list(row) for row in reply.body] == [FAPI_FIELDS, FAPI_FIELDS]


async def test_shapes_per_endpoint(start: StartEnv) -> None:
    """dapi and papi cm add pair/cumBase; papi omits closePosition/stopPrice/workingType."""
    env = await start()
    env.accounts.add_force_order("classic", "cm", symbol="BTCUSD_PERP", price="65000.0",
                                 origQty="2", time=T0 - 1000)  # fmt: skip
    env.accounts.add_force_order("pm", "um", time=T0 - 1000)
    env.accounts.add_force_order("pm", "cm", time=T0 - 1000)
    dapi = (await env.get("dapi", "/dapi/v1/forceOrders")).body
    assert list(dapi[0]) == DAPI_FIELDS
    assert (dapi[0]["pair"], dapi[0]["cumBase"], dapi[0]["priceProtect"]) == (
        "BTCUSD",
        "0.00307692",
        False,
    )
    papi_um = (await env.get("papi", "/papi/v1/um/forceOrders", signer=PM)).body
    assert list(papi_um[0]) == [f for f in FAPI_FIELDS if f not in NOT_ON_PAPI]
    papi_cm = (await env.get("papi", "/papi/v1/cm/forceOrders", signer=PM)).body
    assert list(papi_cm[0]) == [f for f in DAPI_FIELDS if f not in NOT_ON_PAPI]
    env.accounts.configure(has_schema_drift=True)
    dapi = (await env.get("dapi", "/dapi/v1/forceOrders")).body
    assert list(dapi[0]) == [*DAPI_FIELDS, "goodTillDate", "cumQuote"]
    env.accounts.add_force_order("classic", "um", time=T0 - 1000)
    fapi = (await env.get("fapi", "/fapi/v1/forceOrders")).body
    assert list(fapi[0]) == [*FAPI_FIELDS, "pair", "cumBase"]


async def test_limit_cap_and_sort_orders(start: StartEnv) -> None:
    """At most `limit` (default 50, max 100) rows: the oldest ascending, or newest descending."""
    env = await start()
    seeded = env.accounts.seed_history("classic", "um", 150, T0 - 3_600_000, T0 - 60_000, seed=7)
    window = {"startTime": T0 - 3_600_000, "endTime": T0}
    oldest_first = sorted(seeded, key=lambda o: (o.time_ms, o.order_id))
    ids = [o.order_id for o in oldest_first]
    assert order_ids((await env.get("fapi", "/fapi/v1/forceOrders", window)).body) == ids[:50]
    reply = await env.get("fapi", "/fapi/v1/forceOrders", window | {"limit": 100})
    assert order_ids(reply.body) == ids[:100]
    env.accounts.configure(futures_sort=SortOrder.DESC)
    reply = await env.get("fapi", "/fapi/v1/forceOrders", window | {"limit": 100})
    assert order_ids(reply.body) == ids[::-1][:100]
    invalid = {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
    for limit in (101, 0):
        reply = await env.get("fapi", "/fapi/v1/forceOrders", window | {"limit": limit})
        assert (reply.status, reply.body) == (400, invalid)


async def test_default_windows(start: StartEnv) -> None:
    """No startTime: 7 days before endTime on fapi/papi, 200 (or 90) days on dapi."""
    env = await start(cm_retention_days=None)
    add = env.accounts.add_force_order
    um = [add("classic", "um", time=T0 - days * DAY).order_id for days in (8, 6)]
    pm = [add("pm", "um", time=T0 - days * DAY).order_id for days in (8, 6)]
    cm = [add("classic", "cm", time=T0 - days * DAY).order_id for days in (201, 150, 80, 10)]
    assert order_ids((await env.get("fapi", "/fapi/v1/forceOrders")).body) == um[1:]
    reply = await env.get("papi", "/papi/v1/um/forceOrders", signer=PM)
    assert order_ids(reply.body) == pm[1:]
    assert order_ids((await env.get("dapi", "/dapi/v1/forceOrders")).body) == cm[1:]
    env.accounts.configure(dapi_default_window_days=90)
    assert order_ids((await env.get("dapi", "/dapi/v1/forceOrders")).body) == cm[2:]
    # The window hangs off endTime, not off now.
    params = {"endTime": T0 - 7 * DAY}
    assert order_ids((await env.get("fapi", "/fapi/v1/forceOrders", params)).body) == um[:1]


async def test_cm_retention(start: StartEnv) -> None:
    """dapi and papi cm keep 90 days: older rows vanish, or an older startTime is an error."""
    env = await start()
    add = env.accounts.add_force_order
    cm = [add("classic", "cm", time=T0 - days * DAY).order_id for days in (100, 80)]
    pm = [add("pm", "cm", time=T0 - days * DAY).order_id for days in (100, 80)]
    params = {"startTime": T0 - 120 * DAY, "endTime": T0}
    assert order_ids((await env.get("dapi", "/dapi/v1/forceOrders", params)).body) == cm[1:]
    reply = await env.get("papi", "/papi/v1/cm/forceOrders", params, PM)
    assert order_ids(reply.body) == pm[1:]
    env.accounts.configure(is_retention_error=True)
    reply = await env.get("dapi", "/dapi/v1/forceOrders", params)
    assert (reply.status, reply.body) == (
        400,
        {"code": -1130, "msg": "Data sent for parameter 'startTime' is not valid."},
    )
    assert (await env.get("dapi", "/dapi/v1/forceOrders")).status == 200  # default start is fine
    env.accounts.configure(is_retention_error=False, cm_retention_days=None)
    assert order_ids((await env.get("dapi", "/dapi/v1/forceOrders", params)).body) == cm


async def test_filter_field_and_bounds(start: StartEnv) -> None:
    """Windows filter on `time` or `updateTime` (⚠), with each bound inclusive or not (⚠)."""
    env = await start()
    order = env.accounts.add_force_order("classic", "um", time=T0 - 10_000, updateTime=T0 - 9_000)
    exact = {"startTime": T0 - 10_000, "endTime": T0 - 10_000}
    around_update = {"startTime": T0 - 9_500, "endTime": T0 - 9_000}

    async def ids(params: dict[str, int]) -> list[int]:
        return order_ids((await env.get("fapi", "/fapi/v1/forceOrders", params)).body)

    assert await ids(exact) == [order.order_id]
    assert await ids(around_update) == []
    env.accounts.configure(is_start_inclusive=False)
    assert await ids(exact) == []
    env.accounts.configure(is_start_inclusive=True, is_end_inclusive=False)
    assert await ids(exact) == []
    env.accounts.configure(filter_field=TimeField.UPDATE_TIME)
    assert await ids(around_update) == []
    env.accounts.configure(is_end_inclusive=True)
    assert await ids(around_update) == [order.order_id]
    assert await ids(exact) == []


async def test_filters_and_parameter_errors(start: StartEnv) -> None:
    """autoCloseType and symbol filter; bad values draw -1130, -1023, -1127, -1102 exactly."""
    env = await start(max_span_hours=24)
    liq = env.accounts.add_force_order("classic", "um", time=T0 - 5000)
    adl = env.accounts.add_force_order("classic", "um", time=T0 - 4000, autoCloseType="ADL")
    eth = env.accounts.add_force_order("classic", "um", time=T0 - 3000, symbol="ETHUSDT")
    assert liq.fields["clientOrderId"].startswith("autoclose-")
    assert adl.fields["clientOrderId"] == "adl_autoclose"

    async def body(params: dict[str, Any]) -> Any:
        return (await env.get("fapi", "/fapi/v1/forceOrders", params)).body

    everything = [liq.order_id, adl.order_id, eth.order_id]
    assert order_ids(await body({})) == everything
    assert order_ids(await body({"autoCloseType": "LIQUIDATION"})) == everything[::2]
    assert order_ids(await body({"autoCloseType": "ADL"})) == [adl.order_id]
    assert order_ids(await body({"symbol": "ETHUSDT"})) == [eth.order_id]
    assert await body({"autoCloseType": "BOTH"}) == {
        "code": -1130,
        "msg": "Data sent for parameter 'autoCloseType' is not valid.",
    }
    assert await body({"startTime": T0, "endTime": T0 - 1}) == {
        "code": -1023,
        "msg": "Start time is greater than end time.",
    }
    assert await body({"startTime": T0 - DAY - 1, "endTime": T0}) == {
        "code": -1127,
        "msg": "More than 24 hours between startTime and endTime.",
    }
    assert await body({"symbol": ""}) == {
        "code": -1102,
        "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
    }


async def test_same_order_id_on_two_symbols(start: StartEnv) -> None:
    """One orderId may exist on two symbols; both are returned and updated separately."""
    env = await start()
    add = env.accounts.add_force_order
    add("classic", "um", orderId=42, symbol="BTCUSDT", time=T0 - 2000)
    add("classic", "um", orderId=42, symbol="ETHUSDT", time=T0 - 1000)
    with pytest.raises(ValueError, match="exists"):
        add("classic", "um", orderId=42, symbol="ETHUSDT")
    with pytest.raises(ValueError, match="several symbols"):
        env.accounts.update_order("classic", "um", 42, status="EXPIRED")
    env.accounts.update_order("classic", "um", 42, symbol="ETHUSDT", updateTime=T0 - 10)
    rows = (await env.get("fapi", "/fapi/v1/forceOrders")).body
    assert [(r["orderId"], r["symbol"], r["updateTime"]) for r in rows] == [
        (42, "BTCUSDT", T0 - 1957),
        (42, "ETHUSDT", T0 - 10),
    ]


async def test_late_rows_and_updates(start: StartEnv) -> None:
    """A late row appears with its past `time` only later; an update shows on the next poll."""
    env = await start()
    late = env.accounts.add_force_order(
        "classic", "um", time=T0 - 60_000, visible_from_ms=T0 + 30_000
    )
    window = {"startTime": T0 - 120_000, "endTime": T0}
    assert (await env.get("fapi", "/fapi/v1/forceOrders", window)).body == []
    env.clock.advance(30_000)
    rows = (await env.get("fapi", "/fapi/v1/forceOrders", window)).body
    assert [(r["orderId"], r["time"]) for r in rows] == [(late.order_id, T0 - 60_000)]
    env.accounts.update_order(
        "classic", "um", late.order_id, status="EXPIRED", updateTime=T0 + 29_000
    )
    rows = (await env.get("fapi", "/fapi/v1/forceOrders", window)).body
    assert [(r["status"], r["updateTime"]) for r in rows] == [("EXPIRED", T0 + 29_000)]


# -- page-style endpoints (§4.2) -----------------------------------------------------------------


async def test_sapi_pages_newest_first(start: StartEnv) -> None:
    """sapi pages `current`/`size` through a fixed window newest first, with the window's total."""
    env = await start()
    seeded = env.accounts.seed_history(
        "classic", "margin_classic", 25, T0 - 3_600_000, T0 - 1000, seed=3
    )
    newest_first = sorted(seeded, key=lambda o: (o.update_time_ms, o.order_id), reverse=True)
    window = {"startTime": T0 - 3_600_000, "endTime": T0}
    path = "/sapi/v1/margin/forceLiquidationRec"
    pages = [
        (await env.get("sapi", path, window | {"current": current, "size": 10})).body
        for current in (1, 2, 3, 4)
    ]
    assert [page["total"] for page in pages] == [25, 25, 25, 25]
    assert [len(page["rows"]) for page in pages] == [10, 10, 5, 0]
    got = [row["orderId"] for page in pages for row in page["rows"]]
    assert got == [o.order_id for o in newest_first]
    first = pages[0]["rows"][0]
    assert list(first) == [*PAPI_MARGIN_FIELDS[:-1], "isIsolated", "updatedTime"]
    assert first["updatedTime"] == newest_first[0].update_time_ms
    default_page = (await env.get("sapi", path, window)).body
    assert len(default_page["rows"]) == 10
    reply = await env.get("sapi", path, window | {"size": 101})
    assert reply.body == {"code": -1130, "msg": "Data sent for parameter 'size' is not valid."}


async def test_sapi_isolated_symbol(start: StartEnv) -> None:
    """Isolated-pair rows come only with `isolatedSymbol` (unless that reading is switched off)."""
    env = await start()
    cross = env.accounts.add_force_order("classic", "margin_classic", time=T0 - 9000)
    isolated = env.accounts.add_force_order(
        "classic", "margin_classic", symbol="BNBBTC", isIsolated=True, time=T0 - 8000
    )
    path = "/sapi/v1/margin/forceLiquidationRec"

    async def rows(params: dict[str, str]) -> list[tuple[int, bool]]:
        page = (await env.get("sapi", path, params)).body
        return [(row["orderId"], row["isIsolated"]) for row in page["rows"]]

    assert await rows({}) == [(cross.order_id, False)]
    assert await rows({"isolatedSymbol": "BNBBTC"}) == [(isolated.order_id, True)]
    env.accounts.configure(is_isolated_symbol_required=False)
    assert await rows({}) == [(isolated.order_id, True), (cross.order_id, False)]


async def test_papi_margin_sort_configurable(start: StartEnv) -> None:
    """papi margin rows have no isIsolated; their order (⚠ undocumented) is configurable."""
    env = await start()
    ids = [
        env.accounts.add_force_order("pm", "margin_pm", time=T0 - i * 1000).order_id
        for i in (3, 2, 1)
    ]
    path = "/papi/v1/margin/forceOrders"
    page = (await env.get("papi", path, signer=PM)).body
    assert (order_ids(page["rows"]), page["total"]) == (ids[::-1], 3)
    assert list(page["rows"][0]) == PAPI_MARGIN_FIELDS
    env.accounts.configure(papi_margin_sort=SortOrder.ASC)
    page = (await env.get("papi", path, {"size": 2, "current": 2}, PM)).body
    assert (order_ids(page["rows"]), page["total"]) == (ids[2:], 3)


# -- margin order lookup (§4.3) ------------------------------------------------------------------


async def test_margin_order_lookup(start: StartEnv) -> None:
    """Found by orderId or origClientOrderId; missing or unqueryable orders draw -2013."""
    env = await start()
    order = env.accounts.add_force_order(
        "pm", "margin_pm", symbol="BNBBTC", orderId=213205622, price="0.00493630",
        origQty="0.30000000", clientOrderId="ZwfQzuDIGpceVhKW5DvCmO", time=1562133008725,
        updateTime=1562133008725,
    )  # fmt: skip
    env.accounts.add_force_order("pm", "margin_pm", symbol="BNBBTC", is_queryable=False)
    missing = {"code": -2013, "msg": "Order does not exist."}
    path = "/papi/v1/margin/order"
    reply = await env.get("papi", path, {"symbol": "BNBBTC", "orderId": 213205622}, PM)
    assert reply.status == 200
    assert list(reply.body) == MARGIN_ORDER_FIELDS
    assert reply.body == order.render(Shape.PAPI_MARGIN_ORDER)
    assert reply.body["accountId"] == order.fields["accountId"] == PM_ACCOUNT_ID
    assert (reply.body["cummulativeQuoteQty"], reply.body["status"]) == ("0.00148089", "FILLED")
    by_client = {"symbol": "BNBBTC", "origClientOrderId": "ZwfQzuDIGpceVhKW5DvCmO"}
    assert (await env.get("papi", path, by_client, PM)).body["orderId"] == 213205622
    hidden_id = order.order_id + 1
    for params in (
        {"symbol": "BNBBTC", "orderId": hidden_id},
        {"symbol": "ETHBTC", "orderId": 213205622},
        {"symbol": "BNBBTC", "orderId": 1},
    ):
        reply = await env.get("papi", path, params, PM)
        assert (reply.status, reply.body) == (400, missing)
    assert (await env.get("papi", path, {"symbol": "BNBBTC"}, PM)).body == {
        "code": -1102,
        "msg": "Param 'orderId' or 'origClientOrderId' must be sent, but both were empty/null!",
    }
    assert (await env.get("papi", path, {"orderId": 1}, PM)).body["code"] == -1102


async def test_sapi_margin_order_isolated(start: StartEnv) -> None:
    """sapi lookups add isIsolated and find an isolated order only with isIsolated=TRUE."""
    env = await start()
    order = env.accounts.add_force_order(
        "classic", "margin_classic", symbol="BNBBTC", isIsolated=True
    )
    path = "/sapi/v1/margin/order"
    params = {"symbol": "BNBBTC", "orderId": order.order_id}
    assert (await env.get("sapi", path, params)).body["code"] == -2013
    reply = await env.get("sapi", path, params | {"isIsolated": "TRUE"})
    assert reply.body["isIsolated"] is True
    assert list(reply.body) == [*MARGIN_ORDER_FIELDS[:12], "isIsolated", *MARGIN_ORDER_FIELDS[12:]]
    assert reply.headers["X-SAPI-USED-IP-WEIGHT-1M"] == "20"


# -- faults ---------------------------------------------------------------------------------------


async def test_5xx_burst(start: StartEnv) -> None:
    """Scripted 503s and a 502 come first and cost no weight; then the endpoint answers again."""
    env = await start()
    path = "/fapi/v1/forceOrders"
    env.accounts.fail_next(path, 2, 503)
    env.accounts.fail_next(path, 1, 502)
    for _ in range(2):
        reply = await env.get("fapi", path)
        assert (reply.status, reply.body) == (503, {"code": -1001, "msg": "Service Unavailable."})
        assert "X-MBX-USED-WEIGHT-1M" not in reply.headers
    reply = await env.get("fapi", path)
    assert (reply.status, reply.body) == (502, "<html><body><h1>502 Bad Gateway</h1></body></html>")
    reply = await env.get("fapi", path)
    assert (reply.status, reply.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "50")
    stats = env.accounts.stats
    assert stats.faults_served == 3
    assert stats.responses[(path, 503)] == 2
    assert stats.requests[path] == 4


async def test_stall_until_released(start: StartEnv) -> None:
    """A stalled response is held until released; the request is visible while it waits."""
    env = await start()
    path = "/papi/v1/um/forceOrders"
    env.accounts.stall_next(path)
    pending = asyncio.create_task(env.get("papi", path, signer=PM))
    await env.accounts.wait_until(lambda: env.accounts.stats.stalled_now == 1)
    assert not pending.done()
    env.accounts.release_stalls()
    reply = await pending
    assert (reply.status, reply.body, env.accounts.stats.stalls) == (200, [], 1)


async def test_stall_outlasts_client_timeout(start: StartEnv) -> None:
    """A client whose deadline passes during a stall times out; shutdown frees the handler."""
    env = await start()
    env.accounts.stall_next("*", seconds=30.0)
    url = env.emulator.fapi_url + "/fapi/v1/time"
    with pytest.raises(TimeoutError):
        await env.session.get(url, timeout=aiohttp.ClientTimeout(total=0.2))
    assert env.accounts.stats.stalled_now == 1
    assert (await env.get("fapi", "/fapi/v1/time", signer=None)).status == 200


# -- seeding and installation --------------------------------------------------------------------


async def test_seed_history_is_deterministic() -> None:
    """Same seed on fresh emulators gives the same orders; all lie within the requested span."""
    renders = []
    for _ in range(2):
        emulator = Emulator(EmulatorOptions(), extensions=[install_account_api])
        accounts = account_api(emulator)
        accounts.add_account("a", "classic", "K", "s")
        orders = accounts.seed_history("a", "cm", 40, T0 - DAY, T0, seed=11, adl_share=0.5)
        assert all(T0 - DAY <= o.time_ms <= T0 for o in orders)
        assert [o.time_ms for o in orders] == sorted(o.time_ms for o in orders)
        renders.append([o.render(Shape.DAPI) for o in orders])
    assert renders[0] == renders[1]
    assert {row["clientOrderId"] == "adl_autoclose" for row in renders[0]} == {True, False}


async def test_installation_surface() -> None:
    """account_api finds the installed state (also at emulator.accounts) and refuses doubles."""
    plain = Emulator(EmulatorOptions())
    with pytest.raises(LookupError):
        account_api(plain)
    emulator = Emulator(EmulatorOptions(), extensions=[install_account_api])
    assert emulator.accounts is account_api(emulator)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="already installed"):
        install_account_api(emulator)
    accounts = account_api(emulator)
    with pytest.raises(ValueError, match="letters and digits"):
        accounts.add_account("x", "classic", "bad key", "s")
    with pytest.raises(ValueError, match="PEM"):
        accounts.add_account("y", "classic", "RSAKEY", "not a pem", "RSA")
    accounts.add_account("z", "classic", "ZKEY", "s")
    with pytest.raises(ValueError, match="Portfolio Margin"):
        accounts.add_force_order("z", "margin_pm")
    with pytest.raises(TypeError, match="float"):
        accounts.add_force_order("z", "um", price=1.5)
    with pytest.raises(TypeError, match="unknown force-order field"):
        accounts.add_force_order("z", "um", quantity="1")
