"""Helpers the tests share: the checkout's root, configs from plain data, test-driver hosts."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from cms import config
from cms.lab.realstack import TEST_DIR
from cms.netutil import free_port  # noqa: F401 - re-exported for the tests

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


def make_config(**sections) -> config.Config:
    """A validated Config from plain data, as a TOML file would give it."""
    return config.parse(sections, "<test>")


def blank_golden(size_mib: int = 64) -> str:
    """A small empty qcow2 to clone when a test needs a disk but no OS (made once). Test data,
    made with qemu-img; cms itself never runs it."""
    TEST_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_DIR, 0o755)
    p = TEST_DIR / f"blank-{size_mib}.qcow2"
    if not p.exists():
        tmp = p.with_suffix(".tmp")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), f"{size_mib}M"], check=True, timeout=60)
        os.chmod(tmp, 0o644)
        tmp.rename(p)
    return str(p)
