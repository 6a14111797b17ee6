"""cms.files: every way a named file cannot be read, and the callers' one-line words for it."""

from __future__ import annotations

import os

import pytest

from cms import files, inventory


def test_each_kind_of_unreadable_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    plain = tmp_path / "plain"
    plain.write_text("x")
    cases = [(tmp_path / "absent", files.MISSING), (tmp_path, files.DIRECTORY), (fifo, files.SPECIAL),
             (tmp_path / "absent" / "below", files.MISSING)]
    for path, kind in cases:
        with pytest.raises(files.Unreadable) as ei:
            files.read_regular(path)                # a FIFO must not block: it is refused unopened
        assert ei.value.kind == kind, path
    data, st = files.read_regular(plain, 1)
    assert (data, st.st_size) == (b"x", 1)


def test_the_inventory_files_say_why_in_one_line(tmp_path):
    fifo = tmp_path / "pm_file"
    os.mkfifo(fifo)
    with pytest.raises(inventory.InventoryError) as ei:
        inventory.parse_pm_file(fifo)
    assert str(ei.value) == f"pm_file {fifo}: not a regular file"
    with pytest.raises(inventory.InventoryError, match="is a directory$"):
        inventory.parse_pm_file(tmp_path)
    bad = tmp_path / "types_file"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(inventory.InventoryError, match="not a text file$"):
        inventory.parse_types_file(bad)


def test_words_fall_back_to_the_system_detail():
    assert files.Unreadable(files.FAILED, "Input/output error").words({}, "cannot read") == \
        "cannot read: Input/output error"
