"""Fault: the work folder's disk is full (a 2 MB tmpfs), while fetching an input or writing an output."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import run_cli, write_json
from ffleet.demo import make_tone


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root, as in CI's container). Unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_work_disk_is_a_storage_error_with_no_partial_output(tmp_path, tiny_disk):
    """The work folder (TMPDIR) is a 2 MB disk. An input too big to fetch there, and an output too
    big to write there, must each fail with reason storage_error (the machine's fault: a retry on
    a bigger disk will work) and a message that says the disk is full; no partial output may
    appear; every temporary file must be removed; the file that fits must still succeed."""
    inp = tmp_path / "in"
    inp.mkdir()
    make_tone(inp / "a-fits.flac", 2, rate=48000, channels=1)              # ~190 KB as wav
    make_tone(inp / "b-output-too-big.flac", 40, rate=48000, channels=1)   # small flac, 3.8 MB as wav
    make_tone(inp / "c-input-too-big.wav", 40, rate=48000, channels=1)     # 3.8 MB: cannot be fetched
    assert (inp / "b-output-too-big.flac").stat().st_size < 1_000_000
    req = write_json(tmp_path / "job.json", {
        "name": "full", "input": {"path": str(inp)},
        "output": {"path": str(tmp_path / "out"), "extension": ".wav", "file_options": "-c:a pcm_s16le"},
        "processing": {"tolerated_failure_percent": 100},
    })
    p = run_cli("run", str(req), "--json", "--no-progress", "--workers", "1", env={"TMPDIR": str(tiny_disk)})
    assert "Traceback" not in p.stderr, p.stderr
    s = json.loads(p.stdout)
    recs = {r["key"]: r for r in map(json.loads, next((tmp_path / "out.ffleet-results").rglob("records.jsonl")).read_text().splitlines())}
    assert recs["a-fits.flac"]["status"] == "succeeded", recs["a-fits.flac"]
    for key in ("b-output-too-big.flac", "c-input-too-big.wav"):
        assert (recs[key]["status"], recs[key]["reason"]) == ("failed", "storage_error"), recs[key]
        assert "No space left on device" in recs[key]["detail"], recs[key]
        assert "cannot read" not in recs[key]["detail"], "blames the input for the work disk being full"
    assert s["failures_by_reason"] == {"storage_error": 2}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-fits.wav"]
    assert not list(tiny_disk.iterdir()), f"temporary files left on the work disk: {list(tiny_disk.rglob('*'))}"
