"""The `cms` CLI as a subprocess against the live gunicorn API of tests/integration/test_api_real.py."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.support import ROOT
from tests.integration.test_api_real import TOKEN, live_api  # noqa: F401 - the module-scoped server fixture

pytestmark = pytest.mark.real


def cms(*args: str, url: str | None = None, token: str | None = None):
    cmd = [sys.executable, "-m", "cms.cli"]
    if url:
        cmd += ["--url", url]
    if token:
        cmd += ["--token", token]
    return subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_against_the_running_api(live_api):  # noqa: F811
    url = live_api["url"]
    r = cms("types", url=url)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ["TID", "CPU", "RAM", "DISK"]
    r = cms("--json", "images", url=url)
    assert r.returncode == 0 and json.loads(r.stdout) == {"images": [{"id": 100, "name": "blank-64"}]}
    r = cms("pm", "list", url=url)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4
    name = f"cli-{uuid.uuid4().hex[:6]}"
    r = cms("--json", "vm", "create", name, "1", "--image", "100", url=url)
    assert r.returncode == 0, r.stderr
    vmid = json.loads(r.stdout)["vmid"]
    assert vmid > 0
    r = cms("--json", "vm", "query", str(vmid), url=url)
    assert json.loads(r.stdout)["name"] == name
    pmid = json.loads(r.stdout)["pmid"]
    assert name in cms("vm", "list", url=url).stdout
    r = cms("vm", "create", name, "1", url=url)
    assert r.returncode == 1 and "not created" in r.stderr and "Traceback" not in r.stderr
    r = cms("pm", "query", "1", url=url)
    assert r.returncode == 0 and "capacity" in r.stdout
    r = cms("--json", "pm", "listvms", str(pmid), url=url)
    assert r.returncode == 0 and vmid in json.loads(r.stdout)["vmids"]
    r = cms("pm", "listvms", "9", url=url)
    assert r.returncode == 1 and r.stderr == "cms: no machine 9\n"
    assert cms("vm", "destroy", str(vmid), url=url).stdout.strip() == f"destroyed VM {vmid}"
    r = cms("vm", "destroy", str(vmid), url=url)
    assert r.returncode == 1 and "not destroyed" in r.stderr
    r = cms("vm", "query", str(vmid), url=url)
    assert r.returncode == 1
    r = cms("group", "status", url=url)
    assert r.returncode == 0 and r.stdout.startswith("group web:")
    r = cms("group", "scale", "web", "2", url=url)
    assert r.returncode == 1 and "401" in r.stderr
    r = cms("group", "scale", "web", "2", url=url, token=TOKEN)
    assert r.returncode == 0 and "asked group web for 2 replicas" in r.stdout
    r = cms("group", "status", "web", url=url)
    assert "asked 2" in r.stdout


def test_cli_usage_and_unreachable_server():
    r = cms("vm", "query", "abc", url="http://127.0.0.1:9")
    assert r.returncode == 2 and "usage" in r.stderr
    r = cms(url="http://127.0.0.1:9")
    assert r.returncode == 2
    r = cms("types", url="http://127.0.0.1:9")
    assert r.returncode == 1 and r.stderr.startswith("cms: cannot reach the API at http://127.0.0.1:9")
    assert "Traceback" not in r.stderr


def test_cli_registers_an_image(live_api, tmp_path):  # noqa: F811
    url = live_api["url"]
    img = tmp_path / "cli-image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "8M"], check=True, timeout=60)
    name = f"cli-img-{uuid.uuid4().hex[:6]}"
    r = cms("images", "add", name, str(img), url=url)
    assert r.returncode == 1 and "401" in r.stderr
    r = cms("images", "add", name, str(img), url=url, token=TOKEN)
    assert r.returncode == 0 and r.stdout.startswith(f"image ") and "imported as /var/lib/cms/test/" in r.stdout, r.stderr
    assert name in cms("images", url=url).stdout
    r = cms("images", "add", "notes", str(tmp_path), url=url, token=TOKEN)
    assert r.returncode == 1 and r.stderr == f"cms: POST /v1/images: HTTP 400: {tmp_path}: is a directory, not an image\n"
