"""roles/golden_image/files/prune_cache.py: old builds go, protected ones stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

PRUNE = ROOT / "roles" / "golden_image" / "files" / "prune_cache.py"


def _builds(cache: Path, names: list[str], variant: str = "minimal") -> None:
    for i, n in enumerate(names):
        d = cache / n
        d.mkdir(parents=True)
        (d / "golden.qcow2").write_bytes(b"")
        m = d / "manifest.json"
        m.write_text(json.dumps({"variant": variant}))
        os.utime(m, (1000 + i, 1000 + i))   # oldest first


def test_keeps_the_newest_and_every_build_a_publish_directory_points_at(tmp_path):
    cache, pub, other = tmp_path / "cache", tmp_path / "pub", tmp_path / "other"
    _builds(cache, ["a", "b", "c", "d", "e", "f"])
    _builds(cache, ["x"], variant="probe")
    for d, target in ((pub, "a"), (other, "b")):
        d.mkdir()
        (d / "golden.qcow2").symlink_to(cache / target / "golden.qcow2")
    # the run that built "f" into "other", with the machine's publish dir "pub" protected
    r = subprocess.run([sys.executable, str(PRUNE), str(cache), "minimal", "3", str(cache / "f"),
                        f"{other}/golden.qcow2/..", f"{pub}/golden.qcow2/.."],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["a", "b", "d", "e", "f", "x"]
    assert r.stdout.split() == ["removed", str(cache / "c")]
