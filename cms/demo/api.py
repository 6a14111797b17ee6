"""What the demo's cms-api offers, and what the demo removes from it when it stops.

So that the console of a demo machine (cms-demo prints its address) can make a VM as on a
deployment, the demo writes 004's types_file and image_file beside demo.toml, where the API
looks for them (cms.inventory.default_paths): two types and the golden image as the one
image. A token made per run and kept in demo.toml opens the console's actions. The demo
itself makes no VM; when it stops, every VM made through its API is destroyed through that
API, so the demo leaves nothing of its own behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from cms.cli import Client, Failure
from cms.config import Config
from cms.demo.common import say

DEMO_TYPES = {"types": [{"tid": 1, "cpu": 1, "ram": 512, "disk": 1}, {"tid": 2, "cpu": 2, "ram": 1024, "disk": 1}]}


def write_api_inventory(out: Path, golden: str) -> None:
    """The demo API's types_file and image_file (DEMO_TYPES, the golden image), beside demo.toml."""
    (out / "types_file").write_text(json.dumps(DEMO_TYPES) + "\n")
    (out / "image_file").write_text(f"{golden}\n")


def destroy_api_vms(cfg: Config, timeout: float = 120.0) -> None:
    """Destroy every VM made through the demo's API, through that API (it must be running)."""
    c = Client(cfg.api.url, cfg.api.token, timeout=timeout)
    try:
        vms = c.call("GET", "/v1/vms")["vms"]
    except (Failure, KeyError, TypeError) as exc:
        say(f"could not list the API's VMs to destroy them: {exc}")
        return
    for vm in vms:
        say(f"destroying {vm['name']} (vmid {vm['vmid']}), made through the demo's API")
        try:
            c.call("DELETE", f"/v1/vms/{vm['vmid']}")
        except Failure as exc:
            say(f"could not destroy {vm['name']}: {exc}")
