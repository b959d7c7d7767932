"""Fault: an FFmpeg that does not end (tests/test_worker.py covers one looped input in the worker;
these run the whole batch through `ffleet run`)."""
from __future__ import annotations

import json
import os
import signal
import stat
import sys

from faultkit import processes_using

from conftest import run_cli, write_json
from ffleet.demo import make_tone
from ffleet.ffmpeg import find_binaries


def test_a_slow_file_is_killed_at_the_timeout_and_the_batch_goes_on(tmp_path):
    """Real FFmpeg reading in real time (-re): a 120-second file cannot finish inside a 6-second
    per-file timeout; three 0.5-second files can. The long one must be recorded failed with reason
    timeout and no output, the others must succeed, and the run exits 1 (0% tolerated)."""
    inp = tmp_path / "in"
    inp.mkdir()
    make_tone(inp / "endless.wav", 120, rate=8000, channels=1)
    for i in range(3):
        make_tone(inp / f"short{i}.wav", 0.5, rate=8000, channels=1)
    req = write_json(tmp_path / "job.json", {
        "name": "hung", "input": {"path": str(inp), "file_options": "-re"},
        "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
        "processing": {"timeout_seconds_per_file": 6},
    })
    p = run_cli("run", str(req), "--json", "--no-progress", "--workers", "2", env={"TMPDIR": str(tmp_path)})
    assert p.returncode == 1, p.stderr
    s = json.loads(p.stdout)
    assert s["files"]["succeeded"] == 3 and s["files"]["failed"] == 1, s["files"]
    assert s["failures"] == [{"key": "endless.wav", "reason": "timeout", "detail": s["failures"][0]["detail"]}]
    assert "timeout_seconds_per_file=6" in s["failures"][0]["detail"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["short0.flac", "short1.flac", "short2.flac"]


def test_a_hung_ffmpeg_and_its_children_are_all_killed(tmp_path):
    """An FFmpeg that hangs after starting a helper process of its own (as hwaccel or a filter
    plugin may). At the timeout ffleet must kill the whole process group (no process it started
    may outlive the file), record reason timeout, and go on with the next file.

    ffleet's sandbox refuses new processes outright (tests/test_sandbox.py), so this runs without
    it (FFLEET_SANDBOX_HELPER naming no helper), as on a machine that cannot build the helper."""
    real = find_binaries().ffmpeg
    fake = tmp_path / "ffmpeg-that-hangs"
    # Hangs (with a child holding its stderr) only for the input whose first bytes say so.
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        "src = sys.argv[sys.argv.index('-i') + 1]\n"
        "if open(src, 'rb').read(4) == b'HANG':\n"
        "    subprocess.Popen(['sleep', '3600', 'ffleet-fault-marker'])\n"
        "    time.sleep(3600)\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a-hangs.wav").write_bytes(b"HANG" + b"\0" * 100)
    make_tone(inp / "b-fine.wav", 0.5, rate=8000, channels=1)
    req = write_json(tmp_path / "job.json", {
        "name": "hung2", "input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
        "processing": {"timeout_seconds_per_file": 3, "tolerated_failure_percent": 50},
    })
    p = run_cli("run", str(req), "--json", "--no-progress", "--workers", "1",
                env={"FFLEET_FFMPEG": str(fake), "FFLEET_FFPROBE": find_binaries().ffprobe,
                     "FFLEET_SANDBOX_HELPER": str(tmp_path / "no-helper")})
    leftovers = processes_using("ffleet-fault-marker")
    for pid in leftovers:  # clean up before asserting, so a failure leaves nothing running
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, "a child of the hung FFmpeg survived the timeout"
    assert p.returncode == 0, p.stderr
    recs = {r["key"]: r for r in map(json.loads, next((tmp_path / "out.ffleet-results").rglob("records.jsonl")).read_text().splitlines())}
    assert (recs["a-hangs.wav"]["status"], recs["a-hangs.wav"]["reason"]) == ("failed", "timeout")
    assert recs["b-fine.wav"]["status"] == "succeeded"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b-fine.flac"]
