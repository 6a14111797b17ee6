"""Bad input gives one clear line and a non-zero exit, never a traceback.

* a table of malformed configuration files through every entry point (cms, cms-api --check,
  cms-autoscaler --once, cms-loadgen, cms-demo): exit 2 and exactly one stderr line naming
  the file and the key (or the line, when the file is not TOML at all);
* the `cms` CLI, every subcommand, against a dead port, a server that hangs up, one that
  answers an SSH banner, one that never answers, and HTTP answers that are not JSON;
* the app in-process: bodies the JSON decoder cannot take and bodies over the cap.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import falcon.testing
import pytest

from cms import cli
from tests.support import ROOT
from tests.unit.test_api import AUTH, build

BIN = Path(sys.executable).parent

# (name, file contents, what the one line must name besides the file). Each file is invalid;
# should one ever pass validation, SAFE keeps the run harmless: a test:/// host, a state_db
# under the test's directory, and cms-demo pointed at a golden image that does not exist.
CONFIGS: list[tuple[str, bytes, str]] = [
    ("not-utf8", b'log_level = "info"\n# caf\xe9\n', "not UTF-8 text (byte 0xe9)"),
    ("nan", b"[groups.web.threshold]\nhigh = nan\n", "groups.web.threshold.high = nan is not a finite number"),
    ("inf", b"[autoscaler]\ntick_s = inf\n", "autoscaler.tick_s = inf is not a finite number"),
    ("-inf", b"[groups.web]\ncooldown_s = -inf\n", "groups.web.cooldown_s = -inf is not a finite number"),
    ("nan-target", b"[groups.web.target]\ntarget = nan\n", "groups.web.target.target = nan"),
    ("http-uri", b'[[hosts]]\nname = "a"\nuri = "http://hv1.example.org/"\n', "hosts[0].uri = 'http://hv1.example.org/'"),
    ("xen-uri", b'[[hosts]]\nname = "a"\nuri = "xen:///system"\n', "hosts[0].uri"),
    ("qemu-no-path", b'[[hosts]]\nname = "a"\nuri = "qemu+ssh://hv1"\n', "hosts[0].uri"),
    ("unix-with-host", b'[[hosts]]\nname = "a"\nuri = "qemu+unix://hv1/system"\n', "hosts[0].uri"),
    ("bad-port-uri", b'[[hosts]]\nname = "a"\nuri = "qemu+tcp://hv1:99999/system"\n', "hosts[0].uri"),
    ("syntax", b"[api\nbind = 1\n", "not valid TOML"),
    ("unknown-key", b"[api]\nbnd = \"127.0.0.1:1\"\n", "unknown key api.bnd"),
    ("wrong-type", b"[groups.web]\nvcpus = \"two\"\n", "groups.web.vcpus must be an integer"),
    ("range", b"[groups.web]\nmemory_mib = 1\n", "groups.web.memory_mib = 1 is below the minimum 64"),
    ("bind", b'[api]\nbind = "localhost"\n', "api.bind = 'localhost'"),
    ("zmq", b'[zmq]\npublish = "127.0.0.1:5556"\n', "zmq.publish"),
    ("control-char", b'[api]\ntoken = "a\\u0000b"\n', "api.token"),
    ("newline-key", b'"a\\nb" = 1\n', "unknown key a\\nb"),
    ("body-cap", b"[api]\nmax_body_bytes = 0\n", "api.max_body_bytes = 0 is below the minimum 1024"),
]
SAFE_HOSTS = b'\n[[hosts]]\nname = "safe"\nuri = "test:///default"\n'


def _config_file(tmp: Path, name: str, text: bytes) -> Path:
    p = tmp / f"{name}.toml"
    top = b"" if b"state_db" in text else f'state_db = "{tmp}/state.db"\n'.encode()
    p.write_bytes(top + text + (b"" if b"hosts" in text else SAFE_HOSTS))
    return p


def _entry_points(cfg: Path, tmp: Path) -> dict[str, list[str]]:
    return {
        "cms": [str(BIN / "cms"), "--config", str(cfg), "types"],
        "cms-api --check": [str(BIN / "cms-api"), "--config", str(cfg), "--check"],
        "cms-autoscaler --once": [str(BIN / "cms-autoscaler"), "--config", str(cfg), "--once"],
        "cms-loadgen": [str(BIN / "cms-loadgen"), "--config", str(cfg), "--group", "web", "--schedule", "low:1s",
                        "--low-rate", "1", "--high-rate", "1", "--quiet"],
        "cms-demo": [str(BIN / "cms-demo"), "--config", str(cfg), "--out", str(tmp / "demo"),
                     "--golden", str(tmp / "no-such-golden.qcow2")],
    }


def _run(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CMS_RUN_DIR": str(tmp / "run"), "CMS_URL": "http://127.0.0.1:9"}
    env.pop("CMS_CONFIG", None)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=tmp,
                          stdin=subprocess.DEVNULL)


def test_every_entry_point_refuses_every_malformed_config_in_one_line(tmp_path):
    files = {name: (_config_file(tmp_path, name, text), needle) for name, text, needle in CONFIGS}
    (tmp_path / "dir.toml").mkdir()
    files["directory"] = (tmp_path / "dir.toml", "is a directory")
    files["fifo"] = (tmp_path / "fifo.toml", "not a regular file")
    os.mkfifo(files["fifo"][0])
    jobs = [(name, ep, argv, needle) for name, (cfg, needle) in files.items()
            for ep, argv in _entry_points(cfg, tmp_path).items()]
    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda j: (j, _run(j[2], tmp_path)), jobs))
    bad = []
    for (name, ep, argv, needle), r in results:
        lines = r.stderr.strip().splitlines()
        cfg = files[name][0]
        ok = (r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr
              and lines[0].startswith("cms: configuration error: ") and str(cfg) in lines[0] and needle in lines[0])
        if not ok:
            bad.append((name, ep, r.returncode, r.stderr[-600:]))
    assert not bad, bad
    assert len(results) == len(files) * 5


# -- the CLI against servers that are not the cms API --------------------------------------------

SUBCOMMANDS = [["types"], ["images"], ["images", "add", "img", "/srv/img.qcow2"], ["vm", "create", "web1", "1"], ["vm", "create", "web1", "1", "--image", "100"],
               ["vm", "query", "1"], ["vm", "destroy", "1"], ["vm", "list"], ["pm", "list"], ["pm", "query", "1"],
               ["pm", "listvms", "1"], ["group", "status"], ["group", "status", "web"], ["group", "scale", "web", "2"]]


class FakeServer:
    """A TCP server on 127.0.0.1 that misbehaves in one way for every connection."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            if self.mode == "banner":          # as sshd: its banner, then it reads what comes and gives up
                c.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
                c.settimeout(5)
                try:
                    self._read_request(c)
                except OSError:
                    pass
                c.close()
            elif self.mode == "hangup":
                c.close()
            elif self.mode == "hang":
                self.held.append(c)        # accepted, never answered
            else:
                c.settimeout(5)
                try:
                    self._read_request(c)
                    c.sendall({"html": b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hello</html>",
                               "deep": b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"[" * 100_000,
                               "html-error": b"HTTP/1.0 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<h1>x</h1>",
                               "list": b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[1, 2]",
                               }[self.mode])
                except OSError:
                    pass
                c.close()

    @staticmethod
    def _read_request(c: socket.socket) -> None:
        """The whole request, body included: closing on unread bytes would reset the
        connection, and the client would see a hang-up rather than the answer."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n")
                       if ln.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = c.recv(65536)
            if not chunk:
                return
            body += chunk

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def good_config(tmp_path, monkeypatch):
    p = tmp_path / "cms.toml"
    p.write_text('[api]\ntoken = "t"\n')
    monkeypatch.setenv("CMS_CONFIG", str(p))
    monkeypatch.delenv("CMS_URL", raising=False)
    return p


@pytest.mark.parametrize("mode, needle", [
    ("dead", "cannot reach the API at"),
    ("banner", "does not speak HTTP: it answered 'SSH-2.0-OpenSSH_9.2p1"),
    ("hangup", "hung up without answering"),
    ("hang", "no answer from"),
    ("html", "the answer is not JSON"),
    ("deep", "the answer is not JSON"),
    ("html-error", "HTTP 502: Bad Gateway"),
    ("list", ""),
])
def test_cli_every_subcommand_against_a_server_that_is_not_the_api(good_config, capsys, mode, needle):
    if mode == "dead":
        s = socket.create_server(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        server = None
    else:
        server = FakeServer(mode)
        port = server.port
    try:
        for sub in SUBCOMMANDS:
            rc = cli.main(["--url", f"http://127.0.0.1:{port}", "--timeout", "0.5", *sub])
            out, err = capsys.readouterr()
            assert rc == 1 and out == "", (sub, rc, out, err)
            assert len(err.splitlines()) == 1 and err.startswith("cms: ") and needle in err, (sub, err)
    finally:
        if server:
            server.close()


def test_cli_process_against_a_banner_a_hangup_and_a_dead_port(tmp_path):
    """The same as whole processes: exit 1, one line, no traceback."""
    servers = [FakeServer("banner"), FakeServer("hangup")]
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    try:
        for port in (servers[0].port, servers[1].port, dead_port):
            for sub in (["vm", "list"], ["group", "scale", "web", "2"]):
                r = _run([str(BIN / "cms"), "--url", f"http://127.0.0.1:{port}", "--timeout", "2", *sub], tmp_path)
                assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, (port, sub, r.stderr)
                assert r.stderr.startswith("cms: ") and "Traceback" not in r.stderr
    finally:
        for s in servers:
            s.close()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:8080", "http://127.0.0.1:99999", "http://"])
def test_cli_bad_url_is_one_line(good_config, capsys, url):
    assert cli.main(["--url", url, "types"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cms: bad API URL") and len(err.splitlines()) == 1


def test_cli_bad_config_is_exit_2_even_with_url(tmp_path, capsys, monkeypatch):
    p = tmp_path / "cms.toml"
    p.write_text("[groups.web.threshold]\nhigh = nan\n")
    monkeypatch.setenv("CMS_CONFIG", str(p))
    with pytest.raises(SystemExit) as ei:
        cli.main(["--url", "http://127.0.0.1:9", "types"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err == f"cms: configuration error: {p}: groups.web.threshold.high = nan is not a finite number\n"


# -- the app: bodies ----------------------------------------------------------------------------

@pytest.fixture
def client(tmp_path, run_dir, state_db):
    c, deps = build(tmp_path, state_db)
    yield c
    deps.fleet.close()


HOSTILE_BODIES = [b"[" * 10_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000, b'{"name": "\xff\xfe"}', b"\x00\x01",
                  b'{"name": "a", "instance_type": 1', b"nan", b'{"name": "a"} trailing']


@pytest.mark.parametrize("path", ["/v1/vms", "/v1/groups/web/scale", "/v1/vms/1/resize", "/v1/vms/1/migrate"])
def test_a_body_the_decoder_cannot_take_is_a_400(client: falcon.testing.TestClient, path):
    for body in HOSTILE_BODIES:
        r = client.simulate_post(path, body=body, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400, (path, body[:20], r.status_code, r.text)
        assert set(r.json) == {"title", "description"} and "not valid JSON" in r.json["description"]
        assert "\n" not in r.json["description"]


def test_a_body_over_the_cap_is_a_413_naming_it(client: falcon.testing.TestClient):
    body = b'{"name": "' + b"x" * 70_000 + b'", "instance_type": 1}'
    r = client.simulate_post("/v1/vms", body=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json == {"title": "Body too large",
                      "description": f"the body is {len(body)} bytes; this server takes at most 65536 bytes "
                                     "(api.max_body_bytes)"}
    # just under the cap is read (and refused for what it says, not for its size)
    body = b'{"name": "' + b"x" * 65_000 + b'", "instance_type": 1}'
    r = client.simulate_post("/v1/vms", body=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "bad VM name" in r.json["description"]


def test_a_body_that_is_not_json_by_its_type_is_a_415(client: falcon.testing.TestClient):
    r = client.simulate_post("/v1/vms", body=b"name=a", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and set(r.json) == {"title", "description"}
