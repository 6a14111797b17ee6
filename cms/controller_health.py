"""Asking this machine's cms-autoscaler how it stands: its /health (its role, the leader, its
term), for the API's /v1/controller and for `cms doctor`. The election itself is
cms.coordination; this only reads what the daemon reports."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from cms.config import Config


def health_url(cfg: Config) -> str:
    """Where this machine's cms-autoscaler answers /health ("" when autoscaler.metrics_listen is off)."""
    listen = cfg.autoscaler.metrics_listen
    if not listen:
        return ""
    host, _, port = listen.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '', '::', '[::]') else host}:{port}/health"


def local_health(cfg: Config, timeout: float = 2.0) -> dict[str, Any]:
    """This machine's cms-autoscaler's /health (its role, the leader, its term). Raises OSError
    or ValueError when it does not answer in time, or not with a JSON object."""
    url = health_url(cfg)
    if not url:
        raise ValueError("autoscaler.metrics_listen is empty: no /health to ask")
    return get_json(url, timeout)


def get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object (a /health), within ``timeout``; OSError or ValueError otherwise."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = json.loads(r.read())
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body
