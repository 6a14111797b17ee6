"""Every test here marked `real` first passes the slow-define guard (tests/define_guard.py)."""

from tests.define_guard import _slow_define_guard, libvirt_defines_quickly  # noqa: F401 - pytest fixtures
