"""write_atomic: whole files or nothing, never over an input, never through a link."""

from __future__ import annotations

import os
import threading

import pytest

from qinspect.errors import InputError
from qinspect.render.atomic import write_atomic


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_the_text_with_umask_permissions(tmp_path):
    target = tmp_path / "report.json"
    old = os.umask(0o022)
    try:
        assert write_atomic(target, '{"ok": true}\n') == target
    finally:
        os.umask(old)
    assert target.read_text() == '{"ok": true}\n'
    assert target.stat().st_mode & 0o777 == 0o644
    assert _leftovers(tmp_path) == []


def test_replaces_an_existing_report(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")
    write_atomic(target, "new ünïcode\n")
    assert target.read_text(encoding="utf-8") == "new ünïcode\n"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.txt"
    target.write_text("previous complete report")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(InputError, match="No space left"):
        write_atomic(target, "x" * 10_000)
    assert target.read_text() == "previous complete report"
    assert _leftovers(tmp_path) == []


def test_an_interrupted_write_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.txt"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "text")
    assert not target.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink", "hardlink"])
def test_refuses_to_write_over_an_input(tmp_path, monkeypatch, spelling):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"PK\x03\x04 precious")
    monkeypatch.chdir(tmp_path)
    target = {"same": ckpt, "relative": tmp_path / "sub" / ".." / "model.pt",
              "symlink": tmp_path / "link.json", "hardlink": tmp_path / "hard.json"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        target.symlink_to(ckpt)
    if spelling == "hardlink":
        os.link(ckpt, target)
    with pytest.raises(InputError, match="over an input file"):
        write_atomic(target, "report", inputs=["model.pt"])
    assert ckpt.read_bytes() == b"PK\x03\x04 precious"


def test_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not yours")
    link = tmp_path / "report.txt"
    link.symlink_to(elsewhere)
    write_atomic(link, "report")
    assert not link.is_symlink() and link.read_text() == "report"
    assert elsewhere.read_text() == "not yours"


def test_refuses_a_directory_and_a_missing_folder(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        write_atomic(tmp_path, "x")
    with pytest.raises(InputError, match="folder exists"):
        write_atomic(tmp_path / "missing" / "r.txt", "x")


def test_messages_escape_the_path(tmp_path):
    with pytest.raises(InputError) as info:
        write_atomic(tmp_path / "missing\x1b[2J" / "r.txt", "x")
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)


def test_readers_never_see_a_partial_report(tmp_path):
    target = tmp_path / "report.txt"
    versions = [str(i) * 200_000 for i in range(10)]
    write_atomic(target, versions[0])
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for text in versions[1:] * 3:
            write_atomic(target, text)
    finally:
        done.set()
        reader.join()
    assert seen <= set(versions), "a reader saw a partly written report"
