"""A throwaway etcd cluster for tests, benchmarks and the lab: Debian's ``etcd-server`` run as
plain processes (nothing starts its service on these machines), N members on free ports of
one address, in a temporary directory; a member can be killed and revived, and ``stop()``
ends them all and removes the directory.

    with EtcdCluster.running(3) as etcd:
        cfg["coordination"] = {"url": etcd.urls}       # etcd3+http://127.0.0.1:PORT, one per member
        etcd.kill(0)                                   # one member gone: the cluster keeps its quorum
        etcd.kill(1)                                   # two of three: no quorum, nothing is written
        etcd.revive(0)

Members run with etcd's default timing (heartbeat 100 ms, election 1 s), so a lease's TTL
is at least 2 s, as in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cms.errors import CmsError
from cms.netutil import free_port

ETCD = "/usr/bin/etcd"


class EtcdError(CmsError):
    """The cluster cannot be started; the text says why, in one line."""


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    proc: subprocess.Popen | None = None


class EtcdCluster:
    def __init__(self, n: int = 3, *, address: str = "127.0.0.1", base: str | os.PathLike[str] | None = None,
                 token: str = "cms-test") -> None:
        if not os.path.exists(ETCD):
            raise EtcdError(f"{ETCD} is missing: apt-get install etcd-server (scripts/bootstrap.sh does)")
        self.address, self.token = address, token
        self.dir = Path(tempfile.mkdtemp(prefix="cms-etcd-", dir=base))
        self.members = [Member(f"e{i + 1}", free_port(address), free_port(address)) for i in range(n)]

    @property
    def urls(self) -> list[str]:
        """The tooz URL of every member, for [coordination] url."""
        return [f"etcd3+http://{self.address}:{m.client_port}" for m in self.members]

    def pids(self) -> list[int]:
        """The members' process ids (the lab's down ends them by these)."""
        return [m.proc.pid for m in self.members if m.proc is not None and m.proc.poll() is None]

    def client_url(self, i: int) -> str:
        return f"http://{self.address}:{self.members[i].client_port}"

    def _argv(self, m: Member, state: str) -> list[str]:
        peer = lambda x: f"http://{self.address}:{x.peer_port}"   # noqa: E731
        return [ETCD, "--name", m.name, "--data-dir", str(self.dir / m.name),
                "--listen-client-urls", f"http://{self.address}:{m.client_port}",
                "--advertise-client-urls", f"http://{self.address}:{m.client_port}",
                "--listen-peer-urls", peer(m), "--initial-advertise-peer-urls", peer(m),
                "--initial-cluster", ",".join(f"{x.name}={peer(x)}" for x in self.members),
                "--initial-cluster-state", state, "--initial-cluster-token", self.token, "--log-level", "warn"]

    def _spawn(self, i: int, state: str) -> None:
        m = self.members[i]
        with open(self.dir / f"{m.name}.log", "ab") as out:
            m.proc = subprocess.Popen(self._argv(m, state), stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        for i in range(len(self.members)):
            self._spawn(i, "new")
        self.wait_healthy(timeout)
        return self

    def healthy(self, i: int, timeout: float = 1.0) -> bool:
        """Whether member i answers and its cluster has a leader (etcd's /health)."""
        try:
            with urllib.request.urlopen(self.client_url(i) + "/health", timeout=timeout) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        live = [i for i, m in enumerate(self.members) if m.proc and m.proc.poll() is None]
        while not all(self.healthy(i) for i in live):
            for i in live:
                p = self.members[i].proc
                if p is not None and p.poll() is not None:
                    tail = (self.dir / f"{self.members[i].name}.log").read_text(errors="replace")[-600:]
                    raise EtcdError(f"etcd member {self.members[i].name} exited: {tail.strip() or 'no output'}")
            if time.monotonic() > deadline:
                raise EtcdError(f"etcd at {self.address} was not healthy within {timeout:g}s (logs in {self.dir})")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL member i (its data stays, for ``revive``)."""
        p = self.members[i].proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def _post(self, i: int, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        req = urllib.request.Request(self.client_url(i) + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def _status(self, i: int) -> dict[str, Any]:
        return self._post(i, "/v3/maintenance/status", {})

    def raft_leader(self) -> int | None:
        """Which member is etcd's own (raft) leader now, as the live members say; None: none known."""
        ids, leader = {}, None
        for i in self._live():
            try:
                st = self._status(i)
            except (OSError, ValueError):
                continue
            ids[st["header"]["member_id"]] = i
            leader = leader or st.get("leader")
        return ids.get(leader)

    def _live(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.proc is not None and m.proc.poll() is None]

    def make_raft_leader(self, i: int, timeout: float = 10.0) -> None:
        """Make member i etcd's raft leader (the leader hands it over), so that killing i costs
        the clients an etcd election as well as their failover: the members left answer no
        write until they have a leader again (1-2 s at etcd's default timing)."""
        deadline = time.monotonic() + timeout
        while (lead := self.raft_leader()) != i:
            if time.monotonic() > deadline:
                raise EtcdError(f"member {i} not etcd's raft leader after {timeout:g}s (it is {lead})")
            if lead is not None:
                try:
                    target = self._status(i)["header"]["member_id"]
                    self._post(lead, "/v3/maintenance/transfer-leadership", {"targetID": target})
                except (OSError, ValueError):
                    pass                      # looked at again below, to the deadline
            time.sleep(0.2)

    def revive(self, i: int, timeout: float = 30.0) -> None:
        """Start member i again on its data; waits until the live members are healthy."""
        self._spawn(i, "existing")
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, n: int = 3, **kw) -> Iterator["EtcdCluster"]:
        c = cls(n, **kw)
        try:
            yield c.start()
        finally:
            c.stop()
