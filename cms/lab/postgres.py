"""A throwaway PostgreSQL cluster for tests and benchmarks: Debian's ``postgresql`` package,
``initdb`` as the ``postgres`` user (it refuses root) in a temporary directory it owns, on a
free loopback port, with its socket in that directory; stopped and removed by ``stop()``.

    with Cluster.started() as pg:
        url = pg.new_database()        # postgresql://cms@127.0.0.1:PORT/cms_1 (trust: no password)

A lab's controllers run in network namespaces that reach the root namespace on the hosts'
bridge (169.254.S.1, cms.lab.hosts): ``Cluster(listen="169.254.S.1")`` also listens there,
lets 169.254.0.0/16 in (pg_hba, trust as on loopback), and hands out URLs on that address,
so every controller shares the one database as they would share a production server.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from cms.netutil import free_port

USER = "cms"
LAB_NET = "169.254.0.0/16"      # the lab's link-local networks (hosts, controllers)


def bindir() -> Path:
    """The newest installed PostgreSQL's programs (/usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (scripts/bootstrap.sh does)")
    return found[-1].parent


class Cluster:
    def __init__(self, base: str | os.PathLike[str] | None = None, listen: str = "") -> None:
        self.bin = bindir()
        self.listen = listen             # an address beside loopback (a lab's bridge), or none
        self.host = listen or "127.0.0.1"
        self.dir = Path(tempfile.mkdtemp(prefix="cms-pg-", dir=base))
        self.data = self.dir / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        self.running = False

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        cmd = " ".join(f"'{a}'" for a in argv)
        r = subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", cmd], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"{argv[0]} failed: {(r.stderr or r.stdout).strip()[-2000:]}")

    def start(self) -> "Cluster":
        pw = pwd.getpwnam("postgres")
        os.chmod(self.dir, 0o755)
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER,
                          "--no-sync", "-E", "UTF8")
        addresses = "127.0.0.1"
        if self.listen:
            addresses += f",{self.listen}"
            with open(self.data / "pg_hba.conf", "a") as hba:     # appended: it stays the postgres user's
                hba.write(f"host all all {LAB_NET} trust\n")
        # a test cluster: no fsync (a crash loses it anyway), room for many test connections
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses={addresses} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                          "-o", opts, "-w", "-t", "60", "start")
        self.running = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def new_database(self, prefix: str = "cms") -> str:
        """A new empty database; its state_db URL."""
        name = f"{prefix}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, statement: str) -> None:
        """Run one statement as the cluster's superuser, outside a transaction."""
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres",
                             autocommit=True, connect_timeout=10) as c:
            c.execute(statement)

    def drop_database(self, url: str) -> None:
        """End every connection to the database of `url` and drop it."""
        self.sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def stop(self) -> None:
        if self.running:
            try:
                self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                                  "-t", "60", "stop")
            finally:
                self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def started(cls, base: str | os.PathLike[str] | None = None, listen: str = "") -> Iterator["Cluster"]:
        c = cls(base, listen)
        try:
            yield c.start()
        finally:
            c.stop()
