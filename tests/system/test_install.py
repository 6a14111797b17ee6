"""./install pm_file image_file types_file: the spec's installer.

Bad input is refused before anything changes; a good run sets the system up through the
controller play of site.yml (the default mode) and leaves the REST server answering at the
URL it prints; a second run keeps the token and answers again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, blank_golden, free_port, write_node_xml
from tests.system.test_ansible import build_wheelhouse

TYPES = {"types": [{"tid": 1, "cpu": 1, "ram": 256, "disk": 1}, {"tid": 2, "cpu": 2, "ram": 512, "disk": 1}]}


def run_install(args, env_extra, timeout=600, prefix=()):
    env = {**os.environ, "CMS_SKIP_BOOTSTRAP": "1", "CMS_VENV": str(Path(sys.executable).parent.parent), **env_extra}
    env.pop("CMS_CONFIG", None)
    return subprocess.run([*prefix, str(ROOT / "install"), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def good_files(d: Path, pm_lines: list[str]) -> list[Path]:
    (d / "pm_file").write_text("# machines\n" + "\n".join(pm_lines) + "\n")
    (d / "image_file").write_text(f"{blank_golden()}\n")
    (d / "types_file").write_text(json.dumps(TYPES))
    return [d / "pm_file", d / "image_file", d / "types_file"]


def prefix_env(d: Path) -> dict[str, str]:
    return {"CMS_ETC": str(d / "etc"), "CMS_STATE": str(d / "state"), "CMS_RUN_DIR": str(d / "run"),
            "CMS_LOG_DIR": str(d / "log")}


@pytest.mark.parametrize("case", ["no-args", "two-args"])
def test_wrong_arguments_print_usage_and_why(tmp_path, case):
    files = good_files(tmp_path, [write_node_xml(tmp_path / "n.xml")])
    args, want = ([], "expected 3 arguments, got 0") if case == "no-args" else (files[:2], "expected 3 arguments, got 2")
    r = run_install(args, prefix_env(tmp_path), timeout=120)
    assert r.returncode == 2 and r.stderr.splitlines() == [f"usage: {ROOT / 'install'} pm_file image_file types_file",
                                                           f"install: {want}"], r.stderr
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("case", ["missing", "bad-json", "bad-type", "bad-pm", "http-uri", "bad-mode", "image-missing",
                                  "image-not-a-disk", "image-a-directory", "image-unreadable-by-root"])
def test_bad_input_is_one_line_naming_the_file_and_changes_nothing(tmp_path, case):
    """Every bad input: exit 2, one line on stderr that names the file, nothing written."""
    files = good_files(tmp_path, [write_node_xml(tmp_path / "n.xml")])
    env = prefix_env(tmp_path)
    args: list = files
    prefix: list[str] = []
    if case == "missing":
        args, want = [files[0], tmp_path / "nope", files[2]], f"{tmp_path / 'nope'}: no such file"
    elif case == "bad-json":
        files[2].write_text("{not json")
        want = f"types_file {files[2]}: not valid JSON"
    elif case == "bad-type":
        files[2].write_text(json.dumps({"types": [{"tid": 1, "cpu": 0, "ram": 256, "disk": 1}]}))
        want = f"types_file {files[2]}: types[0].cpu"
    elif case == "bad-pm":
        files[0].write_text("qemu:///system\nnot a uri with spaces\n")
        want = f"pm_file {files[0]}:2"
    elif case == "http-uri":
        files[0].write_text("http://hv1.example.org/\n")
        want = f"pm_file {files[0]}:1: 'http://hv1.example.org/' is not a libvirt URI"
    elif case == "bad-mode":
        env["CMS_INSTALL_MODE"] = "magic"
        want = "CMS_INSTALL_MODE must be ansible or direct, not 'magic'"
    else:
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        img = home / "Ubuntu-12.04-amd64.qcow2"
        if case == "image-not-a-disk":
            img.write_text("this is a text file, not a disk\n" * 100)
            why = "not a disk image"
        elif case == "image-a-directory":
            img.mkdir()
            why = "is a directory"
        elif case == "image-missing":
            why = "no such file"
        else:
            # root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, as on an NFS home with
            # root_squash: a 0000 file cannot be read by anyone
            shutil.copyfile(blank_golden(), img)
            img.chmod(0)
            prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                      "-dac_override,-dac_read_search"]
            why = "cannot be read, not even by root (permission denied)"
        files[1].write_text(f"{blank_golden()}\n{img}\n")
        want = f"image_file {files[1]}: image 101: {img}: {why}"
    r = run_install(args, env, timeout=120, prefix=prefix)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("install: ") and want in r.stderr, \
        (want, r.stderr)
    assert not (tmp_path / "etc").exists(), "nothing may be written before the inputs are checked"


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.real
@pytest.mark.timeout(900)
def test_install_sets_up_through_ansible_and_leaves_the_server_answering(tmp_path):
    files = good_files(tmp_path, [write_node_xml(tmp_path / "n1.xml", cpus=8, memory_kib=16 << 20),
                                  write_node_xml(tmp_path / "n2.xml", cpus=8, memory_kib=16 << 20)])
    port = free_port()
    env = {**prefix_env(tmp_path), "CMS_BIND": f"127.0.0.1:{port}", "CMS_SERVICE_VENV": str(tmp_path / "venv"),
           "CMS_WHEELHOUSE": str(build_wheelhouse(tmp_path / "wheelhouse"))}
    try:
        r = run_install(files, env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        url = f"http://127.0.0.1:{port}"
        assert r.stdout.strip().splitlines()[-1] == url
        assert "[install] ansible: localhost" in r.stdout and "failed=0" in r.stdout
        assert _get(url + "/pm/list") == {"pmids": [1, 2]}
        assert _get(url + "/vm/types") == TYPES
        assert _get(url + "/image/list") == {"images": [{"id": 100, "name": "blank-64"}]}
        vmid = _get(url + "/vm/create?name=inst1&instance_type=2")["vmid"]
        assert vmid > 0
        assert _get(f"{url}/vm/query?vmid={vmid}") == {"vmid": vmid, "name": "inst1", "instance_type": 2, "pmid": 1}
        conf = (tmp_path / "etc" / "cms.toml").read_text()
        token = re.search(r'^token = "(.+)"', conf, re.M).group(1)
        assert (tmp_path / "etc" / "cms.toml").stat().st_mode & 0o777 == 0o600
        # the services run from the role's virtualenv, not from this checkout's
        pid = (tmp_path / "run" / "cms-api.pid").read_text().strip()
        assert str(tmp_path / "venv") in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        # again: same token, still answering
        r = run_install(files, env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert re.search(r'^token = "(.+)"', (tmp_path / "etc" / "cms.toml").read_text(), re.M).group(1) == token
        assert _get(url + "/pm/list") == {"pmids": [1, 2]}
    finally:
        for svc in ("cms-api", "cms-autoscaler"):
            pidfile = tmp_path / "run" / f"{svc}.pid"
            if pidfile.exists():
                subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--pidfile", str(pidfile),
                                "--retry", "TERM/20/KILL/5", "--remove-pidfile"], timeout=60, check=False)
