"""The one config loader: defaults, overrides, and one clear error per bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cms import config
from cms.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_defaults_need_no_file(monkeypatch, tmp_path):
    monkeypatch.delenv("CMS_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = config.load()
    assert cfg.source == "<embedded defaults>"
    assert [h.uri for h in cfg.hosts] == ["qemu:///system"]
    assert cfg.libvirt.domain_type == "kvm"
    assert cfg.groups["web"].min == 1 and cfg.groups["web"].policy == "threshold"
    assert cfg.api.bind == "127.0.0.1:8080"


def test_example_config_is_valid_and_complete():
    cfg = config.load(ROOT / "etc" / "cms.toml.example")
    assert cfg.source.endswith("cms.toml.example")
    assert len(cfg.hosts) >= 1


def test_env_var_and_flag_choose_the_file(monkeypatch, tmp_path):
    a = tmp_path / "a.toml"
    a.write_text('state_db = "/tmp/a.db"\n')
    b = tmp_path / "b.toml"
    b.write_text('state_db = "/tmp/b.db"\n')
    monkeypatch.setenv("CMS_CONFIG", str(a))
    assert config.load().state_db == "/tmp/a.db"
    assert config.load(b).state_db == "/tmp/b.db"


def test_one_endpoint_or_a_list_and_coordination_off_by_default():
    cfg = config.parse({})
    assert cfg.zmq.publish == ["tcp://127.0.0.1:5556"] and not cfg.coordination.enabled
    assert config.parse({"zmq": {"publish": "tcp://h:1", "snapshot": "tcp://h:2"}}).zmq.snapshot == ["tcp://h:2"]
    cfg = config.parse({"zmq": {"publish": ["tcp://a:1", "tcp://b:1"], "snapshot": ["tcp://a:2", "tcp://b:2"]},
                        "coordination": {"url": ["etcd3+http://e1:2379", "etcd3+https://e2:2379?ca_cert=/ca.pem"],
                                         "name": "c1", "lease_ttl_s": 10}})
    assert cfg.coordination.enabled and cfg.coordination.url[1].startswith("etcd3+https://e2")
    assert cfg.coordination.lease_ttl_s == 10 and len(cfg.zmq.publish) == 2


def test_values_are_typed():
    cfg = config.parse({"groups": {"api": {"vcpus": 2, "threshold": {"high": 1}}},
                        "hosts": [{"name": "a", "uri": "test:///default"}, {"name": "b", "uri": "qemu+ssh://b/system"}]})
    assert cfg.groups["api"].vcpus == 2
    assert cfg.groups["api"].threshold.high == 1.0 and isinstance(cfg.groups["api"].threshold.high, float)
    assert cfg.host("b").uri == "qemu+ssh://b/system"


@pytest.mark.parametrize("text, needle", [
    ("bogus = 1", "unknown key bogus"),
    ("[groups.web]\nvcpu = 1", "unknown key groups.web.vcpu"),
    ("[groups.web]\nvcpus = \"two\"", "groups.web.vcpus must be an integer"),
    ("[groups.web]\nvcpus = 0", "groups.web.vcpus = 0 is below the minimum 1"),
    ("[groups.web.threshold]\nhigh = 1.5", "groups.web.threshold.high = 1.5 is above the maximum 1.0"),
    ("[libvirt]\ndomain_type = \"xen\"", "libvirt.domain_type = 'xen' is not one of kvm, qemu, auto"),
    ("[network]\nmode = \"bridge\"", "network.mode = 'bridge' is not one of user, libvirt"),
    ("[api]\nopen_spec_urls = 1", "api.open_spec_urls must be a boolean"),
    ("[[hosts]]\nname = \"a\"\nuri = \"test:///default\"\nport = 1", "unknown key hosts[0].port"),
    ("[[hosts]]\nname = \"a\"\nuri = \"x\"\n[[hosts]]\nname = \"a\"\nuri = \"y\"", "duplicate host name 'a'"),
    ("hosts = []", "at least one hypervisor host"),
    ("[groups.web]\nmin = 4\nmax = 2", "groups.web.min (4) is above groups.web.max (2)"),
    ("[groups.web.threshold]\nlow = 0.8\nhigh = 0.7", "must be below"),
    ("[network]\nport_min = 30000\nport_max = 20000", "network.port_min (30000) is above"),
    ("[libvirt]\nmigrate_timeout_s = 900.0", "libvirt.migrate_timeout_s (900) must be below api.timeout (600)"),
    ("[api]\nworker_class = \"gevent\"", "api.worker_class = 'gevent' is not one of sync, gthread"),
    ("[zmq]\npublish = [1]", "zmq.publish[0] must be a string"),
    ("[zmq]\npublish = 1", "zmq.publish must be an array"),
    ("[zmq]\npublish = []", "zmq.publish and zmq.snapshot need at least one endpoint"),
    ("[zmq]\npublish = [\"tcp://a:1\", \"tcp://b:1\"]", "zmq.publish lists 2 endpoint(s) and zmq.snapshot 1"),
    ("[zmq]\npublish = [\"tcp://a:1\", \"tcp://b:1\"]\nsnapshot = [\"tcp://a:2\", \"tcp://b:2\"]",
     "several controllers need [coordination] url"),
    ("[zmq]\npublish = [\"tcp://a:1\", \"b:1\"]\nsnapshot = [\"tcp://a:2\", \"tcp://b:2\"]",
     "zmq.publish[1] = 'b:1': want tcp://HOST:PORT"),
    ("[coordination]\nurl = \"http://e1:2379\"", "coordination.url[0] = 'http://e1:2379': want etcd3+http"),
    ("[coordination]\nurl = [\"etcd3+http://e1:2379?lock_timeout=9\"]", "lock_timeout is set by cms"),
    ("[coordination]\nurl = \"etcd3+http://e1:99999\"", "coordination.url[0]"),
    ("[coordination]\nlease_ttl_s = 1", "coordination.lease_ttl_s = 1 is below the minimum 2"),
    ("libvirt = 3", "libvirt must be a table"),
    ("this is not toml", "not valid TOML"),
    ("[groups.web.threshold]\nhigh = nan", "groups.web.threshold.high = nan is not a finite number"),
    ("[groups.web.threshold]\nwindow_s = inf", "groups.web.threshold.window_s = inf is not a finite number"),
    ("[placement]\ncpu_overcommit = -inf", "placement.cpu_overcommit = -inf is not a finite number"),
    ("[[hosts]]\nname = \"a\"\nuri = \"http://hv1/\"", "hosts[0].uri = 'http://hv1/' is not a libvirt URI"),
    ("[[hosts]]\nname = \"a\"\nuri = \"qemu+https://hv1/system\"", "hosts[0].uri"),
    ("[[hosts]]\nname = \"a\"\nuri = \"qemu://hv1/systm\"", "a QEMU URI's path is /system or /session, not '/systm'"),
    ("[[hosts]]\nname = \"a\"\nuri = \"test://\"", "a test URI names /default"),
    ("[api]\nbind = \"127.0.0.1:0\"", "api.bind = '127.0.0.1:0': want HOST:PORT"),
    ("[zmq]\nsnapshot = \"udp://1.2.3.4:5\"", "zmq.snapshot[0] = 'udp://1.2.3.4:5': want tcp://HOST:PORT"),
    ("state_db = \"a\\u0007b\"", "state_db = 'a\\x07b' holds a control character"),
    ("[[hosts]]\nname = \"a\"\nuri = \"test:///default\"\nfence_command = \"ipmitool 'x\"",
     "hosts[0].fence_command = \"ipmitool 'x\": No closing quotation"),
    ("[[hosts]]\nname = \"a\"\nuri = \"test:///default\"\ntimeout_s = 0", "hosts[0].timeout_s = 0.0 is below the minimum 0.05"),
    ("[autoscaler]\nhost_down_s = 0", "autoscaler.host_down_s = 0.0 is below the minimum 0.1"),
])
def test_bad_values_name_the_key_and_file(tmp_path, text, needle):
    p = tmp_path / "cms.toml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert needle in str(ei.value)
    assert str(p) in str(ei.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "nope.toml")


def test_command_line_exit_code_2_and_no_traceback(tmp_path):
    p = tmp_path / "cms.toml"
    p.write_text("[groups.web]\nmax = -1\n")
    r = subprocess.run([sys.executable, "-c", "from cms.config import load_or_exit; load_or_exit()"],
                       env={**os.environ, "CMS_CONFIG": str(p)}, capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2
    assert "groups.web.max = -1 is below the minimum 1" in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu:///session", "qemu+ssh://root@hv1/system",
                                 "qemu+ssh://hv1:2222/system?keyfile=/root/.ssh/k", "qemu+tcp://10.0.0.5/system",
                                 "qemu+tls://hv1.example.org/system", "qemu+unix:///system?socket=/run/x/sock",
                                 "qemu+libssh://u@hv1/system", "qemu+libssh2://u@hv1/system?known_hosts=/k",
                                 "qemu+ext:///system?command=/bin/tunnel", "qemu://hv1/system",
                                 "test:///default", "test:///abs/node.xml", "test+tcp://localhost:5000/default"])
def test_libvirt_uris_cms_can_use_pass(uri):
    assert config.libvirt_uri_problem(uri) is None
    assert config.parse({"hosts": [{"name": "a", "uri": uri}]}).hosts[0].uri == uri


def test_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "cms.toml"
    p.write_bytes(b'log_level = "info"\n\n# caf\xe9\n')
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert str(ei.value) == f"{p}: line 3: not UTF-8 text (byte 0xe9); a TOML file is UTF-8"


def test_a_fifo_or_device_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for p in (fifo, Path("/dev/zero")):
        with pytest.raises(ConfigError, match="not a regular file"):
            config.load(p)


def test_to_toml_writes_what_load_reads_back(tmp_path):
    data = {"state_db": str(tmp_path / "s.db"),
            "hosts": [{"name": "h1", "uri": "qemu:///system", "cpus": 2}, {"name": "h2", "uri": "test:///default"}],
            "zmq": {"publish": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:3"],
                    "snapshot": ["tcp://127.0.0.1:2", "tcp://127.0.0.1:4"]},
            "coordination": {"url": ["etcd3+http://127.0.0.1:2379"], "name": "c1"},
            "groups": {"web": {"min": 1, "max": 3, "threshold": {"low": 0.2, "high": 0.7}}}}
    path = tmp_path / "cms.toml"
    path.write_text(config.to_toml(data))
    cfg = config.load(path)
    assert [(h.name, h.uri, h.cpus) for h in cfg.hosts] == [("h1", "qemu:///system", 2), ("h2", "test:///default", 0)]
    assert cfg.zmq.snapshot == ["tcp://127.0.0.1:2", "tcp://127.0.0.1:4"]
    assert cfg.coordination.name == "c1" and cfg.coordination.url == ["etcd3+http://127.0.0.1:2379"]
    assert (cfg.groups["web"].max, cfg.groups["web"].threshold.high) == (3, 0.7)
