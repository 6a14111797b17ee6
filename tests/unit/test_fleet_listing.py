"""Fleet.list_domains asks every host at once and waits on none past its deadline (cms.virt.perhost).

The hanging host is a TCP listener on 127.0.0.1 that accepts and never answers, reached as
qemu+tcp: libvirt's open waits for the daemon's first reply for as long as the socket stays
open, as it does for a host whose link went down under an open connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from cms import errors
from cms.lab.realstack import wait_until
from cms.virt import Fleet, OwnerMeta
from cms.virt import xml as vxml
from cms.virt.perhost import PerHost
from tests.support import make_config, write_node_xml


class SilentHost:
    """Accepts connections on 127.0.0.1 and never answers; ``close`` drops them all."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.accepted:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


@pytest.fixture
def silent():
    s = SilentHost()
    yield s
    s.close()


def listing_within(fleet: Fleet, bound: float):
    """fleet.list_domains() on a thread; a listing that is still not back after `bound` fails
    the test instead of hanging it."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(fleet.list_domains()), daemon=True)
    t.start()
    t.join(bound)
    assert box, f"list_domains did not return within {bound} s"
    return box[0]


def hanging_and_fine(tmp_path, silent) -> Fleet:
    """A fleet of two hosts: "hang" (the silent listener, 0.3 s deadline) and "t" (a test driver)."""
    cfg = make_config(hosts=[{"name": "hang", "uri": f"qemu+tcp://127.0.0.1:{silent.port}/system", "timeout_s": 0.3},
                             {"name": "t", "uri": write_node_xml(tmp_path / "n.xml"), "timeout_s": 5}])
    return Fleet(cfg)


def test_a_hanging_host_does_not_hold_the_listing_and_is_not_asked_again_while_it_hangs(tmp_path, silent):
    fleet = hanging_and_fine(tmp_path, silent)
    try:
        t = fleet.host("t")
        t.domains.define(vxml.DomainSpec(name="cms-web-1", uuid=t.new_uuid(), vcpus=1, memory_mib=128, disk_path="/dev/null",
                                 meta=OwnerMeta(group="web", created=1.0, port=20001), domain_type="test"))
        first = listing_within(fleet, 20)
        assert first.down == {"hang": "did not answer within 0.3 s"}
        assert [d.name for d in first.on("t")] == ["cms-web-1"] and first.on("hang") is None
        # the next tick: the first call still hangs, so the host is not asked again
        second = listing_within(fleet, 20)
        assert list(second.down) == ["hang"] and second.down["hang"].startswith("still busy with its previous call")
        assert [d.name for d in second.on("t")] == ["cms-web-1"]
        assert len(silent.accepted) == 1
        # the link "breaks": the hung call fails, the thread is free and the host is asked again
        silent.close()
        wait_until(lambda: fleet._listers.busy("hang") is None, 20, 0.05, what="the hung call to end")
        third = listing_within(fleet, 20)
        assert "hang" in third.down and "127.0.0.1" in third.down["hang"]
        assert not third.down["hang"].startswith(("still busy", "did not answer"))
    finally:
        fleet.close()


def test_per_host_calls_keep_their_threads_and_hand_back_errors():
    ph = PerHost()
    try:
        seen: list[str] = []

        def who() -> str:
            seen.append(threading.current_thread().name)
            return "ok"

        def fails() -> None:
            raise errors.HostUnreachable("no route to host", "b")

        values, late, raised = ph.call_all({"a": (who, 5), "b": (fails, 5)})
        assert values == {"a": "ok"} and late == {} and list(raised) == ["b"]
        assert isinstance(raised["b"], errors.HostUnreachable)
        ph.call_all({"a": (who, 5)})
        assert seen == ["libvirt-a", "libvirt-a"]          # one persistent thread per host
    finally:
        ph.close()


def test_a_bug_in_a_listing_is_raised_not_taken_for_a_down_host(tmp_path, monkeypatch):
    cfg = make_config(hosts=[{"name": "t", "uri": write_node_xml(tmp_path / "n.xml")}])
    fleet = Fleet(cfg)
    try:
        monkeypatch.setattr(fleet.host("t").stats, "owned_domains", lambda group=None: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            fleet.list_domains()
    finally:
        fleet.close()


def test_a_ticks_other_per_host_calls_do_not_wait_on_a_hanging_host_either(tmp_path, silent):
    from cms.metrics import LibvirtMetrics
    fleet = hanging_and_fine(tmp_path, silent)
    try:
        box: list = []
        t = threading.Thread(target=lambda: box.append(LibvirtMetrics(fleet).node_cpu(["hang", "t"])), daemon=True)
        t.start()
        t.join(20)
        assert box == [{"hang": None, "t": None}]        # no figure from either (the test driver has none)
        caps, silent_hosts = fleet.per_host(lambda h: h.capacity(), ["hang", "t"])
        assert list(caps) == ["t"] and caps["t"].cpus == 4
        assert silent_hosts["hang"].startswith("still busy with its previous call")
    finally:
        fleet.close()


def test_a_call_queues_behind_a_short_one_but_never_behind_a_hung_one():
    ph = PerHost()
    release = threading.Event()
    try:
        first = threading.Thread(target=lambda: ph.call_all({"a": (lambda: release.wait(10), 10)}), daemon=True)
        first.start()
        wait_until(lambda: ph.busy("a") is not None, 5, 0.01, what="the first call running")
        threading.Timer(0.2, release.set).start()
        values, late, _r = ph.call_all({"a": (lambda: "tick", 5)})
        assert values == {"a": "tick"} and late == {}                    # asked right after the short call
        release.clear()
        threading.Thread(target=lambda: ph.call_all({"a": (lambda: release.wait(10), 10)}), daemon=True).start()
        wait_until(lambda: (ph.busy("a") or 0) > 0.3, 5, 0.01, what="a call running for a while")
        _v, late, _r = ph.call_all({"a": (lambda: "tick", 0.3)})
        assert late["a"].startswith("still busy")                       # older than the deadline: it hangs
    finally:
        release.set()
        ph.close()
