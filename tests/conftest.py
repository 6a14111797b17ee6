"""Shared fixtures. `node_uri` gives each test a fresh libvirt test-driver host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import write_node_xml


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    return write_node_xml(tmp_path / "node.xml")


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("CMS_RUN_DIR", str(d))
    return d


# -- the state database on both backends -------------------------------------------------------

@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session (cms.lab.postgres: Debian's postgresql,
    initdb as the postgres user in a temporary directory, a free port), made the first time a
    test asks for it and stopped at the end. Each test gets a database of its own in it."""
    from cms.lab.postgres import Cluster
    with Cluster.started() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    """Which database the test's state_db is on; every test that uses the store runs on both."""
    return request.param


@pytest.fixture
def new_state_db(backend: str, request, tmp_path: Path):
    """Makes new, empty state databases on the test's backend: a SQLite file in tmp_path, or a
    database on the session's PostgreSQL (dropped at the end, its connections with it: pools
    left open would add up over the session)."""
    made: list[str] = []

    def make() -> str:
        if backend == "sqlite":
            made.append(str(tmp_path / f"state{len(made) or ''}.db"))
        else:
            made.append(request.getfixturevalue("postgres").new_database())
        return made[-1]
    yield make
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        for url in made:
            pg.drop_database(url)


@pytest.fixture
def state_db(new_state_db) -> str:
    """A new, empty state database (a path or a postgresql:// URL) on the test's backend."""
    return new_state_db()
