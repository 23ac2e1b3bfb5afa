"""strike_jax.atomic: the new bytes reach the disk before the rename, the rename before returning."""

import os
import stat

import pytest

from strike_jax import atomic


def _record(monkeypatch):
    """Records fsync and rename calls in order: ("fsync", "file" | "dir", path it names) / ("replace", dst)."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        calls.append(("fsync", kind, os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.basename(src), dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_write_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    calls = _record(monkeypatch)
    target = tmp_path / "sub" / "result.json"
    atomic.write_json(str(target), {"a": 1})
    assert [c[:2] for c in calls] == [("fsync", "file"), ("replace", calls[1][1]), ("fsync", "dir")], calls
    tmp_name = calls[1][1]
    assert tmp_name.startswith(".tmp-") and calls[1][2] == str(target)
    if calls[0][2] is not None:  # Linux: the fsynced file is the temporary file, the folder the target's
        assert os.path.basename(calls[0][2]) == tmp_name
        assert calls[2][2] == str(target.parent)
    assert target.read_text() == '{\n "a": 1\n}\n'


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.bin"
    atomic.atomic_write(str(target), lambda fh: fh.write(b"old"))
    calls = _record(monkeypatch)

    def bad(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.atomic_write(str(target), bad)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["ckpt.bin"]
    assert not any(c[0] == "replace" for c in calls)


def test_fsync_failure_is_not_swallowed(tmp_path, monkeypatch):
    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    target = tmp_path / "r.txt"
    with pytest.raises(OSError, match="Input/output error"):
        atomic.write_text(str(target), "x")
    assert not target.exists() and os.listdir(tmp_path) == []
