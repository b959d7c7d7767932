"""The per-file path does each piece of work once: one rename to store an output, the folder's real path
resolved once, the item's folder removed without a tree walk (issue 15), and stays as strict as before."""
import errno
import os

import pytest

from ffleet import storage
from ffleet.storage import InvalidKey, LocalStorage, StorageError


def _counting(monkeypatch, name):
    calls = []
    real = getattr(os, name)

    def counted(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(storage.os, name, counted)
    return calls


def test_a_local_store_is_one_rename_on_one_filesystem(tmp_path, monkeypatch):
    store = LocalStorage(tmp_path / "o")
    first = tmp_path / "first.bin"
    first.write_bytes(b"1")
    store.store(first, "a/first.bin")  # makes the folder a/
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    inode = src.stat().st_ino
    renames, mkdirs = _counting(monkeypatch, "replace"), _counting(monkeypatch, "mkdir")
    store.store(src, "a/b.bin")
    assert len(renames) == 1 and mkdirs == []
    dest = tmp_path / "o/a/b.bin"
    assert dest.stat().st_ino == inode and not src.exists()  # moved, not copied
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b.bin", "first.bin"]
    assert (tmp_path / "o/a/first.bin").read_bytes() == b"1"


def test_a_store_across_filesystems_copies_beside_the_output_then_renames(tmp_path, monkeypatch):
    store = LocalStorage(tmp_path / "o")
    (tmp_path / "o/a").mkdir(parents=True)
    (tmp_path / "o/a/b.bin").write_bytes(b"old")
    src = tmp_path / "src.bin"
    src.write_bytes(b"new" * 100)
    real = os.replace
    seen = []

    def replace(a, b):
        seen.append((str(a), str(b)))
        if str(a) == str(src):  # the work folder on another filesystem than the output folder
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(a, b)

    monkeypatch.setattr(storage.os, "replace", replace)
    store.store(src, "a/b.bin")
    assert (tmp_path / "o/a/b.bin").read_bytes() == b"new" * 100
    assert [p.name for p in (tmp_path / "o/a").iterdir()] == ["b.bin"]  # no temp left
    assert len(seen) == 2 and storage._TMP_MARK in seen[1][0] and seen[1][1].endswith("b.bin")


def test_a_failed_store_names_the_output_and_leaves_no_temp(tmp_path):
    store = LocalStorage(tmp_path / "o")
    (tmp_path / "o/a/b.bin").mkdir(parents=True)  # a folder where the file should go
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    with pytest.raises(StorageError, match="b.bin"):
        store.store(src, "a/b.bin")
    assert [p.name for p in (tmp_path / "o/a").iterdir()] == ["b.bin"]


def test_the_folder_is_resolved_once_and_symlinks_out_of_it_are_still_refused(tmp_path, monkeypatch):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "sub/a.wav").write_bytes(b"x")
    (tmp_path / "outside.wav").write_bytes(b"y")
    (root / "escape.wav").symlink_to(tmp_path / "outside.wav")
    store = LocalStorage(root)
    resolved = []
    real = storage.Path.resolve

    def resolve(self, *a, **kw):
        resolved.append(str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(storage.Path, "resolve", resolve)
    for _ in range(3):
        assert store.readable_path("sub/a.wav", tmp_path / "unused")[1] == 1
    assert resolved.count(str(root)) == 1
    with pytest.raises(InvalidKey, match="resolves outside"):
        store.readable_path("escape.wav", tmp_path / "unused")


def test_a_folder_made_after_the_first_look_is_resolved_again(tmp_path):
    real_out = tmp_path / "real-out"
    real_out.mkdir()
    link = tmp_path / "out"
    store = LocalStorage(link)
    assert store.exists("a.wav") is False  # the folder is not there yet
    link.symlink_to(real_out)  # now it is: a symlink to a folder
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    store.store(src, "a.wav")  # resolved against the folder as it is now, not as it was
    assert (real_out / "a.wav").read_bytes() == b"x"


def _has_interpreter(path) -> bool:
    """Whether an ELF executable names a dynamic loader (a PT_INTERP program header)."""
    import struct

    data = open(path, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def test_the_sandbox_helper_is_linked_statically_where_libc_allows(tmp_path):
    import shutil
    import subprocess

    from ffleet import sandbox

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    libc_a = subprocess.run([cc, "-print-file-name=libc.a"], capture_output=True, text=True).stdout.strip()
    built = sandbox.build_helper(tmp_path / "helper")
    assert _has_interpreter("/bin/sh")  # the check can tell a dynamic executable
    if not os.path.isabs(libc_a):
        pytest.skip("no static C library here: the helper is linked dynamically")
    assert not _has_interpreter(built)


def test_a_process_is_waited_for_without_a_timer_thread_and_still_killed_at_its_timeout(monkeypatch):
    import sys
    import threading

    from ffleet import ffmpeg

    if ffmpeg._pidfd(os.getpid()) is None:
        pytest.skip("no pidfd_open here (Linux 5.3+): the timer thread is the fallback")
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), real_start(self)))
    ok = ffmpeg.run_process([sys.executable, "-c", "pass"], timeout=60)
    assert ok.returncode == 0 and not ok.timed_out and ok.cpu_seconds > 0
    hung = ffmpeg.run_process([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert hung.timed_out and hung.returncode == -9
    assert started == []
    # ffprobe's path reads its stdout to the end: a timer kills it there
    probe = ffmpeg.run_process([sys.executable, "-c", "import time; print(1, flush=True); time.sleep(60)"],
                               timeout=0.5, capture_stdout=True)
    assert probe.timed_out and len(started) == 1


@pytest.mark.parametrize("result", [
    dict(key="a/b.wav", status="succeeded", output_key="a/b.flac", bytes_in=10, bytes_out=5, duration_in=1.5,
         duration_out=1.5, sample_rate=48000, channels=1, codec="flac", wall_seconds=0.1, cpu_seconds=0.05),
    dict(key="x ü.wav", status="failed", reason="corrupt_input", detail="bad\n\"data\"", wall_seconds=0.01),
    dict(key="q.wav", status="rejected", extra={"audio": {"lufs": -23.0, "peaks": [0.1, 0.2]}, "rejected_for": ["min_lufs"]}),
])
def test_a_record_reads_as_before(result):
    """The record line is what dataclasses.asdict made of it, field for field and in order."""
    import json
    from dataclasses import asdict

    from ffleet.results import ItemResult

    r = ItemResult(**result)
    d = asdict(r)
    if not d["extra"]:
        d.pop("extra")
    assert r.to_json() == json.dumps({k: v for k, v in d.items() if v is not None}, ensure_ascii=False)
    assert ItemResult.from_dict(json.loads(r.to_json())) == r


def test_ffmpeg_starts_through_vfork_with_one_exec_before_it(monkeypatch):
    """No preexec_fn (it makes Python fork instead of vfork) and at most the sandbox helper before FFmpeg."""
    import subprocess
    import sys

    from ffleet import ffmpeg, sandbox

    sandbox.sandbox_status()  # the helper's self-test, once per process, before recording
    seen = []
    real = subprocess.Popen

    class Recording(real):
        def __init__(self, args, *a, **kw):
            seen.append((list(args), kw))
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(ffmpeg.subprocess, "Popen", Recording)
    assert ffmpeg.run_process([sys.executable, "-c", "pass"], timeout=60).returncode == 0
    (argv, kw), = seen
    assert kw.get("preexec_fn") is None and kw.get("close_fds") is True and not kw.get("pass_fds")
    before = argv[:argv.index(sys.executable)]
    helper = sandbox.helper_path()
    if helper:
        assert before[0] == helper and before[-1] == "--" and helper not in before[1:]
    else:
        assert len(before) <= 4  # setpriv --pdeathsig KILL --, or nothing
