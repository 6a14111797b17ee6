"""The operator console's files (cms/api/web/), served by Falcon.

The console is a client of the same /v1 JSON API as the CLI: plain ES modules and CSS with
no build step, and uPlot (vendored from npm by scripts/web-assets.sh) for the charts.

Caching: ``/`` is index.html with ``Cache-Control: no-cache`` and an ETag, so a browser asks
each time and gets a 304 while nothing changed. Every other file is under
``/static/<version>/``, where ``version`` is a hash of all the files: those answers are
``immutable`` for a year, and an upgrade changes the version, so index.html points at new
URLs and nothing stale is ever used. Within a version the modules import each other by
relative paths, which keeps them under the same prefix. A request for another version
(a page loaded before an upgrade) still gets today's file, marked ``no-cache``.

The files are read once when the app is built (each gunicorn worker, after the fork);
they are small (uPlot is the largest, ~145 KB).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import falcon

log = logging.getLogger("cms.api")
WEB_DIR = Path(__file__).with_name("web")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
IMMUTABLE = "public, max-age=31536000, immutable"
VENDOR_FILES = ("vendor/uPlot.esm.js", "vendor/uPlot.min.css")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load(root: Path = WEB_DIR) -> tuple[dict[str, Asset], str]:
    """Every servable file under root by its relative path, and the version (hash of all)."""
    assets: dict[str, Asset] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or p.suffix not in TYPES or rel.startswith(("node_modules/", ".")):
            continue
        body = p.read_bytes()
        assets[rel] = Asset(body, TYPES[p.suffix], hashlib.sha256(body).hexdigest()[:20])
    version = hashlib.sha256("".join(f"{k}:{a.etag};" for k, a in assets.items()).encode()).hexdigest()[:12]
    missing = [f for f in VENDOR_FILES if f not in assets]
    if missing:
        log.error("the console's charting library is missing (%s): run scripts/web-assets.sh; "
                  "the console works without its charts", ", ".join(missing))
    return assets, version


def _send(req: falcon.Request, resp: falcon.Response, asset: Asset, cache: str, body: bytes | None = None) -> None:
    resp.cache_control = [cache]
    resp.etag = asset.etag
    resp.vary = ["Accept-Encoding"]
    if req.if_none_match and any(t == asset.etag or t == "*" for t in req.if_none_match):
        resp.status = falcon.HTTP_304
        return
    resp.content_type = asset.content_type
    resp.data = asset.body if body is None else body


class Index:
    """GET /: index.html, pointing at this version's files."""

    def __init__(self, assets: dict[str, Asset], version: str) -> None:
        page = assets["index.html"]
        body = page.body.replace(b"{{version}}", version.encode())
        self.asset = Asset(body, page.content_type, f"{page.etag}-{version}")
        self.missing_vendor = [f for f in VENDOR_FILES if f not in assets]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _send(req, resp, self.asset, "no-cache")


class Static:
    """GET /static/{version}/{path}: one of the console's files."""

    def __init__(self, assets: dict[str, Asset], version: str) -> None:
        self.assets = assets
        self.version = version

    def on_get(self, req: falcon.Request, resp: falcon.Response, version: str, path: str) -> None:
        asset = self.assets.get(path)
        if asset is None or path == "index.html":
            hint = " (the charting library: run scripts/web-assets.sh)" if path in VENDOR_FILES else ""
            raise falcon.HTTPNotFound(title="Not found", description=f"no console file {path!r}{hint}")
        _send(req, resp, asset, IMMUTABLE if version == self.version else "no-cache")


def add_routes(app: falcon.App, root: Path = WEB_DIR) -> None:
    assets, version = load(root)
    app.add_route("/", Index(assets, version))
    app.add_route("/static/{version}/{path:path}", Static(assets, version))
