"""Faults: `ffleet run` killed mid-run (SIGKILL: no chance to clean up) or asked to stop (SIGTERM)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from faultkit import probe_duration, processes_using, record_lines, start_cli, verifiers_of, wait_for

from conftest import run_cli, write_json
from ffleet.demo import make_tone

SRC = str(Path(__file__).resolve().parents[2] / "src")

N_FILES = 10
SECONDS = 3.0


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory):
    """Ten 3-second tones. The request reads them with -re (real time), so each file takes about
    3 s: long enough that a signal always lands while FFmpeg is writing, without fakes."""
    folder = tmp_path_factory.mktemp("slow") / "in"
    folder.mkdir()
    src = make_tone(folder.parent / "tone.wav", SECONDS, rate=8000, channels=1)
    for i in range(N_FILES):
        (folder / f"part {i:02d}.wav").write_bytes(src.read_bytes())
    return folder


def _request(tmp_path, corpus, input_options="-re", tolerated=0):
    return write_json(tmp_path / "job.json", {
        "name": "killme", "input": {"path": str(corpus), "file_options": input_options},
        "output": {"path": str(tmp_path / "out"), "extension": ".flac", "file_options": "-ac 1"},
        "processing": {"tolerated_failure_percent": tolerated},
    })


def _outputs(tmp_path) -> dict[Path, int]:
    out = tmp_path / "out"
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() }


def _assert_every_output_whole(tmp_path):
    for p in _outputs(tmp_path):
        assert p.suffix == ".flac" and ".ffleet-tmp-" not in p.name, f"stray file in the output folder: {p}"
        dur = probe_duration(p)
        assert dur is not None and abs(dur - SECONDS) < 0.1, f"partial or corrupt output {p}: duration {dur}"


def test_sigkill_mid_run_leaves_no_partial_output_and_rerun_finishes_the_rest(tmp_path, slow_corpus):
    """SIGKILL of `ffleet run` while FFmpeg is writing. No partial or corrupt file may exist at any
    output path (each output probes with the full duration); the killed run's records are whole
    lines; no FFmpeg or verifier it started keeps running; a re-run processes exactly the files without output
    and skips (does not touch) every finished one."""
    req = _request(tmp_path, slow_corpus)
    work = tmp_path / "tmp"
    proc = start_cli("run", str(req), "--json", "--no-progress", "--workers", "2", tmpdir=work)
    results = tmp_path / "out.ffleet-results"
    wait_for(lambda: len(record_lines(results)) >= 2, proc, what="two finished files")
    wait_for(lambda: processes_using(str(work)), proc, what="FFmpeg at work")  # mid-file, for sure
    verifiers = verifiers_of(SRC)
    assert verifiers, "no verifier read the finished files back"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close(), proc.stderr.close()
    time.sleep(0.5)  # let a stray process (if any) write what it would

    finished = _outputs(tmp_path)
    assert 2 <= len(finished) < N_FILES
    _assert_every_output_whole(tmp_path)
    lines = record_lines(results)
    assert all(json.loads(line)["status"] == "succeeded" for line in lines)  # whole, parseable lines
    assert len(lines) == len(finished)
    orphans = processes_using(str(work))
    for pid in orphans:  # clean up before asserting, so a failure leaves nothing running
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"FFmpeg processes outlived the killed ffleet: {orphans}"
    assert not set(verifiers) & set(verifiers_of(SRC)), "a verifier outlived the killed ffleet"

    p = run_cli("run", str(req), "--json", "--no-progress", "--workers", "2", env={"TMPDIR": str(work)})
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)["files"]
    assert s["skipped"] == len(finished) and s["succeeded"] == N_FILES - len(finished) and s["failed"] == 0, s
    after = _outputs(tmp_path)
    assert len(after) == N_FILES
    assert {p: after[p] for p in finished} == finished  # finished files were not processed again
    _assert_every_output_whole(tmp_path)


def test_sigterm_stops_cleanly_and_reports_not_done(tmp_path, slow_corpus):
    """SIGTERM (a Batch timeout or Spot reclaim). ffleet must stop its FFmpegs, record every file it
    did not finish as not_done (reason interrupted) in records.jsonl, failed-files.jsonl and the
    summary, leave no partial output and no temporary files, and exit non-zero even though the
    request tolerates 100% failures (not_done is never 'within tolerance')."""
    req = _request(tmp_path, slow_corpus, tolerated=100)
    work = tmp_path / "tmp"
    proc = start_cli("run", str(req), "--json", "--no-progress", "--workers", "2", tmpdir=work)
    results = tmp_path / "out.ffleet-results"
    wait_for(lambda: len(record_lines(results)) >= 1, proc, what="one finished file")
    wait_for(lambda: processes_using(str(work)), proc, what="FFmpeg at work")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode not in (0, None) and "Traceback" not in err, err
    s = json.loads(out)
    f = s["files"]
    assert f["total"] == N_FILES and f["not_done"] >= 1 and f["succeeded"] >= 1
    assert f["succeeded"] + f["not_done"] == N_FILES, f
    assert s["within_tolerance"] is False
    run_dir = Path(s["run"]["results"])
    recs = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(recs) == N_FILES
    not_done = {r["key"] for r in recs if r["status"] == "not_done"}
    assert len(not_done) == f["not_done"] and {r["reason"] for r in recs if r["status"] == "not_done"} == {"interrupted"}
    redo = {json.loads(line)["key"] for line in (run_dir / "failed-files.jsonl").read_text().splitlines()}
    assert redo == not_done  # the re-drive manifest names exactly the unfinished files
    done = {p.relative_to(tmp_path / "out").as_posix() for p in _outputs(tmp_path)}
    assert done == {r["output_key"] for r in recs if r["status"] == "succeeded"}
    _assert_every_output_whole(tmp_path)
    assert not processes_using(str(work)), "FFmpeg still running after a clean shutdown"
    assert not any(work.rglob("*")), f"temporary files left: {list(work.rglob('*'))[:5]}"
