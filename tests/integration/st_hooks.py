"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.integration.st_hooks): hostile request bodies.

Schemathesis sends what the OpenAPI document allows and, in negative mode, what it forbids,
but always as JSON it could encode. Every fourth call that carries a body here sends one of
the bodies below instead, raw: nested deeper than any JSON decoder recurses, larger than
api.max_body_bytes, not UTF-8, or deep but decodable. The usual checks still apply (no 5xx,
a documented status, the documented error schema). Each such call and its status is appended
to $CMS_ST_HOSTILE_LOG, so the test can show they were sent and what they got.
"""

from __future__ import annotations

import json
import os
import threading

import schemathesis

CAP = int(os.environ.get("CMS_ST_BODY_CAP", "65536"))
HOSTILE = {
    "deep": b"[" * 10_000,
    "deep-object": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "oversized": b'{"name": "' + b"x" * (CAP + 1) + b'", "instance_type": 1}',
    "not-utf8": b'{"name": "\xff\xfe", "instance_type": 1}',
    "decodable-deep": b'{"replicas": ' + b"[" * 500 + b"]" * 500 + b"}",
}
_lock = threading.Lock()
_calls = [0]


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.body is None or not isinstance(case.body, (dict, list)):
        return
    with _lock:
        _calls[0] += 1
        n = _calls[0]
    if n % 4:
        return
    kind = list(HOSTILE)[(n // 4) % len(HOSTILE)]
    kwargs["data"] = HOSTILE[kind]
    kwargs["json"] = None
    case.headers = {**(case.headers or {}), "Content-Type": "application/json", "X-Hostile": kind}


@schemathesis.hook
def after_call(context, case, response):
    kind = response.request.headers.get("X-Hostile")
    log = os.environ.get("CMS_ST_HOSTILE_LOG")
    if kind and log:
        with _lock, open(log, "a") as fh:
            fh.write(json.dumps({"kind": kind, "method": response.request.method, "path": case.path,
                                 "status": response.status_code}) + "\n")
