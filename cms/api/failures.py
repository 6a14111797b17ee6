"""The API's own failures, and what a failed call answers by the URL it asked for: one table
for the app and for gunicorn.

The service (cms.api.service and its parts) raises cms.errors exceptions plus the four
below; cms.api.app maps each to an HTTP status once.

Every answer of cms-api is JSON, errors included, also those gunicorn makes itself before the
app sees the request (a request line over its 4094-byte limit, a malformed header):

* the spec's URLs answer their failure value (``{"vmid": 0}`` for /vm/create, ...);
* any other URL outside /v1 answers ``0``: the published spec's "for all the other RESTful
  calls return 0";
* /v1 answers ``{"title": ..., "description": ...}``.

The HTTP status stays the true one (404 for an unknown URL, 405 for a wrong method, 413,
414, ...); only a failure *inside* a spec call answers 200 (see cms.api.app).
"""

from __future__ import annotations

from typing import Any

from cms import errors


class Invalid(errors.CmsError):
    """The request is malformed (400)."""


class Unknown(errors.CmsError):
    """The VM, type, image, machine or group asked for does not exist (404)."""


class Duplicate(errors.CmsError):
    """A VM of that name exists already (409)."""


class NotImported(errors.CmsError):
    """The image is listed but has no copy in cms's image storage, and cannot be imported (409)."""

SPEC_FAILURE: dict[str, dict[str, Any]] = {
    "/vm/create": {"vmid": 0},
    "/vm/query": {"vmid": 0},
    "/vm/destroy": {"status": 0},
    "/vm/types": {"types": []},
    "/image/list": {"images": []},
    "/pm/list": {"pmids": []},
    "/pm/query": {"pmid": 0},
    "/pm/listvms": {"vmids": 0},
}
OTHER_FAILURE = 0


def is_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(path: str, title: str, description: str) -> Any:
    """The JSON body of an error on ``path``."""
    if path in SPEC_FAILURE:
        return dict(SPEC_FAILURE[path])
    if is_v1(path):
        return {"title": title, "description": description or title}
    return OTHER_FAILURE


def path_of_request_head(head: bytes) -> str:
    """The path of a request from its first bytes (``GET /vm/create?name=... HTTP/1.1``), for
    an error gunicorn raises before it has parsed the request line; "" when it cannot tell."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].startswith(b"/"):
        return ""
    return parts[1].split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")
