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
