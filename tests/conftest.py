"""Shared fixtures. `node_uri` gives each test a fresh libvirt test-driver host."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from cms import config

ROOT = Path(__file__).resolve().parent.parent


def write_node_xml(path: Path, *, cpus: int = 4, memory_kib: int = 8 * 1024 * 1024,
                   pool_bytes: int = 100 * 1024 ** 3, pool_path: str = "/var/lib/cms/pool") -> str:
    path.write_text(textwrap.dedent(f"""\
        <node>
          <cpu><mhz>2000</mhz><model>i686</model><active>{cpus}</active><nodes>1</nodes>
               <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
          <memory>{memory_kib}</memory>
          <pool type='dir'><name>cms</name><uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
            <capacity>{pool_bytes}</capacity><allocation>0</allocation><available>{pool_bytes}</available>
            <source/><target><path>{pool_path}</path></target></pool>
        </node>
        """))
    return f"test://{path}"


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    return write_node_xml(tmp_path / "node.xml")


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("CMS_RUN_DIR", str(d))
    return d


def make_config(**sections) -> config.Config:
    """A validated Config from plain data, as a TOML file would give it."""
    return config.parse(sections, "<test>")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
