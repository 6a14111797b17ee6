"""playbooks/site.yml in one run, every play, against inventory/local.yml.

The hypervisor play defines a pool of the test's own, the image play finds the golden
image in the shared cache (/var/cache/cms/images, keyed by its input hash, so nothing is
built) and publishes it under the test's prefix, the copy play has nothing to copy
(localhost is a local connection), and the controller play installs cms and starts its two
services with every path under the prefix. The controller's hypervisor list comes from the
inventory (libvirt_host_name/libvirt_host_uri), as in a real deployment. Then: the API
answers and reaches the host, a second full run changes nothing, --check changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.system.test_ansible import (KEEP_KVM_DEVICE, _virsh, api_get, assert_changes_nothing, build_wheelhouse,
                                       controller_vars, http_answers, run_playbook, stop_local_services, wait_for)

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

GOLDEN_CACHE = Path("/var/cache/cms/images")


def test_site_yml_every_play_on_localhost(tmp_path: Path):
    name = f"cms-sitetest-{os.getpid()}"
    prefix = Path("/var/lib/cms/test") / name
    extra = controller_vars(prefix, build_wheelhouse(tmp_path / "wheelhouse"))
    extra.update({
        # hypervisor play: a pool of the test's own, the images dir under the prefix
        **KEEP_KVM_DEVICE,
        "libvirt_host_pools": [{"name": name, "path": str(prefix / "pool")}],
        "libvirt_host_images_dir": str(prefix / "images"),
        # image play: the shared cache (a hit), published under the prefix
        "golden_image_output_dir": str(prefix / "images"),
        # controller play: the same pool; hosts from the inventory's hypervisors group
        "cms_controller_pool": name,
        "cms_controller_pool_path": str(prefix / "pool"),
    })
    port = int(extra["cms_controller_api_bind"].rsplit(":", 1)[1])
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    args = ["-i", "inventory/local.yml", "playbooks/site.yml", "-e", f"@{vars_file}"]
    try:
        t0 = time.monotonic()
        out, counts = run_playbook(args, timeout=600)
        first = time.monotonic() - t0
        assert counts["localhost"]["failed"] == 0 and counts["localhost"]["changed"] > 0
        for play in ("Prepare the hypervisors", "Build the golden image",
                     "Put the golden image on every remote hypervisor", "Deploy the cms controller"):
            assert f"PLAY [{play}]" in out, f"play {play!r} did not run"
        assert "not cached; building" not in out, "the image play built instead of hitting the cache"
        assert f"cached in {GOLDEN_CACHE}/" in out

        # the image was published under the prefix, pointing into the shared cache
        golden = (prefix / "images" / "golden.qcow2").resolve()
        assert golden.parent.parent == GOLDEN_CACHE and golden.is_file(), golden
        assert (golden.parent / "manifest.json").is_file()
        config = (prefix / "etc" / "cms.toml").read_text()
        assert 'uri = "qemu:///system"' in config and f'pool = "{name}"' in config, config

        pool = _virsh("pool-info", name)
        assert pool.returncode == 0 and "running" in pool.stdout, pool.stdout + pool.stderr

        status = wait_for(lambda: http_answers(f"http://127.0.0.1:{port}/v1/types"), 60, "the API to answer")
        assert status == 200
        assert api_get(port, "/pm/list") == {"pmids": [1]}
        pm = api_get(port, "/pm/query?pmid=1")
        assert pm["pmid"] == 1 and pm["capacity"]["cpu"] > 0, pm
        hosts = api_get(port, "/v1/hosts")
        hosts = hosts.get("hosts", hosts) if isinstance(hosts, dict) else hosts
        assert [(h["name"], h["uri"], h["up"]) for h in hosts] == [("local", "qemu:///system", True)], hosts

        second = assert_changes_nothing(args)
        print(f"site.yml: first run {first:.1f}s, second run {second:.1f}s")
    finally:
        stop_local_services(prefix)
        for cmd in ("pool-destroy", "pool-undefine"):
            _virsh(cmd, name)
        shutil.rmtree(prefix, ignore_errors=True)
    assert _virsh("pool-info", name).returncode != 0, "the test pool is still defined"
