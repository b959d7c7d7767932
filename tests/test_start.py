"""What `ffleet run` imports before its first FFmpeg starts: only what the request uses (issue 15)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, write_json
from ffleet.demo import make_tone

# Runs `ffleet run` in a fresh interpreter and prints the modules loaded when the first FFmpeg was
# about to start, and at the end of the run.
_PROBE = """
import json, sys
from ffleet import runner, worker
seen = {}
real = worker.run_process
def first(*args, **kw):
    seen.setdefault("first_ffmpeg", sorted(sys.modules))
    return real(*args, **kw)
worker.run_process = first
real_items = runner.run_items
def items(*args, **kw):
    seen.setdefault("pool", sorted(sys.modules))
    return real_items(*args, **kw)
runner.run_items = items
from ffleet.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, **seen, "end": sorted(sys.modules)}), file=sys.stderr)
"""

# Needed by a run that reads S3, draws a progress bar or measures quality; a plain local run pays
# for each of them before its first FFmpeg if it imports them. pydantic (50-90 ms to import, more to
# build models) validates only the summarize Lambda's event: the request is read without it. The
# command line builds only the parser of the command given, so `plan`'s defaults are not imported.
NOT_AT_START = ("boto3", "botocore", "rich", "ffleet.audio_quality", "ffleet.report",
                "ffleet.summarize", "ffleet.batch_worker", "sqlite3", "s3transfer", "pydantic", "pydantic_core",
                "ffleet.plan", "uuid", "platform", "datetime")


def _modules(tmp_path, request: dict, *flags: str) -> dict:
    (tmp_path / "in").mkdir(exist_ok=True)
    make_tone(tmp_path / "in" / "a.wav", 0.5)
    path = write_json(tmp_path / "job.json", request)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, "run", str(path), "--json", *flags],
                          capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr[-2000:]
    assert report["first_ffmpeg"], "no FFmpeg was started"
    return report


def _request(tmp_path, **extra) -> dict:
    return {"name": "imports", "input": {"path": str(tmp_path / "in")},
            "output": {"path": str(tmp_path / "out"), "file_options": "-ac 1", "overwrite": True},
            "results": {"path": str(tmp_path / "results")}, **extra}


def test_a_local_run_imports_no_aws_progress_or_quality_code_before_its_first_ffmpeg(tmp_path):
    report = _modules(tmp_path, _request(tmp_path), "--no-progress")
    loaded = set(report["first_ffmpeg"])
    assert "ffleet.worker" in loaded and "ffleet.request" in loaded  # the snapshot is of a real run
    assert not loaded & set(NOT_AT_START), sorted(loaded & set(NOT_AT_START))
    # nor at all, for a local run without a progress bar
    assert not {"boto3", "botocore", "rich", "pydantic"} & set(report["end"])


def test_the_progress_bar_is_drawn_once_the_first_files_are_in_the_pool(tmp_path):
    # rich costs ~75 ms of CPU to import: with the bar on (the default), that runs beside the first
    # FFmpegs. (Whether the first FFmpeg or the import comes first is up to the threads.)
    report = _modules(tmp_path, _request(tmp_path))
    assert "rich" not in report["pool"] and "ffleet.worker" in report["pool"]
    assert "rich" in report["end"]


@pytest.mark.parametrize("extra,flags,needed", [
    ({"quality": {"measure": True}}, ("--no-progress",), "ffleet.audio_quality"),
    ({}, (), "rich"),
])
def test_what_a_request_does_use_is_imported(tmp_path, extra, flags, needed):
    report = _modules(tmp_path, _request(tmp_path, **extra), *flags)
    assert needed in report["end"]
