"""The real-stack tests' first check: does libvirt define a domain quickly?

Where /dev/kvm was left root:root 0600 (no udev), libvirtd re-probes QEMU on every lookup
and each define takes about a minute; the real-stack tests would then time out one by one,
far from the cause. This guard runs `cms doctor`'s define check (a throwaway domain
defined and undefined, timed; once more if the first was slow) once per session, before the
first test marked `real`, and fails every such test at once with the check's one line,
which names the likely cause and scripts/kvm-device.sh. tests/integration/conftest.py and
tests/system/conftest.py use it.
"""

from __future__ import annotations

import pytest

from cms import errors
from cms.doctor.check import FAIL, Check
from cms.doctor.hosts import check_define
from cms.virt.host import Host

URI = "qemu:///system"


@pytest.fixture(scope="session")
def libvirt_defines_quickly() -> Check:
    host = Host("local", URI, keepalive_interval=0)
    try:
        check = check_define(host, host.domain_type("auto"), local=True)
    except errors.VirtError as exc:
        pytest.fail(f"libvirtd does not answer at {URI} ({exc}): run scripts/bootstrap.sh", pytrace=False)
    finally:
        host.close()
    if check.status == FAIL:
        pytest.fail(f"the real stack is too slow to test: {check.line()}", pytrace=False)
    return check


@pytest.fixture(autouse=True)
def _slow_define_guard(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("real"):
        request.getfixturevalue("libvirt_defines_quickly")
