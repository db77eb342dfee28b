"""The atomic-write helper: a reader sees the old file or the complete new one."""

from __future__ import annotations

import pytest

from portfolio_layers.atomic import atomic_write_bytes, atomic_write_text


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [f.name for f in target.parent.iterdir()] == ["out.bin"]


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("portfolio_layers.atomic.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left behind
