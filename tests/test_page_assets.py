"""The page's files as served (content types, caching, same-origin only) and as shipped (the
wheel holds every one of them; the vendored ones are uPlot's published bytes, with its licence)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import asyncpg

from collector.config import HttpConfig
from collector.out.page import load_assets
from tests.feed_harness import served

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "collector" / "out" / "static"
VENDOR = STATIC / "vendor"


def static_files() -> set[str]:
    return {str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file()}


async def test_the_page_and_its_assets_are_served_with_types_and_caching(
    pg_dsn: str, pg: asyncpg.Connection
) -> None:
    """`/` is HTML revalidated every time (ETag, 304); each asset it names is served with its
    type and, at its current `?v=`, cached for a year; any other `v` revalidates."""
    async with served(pg_dsn) as s, aiohttp.ClientSession() as http:
        async with http.get(f"{s.url}/") as resp:
            assert resp.status == 200
            html = await resp.text()
            headers = resp.headers
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        async with http.get(f"{s.url}/", headers={"If-None-Match": headers["ETag"]}) as resp:
            assert (resp.status, await resp.read()) == (304, b"")

        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        # Only our own origin: no CDN, no scheme, no protocol-relative URL (and an empty icon,
        # so the browser asks for no /favicon.ico).
        assert refs.pop(0) == "data:,"
        assert all(r.startswith("/static/") for r in refs), refs
        types = {}
        for ref in refs:
            async with http.get(f"{s.url}{ref}") as resp:
                assert resp.status == 200, ref
                assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                name = ref.split("?")[0].removeprefix("/static/")
                assert await resp.read() == (STATIC / name).read_bytes()
                types[name] = resp.headers["Content-Type"]
        assert types == {
            "vendor/uPlot.min.css": "text/css; charset=utf-8",
            "page.css": "text/css; charset=utf-8",
            "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
            "page.js": "text/javascript; charset=utf-8",
        }
        for ref, cache in (("/static/page.js?v=old", "no-cache"), ("/static/page.js", "no-cache"),
                           ("/static/vendor/uPlot.LICENSE", "no-cache")):  # fmt: skip
            async with http.get(f"{s.url}{ref}") as resp:
                assert (resp.status, resp.headers["Cache-Control"]) == (200, cache)
        async with http.get(f"{s.url}/static/vendor/uPlot.LICENSE") as resp:
            assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        for missing in ("/static/nothing.js", "/static/../page.py", "/static/index.html"):
            async with http.get(f"{s.url}{missing}") as resp:
                assert resp.status == 404, missing


async def test_no_page_when_the_api_is_off(pg_dsn: str, pg: asyncpg.Connection) -> None:
    """`[http] api_enabled = false` (the image's setting): no page, no assets, as no /v1."""
    async with (
        served(pg_dsn, http=HttpConfig(port=0, api_enabled=False)) as s,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/", "/static/page.js", "/v1/coverage"):
            async with http.get(f"{s.url}{path}") as resp:
                assert resp.status == 404, path


def test_the_vendored_files_are_uplots_published_bytes_with_its_licence() -> None:
    """The hashes in static/vendor/README.md are the files' own, and the licence is MIT."""
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert f"`{digest}`\n(`{name}`)" in readme or f"`{digest}` (`{name}`)" in readme, name
    script = (VENDOR / "uPlot.iife.min.js").read_text(encoding="utf-8")
    assert script.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    licence = (VENDOR / "uPlot.LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("The MIT License (MIT)\n\nCopyright (c) 2022 Leon Sorokin")


def test_load_assets_finds_every_file_through_the_package() -> None:
    """importlib.resources finds what the page serves, and every served file is in static/."""
    page, assets = load_assets()
    assert b"{{asset:" not in page.body
    assert set(assets) | {"index.html", "vendor/README.md"} == static_files()


def test_the_wheel_holds_every_static_file(tmp_path: Path) -> None:
    """The wheel (built as the Dockerfile builds it, from a copy of the sources) has every file
    of collector/out/static, byte for byte."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "emulator")
    shutil.copytree(ROOT / "collector", context / "collector", ignore=ignore)
    shutil.copytree(ROOT / "migrations", context / "migrations", ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(wheels), str(context)], check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = wheels.glob("collector-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        prefix = "collector/out/static/"
        shipped = {n.removeprefix(prefix): archive.read(n) for n in archive.namelist()
                   if n.startswith(prefix)}  # fmt: skip
    assert set(shipped) == static_files()
    for name, body in shipped.items():
        assert body == (STATIC / name).read_bytes(), name
