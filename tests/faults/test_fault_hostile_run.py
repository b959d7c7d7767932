"""Fault: a run's surroundings turn hostile. The output location cannot be written; an earlier run
was SIGKILLed and left its work folder; Ctrl-C while listing; stdout's reader goes away
(`ffleet run ... | head`). Each ends with a message and a documented exit code, never a traceback,
and nothing a user needs is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, write_json
from faultkit import start_cli, wait_for
from ffleet.demo import make_tone


@pytest.fixture(scope="module")
def one_tone(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one") / "in"
    make_tone(folder / "a.wav", 0.5)
    return folder


def _no_traceback(p) -> None:
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# The output location is checked before the first conversion

def test_an_unwritable_output_folder_stops_the_run_before_any_conversion(tmp_path, one_tone):
    """(Run as root, permissions do not stop a write: the folder's parent is a file instead.)"""
    (tmp_path / "a-file").write_text("not a folder")
    req = write_json(tmp_path / "job.json", {"name": "nowrite", "input": {"path": str(one_tone)},
                                             "output": {"path": str(tmp_path / "a-file" / "out")},
                                             "results": {"path": str(tmp_path / "results")}})
    p = run_cli("run", str(req), "--json", "--no-progress")
    _no_traceback(p)
    assert p.returncode == 2 and "output location cannot be written" in p.stderr, p.stderr
    assert str(tmp_path / "a-file" / "out") in p.stderr
    assert not list((tmp_path / "results").rglob("records.jsonl")), "files were processed"


def test_a_missing_output_bucket_stops_the_run_before_any_conversion(tmp_path, one_tone, s3_endpoint):
    s3_endpoint.create_bucket(Bucket="results-here")
    req = write_json(tmp_path / "job.json", {"name": "nobucket", "input": {"path": str(one_tone)},
                                             "output": {"s3_bucket": "no-such-output-bucket"},
                                             "results": {"s3_bucket": "results-here"}})
    p = run_cli("run", str(req), "--json", "--no-progress", env={"AWS_ENDPOINT_URL": s3_endpoint.meta.endpoint_url})
    _no_traceback(p)
    assert p.returncode == 2 and "s3://no-such-output-bucket/: NoSuchBucket" in p.stderr, p.stderr
    assert s3_endpoint.list_objects_v2(Bucket="results-here").get("KeyCount") == 0  # no run recorded
    assert s3_endpoint.list_multipart_uploads(Bucket="results-here").get("Uploads") is None


def test_the_write_check_leaves_nothing_in_the_output_bucket(tmp_path, one_tone, s3_endpoint):
    s3_endpoint.create_bucket(Bucket="out-bucket")
    req = write_json(tmp_path / "job.json", {"name": "ok", "input": {"path": str(one_tone)},
                                             "output": {"s3_bucket": "out-bucket", "s3_prefix": "o/"},
                                             "results": {"path": str(tmp_path / "results")}})
    p = run_cli("run", str(req), "--json", "--no-progress", env={"AWS_ENDPOINT_URL": s3_endpoint.meta.endpoint_url})
    assert p.returncode == 0, p.stderr
    keys = [o["Key"] for o in s3_endpoint.list_objects_v2(Bucket="out-bucket")["Contents"]]
    assert keys == ["o/a.wav"]
    assert not s3_endpoint.list_multipart_uploads(Bucket="out-bucket").get("Uploads")


# ---------------------------------------------------------------------------------------------
# Work folders of killed runs are removed by the next run; their unsaved records are kept

def _slow_request(tmp_path: Path, name: str, files: int, results: dict) -> Path:
    inp = tmp_path / f"{name}-in"
    tone = make_tone(tmp_path / f"{name}-tone.wav", 2.0, rate=8000, channels=1)
    inp.mkdir()
    for i in range(files):
        (inp / f"f{i}.wav").write_bytes(tone.read_bytes())
    return write_json(tmp_path / f"{name}.json", {
        "name": name, "input": {"path": str(inp), "file_options": "-re"},  # -re: each file takes 2 s
        "output": {"path": str(tmp_path / f"{name}-out"), "extension": ".flac"}, "results": results})


def _work_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("ffleet-run-*"))


def test_the_next_run_removes_a_killed_runs_work_folder_and_keeps_its_unsaved_records(tmp_path, s3_endpoint):
    """SIGKILL leaves $TMPDIR/ffleet-run-* behind: staged inputs, partial outputs and, for S3
    results, the only copy of the records. The next run removes it, moving the records to
    $TMPDIR/ffleet-results-<run id> and saying so."""
    s3_endpoint.create_bucket(Bucket="results-s3")
    tmp = tmp_path / "tmp"
    env = {"AWS_ENDPOINT_URL": s3_endpoint.meta.endpoint_url}
    killed = start_cli("run", str(_slow_request(tmp_path, "killed", 6, {"s3_bucket": "results-s3"})),
                       "--no-progress", "--workers", "1", env=env, tmpdir=tmp)
    staged = lambda: [ln for d in _work_dirs(tmp) for f in d.glob("results/records.jsonl")  # noqa: E731
                      for ln in f.read_text().splitlines()]
    wait_for(lambda: len(staged()) >= 1, killed, what="a finished file")
    lines = staged()
    (dead,) = _work_dirs(tmp)
    run_id = json.loads((dead / "run.json").read_text())["run_id"]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stdout.close(), killed.stderr.close()
    assert dead.exists()

    p = run_cli("run", str(_slow_request(tmp_path, "next", 1, {"path": str(tmp_path / "next-results")})),
                "--no-progress", env={**env, "TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stderr
    kept = tmp / f"ffleet-results-{run_id}"
    assert f"removed {dead}" in p.stderr and str(kept) in p.stderr, p.stderr
    assert not dead.exists() and _work_dirs(tmp) == []
    assert (kept / "records.jsonl").read_text().splitlines()[: len(lines)] == lines


def test_a_live_runs_work_folder_is_left_alone(tmp_path):
    tmp = tmp_path / "tmp"
    live = start_cli("run", str(_slow_request(tmp_path, "live", 6, {"path": str(tmp_path / "live-results")})),
                     "--no-progress", "--workers", "1", tmpdir=tmp)
    (wd,) = wait_for(lambda: [d for d in _work_dirs(tmp) if (d / "run.json").exists()], live, what="a work folder")
    p = run_cli("run", str(_slow_request(tmp_path, "other", 1, {"path": str(tmp_path / "other-results")})),
                "--no-progress", env={"TMPDIR": str(tmp)})
    assert p.returncode == 0 and "removed" not in p.stderr, p.stderr
    assert wd.exists()
    out, err = live.communicate(timeout=120)
    assert live.returncode == 0, err
    assert _work_dirs(tmp) == []  # and each run removed its own


# ---------------------------------------------------------------------------------------------
# Ctrl-C while listing; a reader of stdout that goes away

def test_ctrl_c_while_listing_exits_130_without_a_traceback(tmp_path, one_tone):
    """The listing blocks on a manifest that is a named pipe nobody writes to, so SIGINT is sure to
    arrive while the run lists its inputs (with the progress bar, the default, the listing is
    counted before any file starts)."""
    fifo = tmp_path / "keys.csv"
    os.mkfifo(fifo)
    req = write_json(tmp_path / "job.json", {"name": "listing", "input": {"path": str(one_tone), "manifest": str(fifo)},
                                             "output": {"path": str(tmp_path / "out")}})
    tmp = tmp_path / "tmp"
    proc = start_cli("run", str(req), tmpdir=tmp)

    def blocked_on_the_pipe() -> bool:
        try:
            return "partner" in Path(f"/proc/{proc.pid}/wchan").read_text() or "fifo" in Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError:
            return False

    wait_for(blocked_on_the_pipe, proc, what="the listing to block on the manifest")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "interrupted" in err, err
    assert _work_dirs(tmp) == []


def test_a_second_ctrl_c_ends_a_listing_that_blocks_inside_the_clean_stop(tmp_path, one_tone):
    """With --no-progress the listing feeds the pool inside the clean-stop handler: a first Ctrl-C
    asks for a clean stop, which a blocked listing never reaches; the second one ends the run."""
    fifo = tmp_path / "keys.csv"
    os.mkfifo(fifo)
    req = write_json(tmp_path / "job.json", {"name": "listing", "input": {"path": str(one_tone), "manifest": str(fifo)},
                                             "output": {"path": str(tmp_path / "out")}})
    proc = start_cli("run", str(req), "--no-progress", tmpdir=tmp_path / "tmp")
    wchan = Path(f"/proc/{proc.pid}/wchan")
    wait_for(lambda: wchan.exists() and ("partner" in wchan.read_text() or "fifo" in wchan.read_text()), proc,
             what="the listing to block on the manifest")
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)  # two signals sent at once could be delivered as one (standard signals do not queue)
    assert proc.poll() is None and ("partner" in wchan.read_text() or "fifo" in wchan.read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, err


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_closed_stdout_is_not_a_traceback(tmp_path, one_tone, command):
    """`ffleet run job.json | head -1`: the reader goes away before the summary is printed."""
    req = write_json(tmp_path / "job.json", {"name": "pipe", "input": {"path": str(one_tone)},
                                             "output": {"path": str(tmp_path / "out")}})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = [sys.executable, "-m", "ffleet.cli", command, str(req)] + (["--json", "--no-progress"] if command == "run" else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # nobody reads: every write to stdout fails with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 0, err  # the command's own outcome: the run succeeded
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    if command == "run":
        assert (tmp_path / "out" / "a.wav").exists()
