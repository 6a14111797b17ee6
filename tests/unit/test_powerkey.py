"""The guest's power key watcher (guest/cms_powerkey.py): which input devices it watches and
which input events make it power the replica off."""

from __future__ import annotations

import sys

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "guest"))
import cms_powerkey as pk  # noqa: E402


def events(*evs: tuple[int, int, int]) -> bytes:
    return b"".join(pk.EVENT.pack(1, 2, t, c, v) for t, c, v in evs)


def test_only_a_press_of_the_power_key_counts():
    syn, other_key, release, press = (0, 0, 0), (pk.EV_KEY, 30, 1), (pk.EV_KEY, pk.KEY_POWER, 0), (pk.EV_KEY, pk.KEY_POWER, 1)
    assert not pk.pressed(events(syn, other_key, release))
    assert pk.pressed(events(syn, press, syn))
    assert not pk.pressed(events(press)[:-1])             # a torn event is not a press
    assert not pk.pressed(events((2, pk.KEY_POWER, 1)))   # a relative axis with the same code


def test_it_watches_every_device_named_power_button(tmp_path, monkeypatch):
    for dev, name in (("event0", "Power Button"), ("event1", "AT Translated Set 2 keyboard"),
                      ("event2", "Power Button"), ("mouse0", "Power Button")):
        (tmp_path / dev / "device").mkdir(parents=True)
        (tmp_path / dev / "device" / "name").write_text(name + "\n")
    (tmp_path / "event3").mkdir()                          # no device/name: skipped
    monkeypatch.setattr(pk, "INPUT", str(tmp_path))
    assert pk.power_buttons() == ["/dev/input/event0", "/dev/input/event2"]
