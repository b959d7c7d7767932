"""`ffleet validate` and `ffleet run` as a user runs them: exit codes, summaries, re-runs, S3 and folders."""
import json
from pathlib import Path

import pytest

from conftest import EVENTS, run_cli, write_json
from ffleet.demo import demo_request, make_corpus

SUMMARY_KEYS = {"files", "bytes", "audio_seconds", "wall_seconds", "failures"}


def test_validate_prints_normalised_request():
    p = run_cli("validate", str(EVENTS / "original-request.json"))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["input"]["file_options"] is None and out["global"]["options"] is None
    assert out["processing"]["tolerated_failure_percent"] == 0


@pytest.mark.parametrize("content,field", [
    ('{"name": "x", "input": ', "(request)"),
    ('{"name": "x", "input": {"s3_bucket": "b"}, "output": {"s3_bucket": "c", "file_options": "-i x"}}', "output.file_options"),
    ('{"name": "x", "compute": "gpu", "input": {"s3_bucket": "b"}, "output": {"s3_bucket": "c"}}', "compute"),
])
def test_validate_invalid_exits_2_naming_the_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(content)
    p = run_cli("validate", str(path))
    assert p.returncode == 2
    assert field in p.stderr and "Traceback" not in p.stderr


def test_missing_request_file(tmp_path):
    p = run_cli("run", str(tmp_path / "nope.json"))
    assert p.returncode == 2 and "cannot read" in p.stderr and "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder / "input", count=10, seconds=(1, 2))
    return folder / "input"


def test_demo_measures_the_written_audio_and_finds_its_clipped_tone(tmp_path, corpus):
    req = write_json(tmp_path / "job.json", demo_request(corpus, tmp_path / "out", tolerated_percent=30, measure=True))
    code, s = run_json(req)
    assert code == 0
    assert s["dataset"]["measured_at"] == {"output": 10}
    assert s["dataset"]["flagged"]["clipped"] == 1  # the 8th tone is driven to 1.5x full scale


def run_json(request_path, *extra):
    p = run_cli("run", str(request_path), "--json", "--no-progress", *extra)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def test_run_local_folders_tolerance_and_rerun(tmp_path, corpus):
    out = tmp_path / "out"
    req = write_json(tmp_path / "job.json", demo_request(corpus, out, tolerated_percent=30))
    code, s = run_json(req)
    assert SUMMARY_KEYS <= set(s)
    assert s["files"] == {"total": 13, "succeeded": 10, "failed": 3, "skipped": 0, "rejected": 0, "not_done": 0}
    assert code == 0  # 3 of 13 failed = 23% <= 30% tolerated
    assert {f["reason"] for f in s["failures"]} == {"empty_input", "corrupt_input", "no_audio_stream"}
    assert s["bytes"]["input"] > 0 and s["bytes"]["output"] > 0
    assert 10 < s["audio_seconds"]["input"] < 30
    outputs = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(outputs) == 10 and all(p.suffix == ".flac" for p in outputs)
    # results are written beside the outputs: records, summary, re-drive manifest
    results = Path(s["run"]["results"])
    assert results.parent.parent == out.parent
    assert len((results / "records.jsonl").read_text().splitlines()) == 13
    assert len((results / "failed-files.jsonl").read_text().splitlines()) == 3
    assert json.loads((results / "summary.json").read_text())["files"] == s["files"]

    # a re-run skips everything and leaves the outputs untouched
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in outputs}
    code, s2 = run_json(req)
    assert s2["files"]["skipped"] == 10 and s2["files"]["succeeded"] == 0 and s2["files"]["failed"] == 3
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in outputs} == before

    # the same run with no tolerance exits 1
    strict = write_json(tmp_path / "strict.json", demo_request(corpus, out, tolerated_percent=0))
    code, s3 = run_json(strict)
    assert code == 1 and s3["within_tolerance"] is False


def test_rerun_from_failed_manifest(tmp_path, corpus):
    """The re-drive manifest of one run is the input of the next: only the failures are tried again."""
    out = tmp_path / "out"
    req = write_json(tmp_path / "job.json", demo_request(corpus, out, tolerated_percent=50))
    _, s = run_json(req)
    failed = Path(s["run"]["results"]) / "failed-files.jsonl"
    redo = demo_request(corpus, out, tolerated_percent=100)
    redo["input"]["manifest"] = str(failed)
    _, s2 = run_json(write_json(tmp_path / "redo.json", redo))
    assert s2["files"]["total"] == 3 and s2["files"]["failed"] == 3


def test_human_summary_and_progress(tmp_path, corpus):
    req = write_json(tmp_path / "job.json", demo_request(corpus, tmp_path / "out", tolerated_percent=30))
    p = run_cli("run", str(req))
    assert p.returncode == 0, p.stderr
    assert "10 succeeded, 3 failed" in p.stdout and "corrupt_input" in p.stdout
    assert "13/13" in p.stderr  # the progress bar ends complete


def test_run_against_s3_endpoint(tmp_path, s3_endpoint, tone_cache):
    s3 = s3_endpoint
    s3.create_bucket(Bucket="media-in")
    s3.create_bucket(Bucket="media-out")
    keys = ["assets/a b+c.mp3", "assets/ünï/音声 1.wav", "assets/deep/er/x.opus", "assets/notes.txt", "assets/empty.m4a"]
    for k in keys[:3]:
        s3.upload_file(str(tone_cache("." + k.rsplit(".", 1)[1], 1.5)), "media-in", k)
    s3.put_object(Bucket="media-in", Key="assets/notes.txt", Body=b"hello")
    s3.put_object(Bucket="media-in", Key="assets/empty.m4a", Body=b"")
    s3.put_object(Bucket="media-in", Key="assets/folder/", Body=b"")  # console folder marker
    req = write_json(tmp_path / "job.json", {
        "name": "s3-job", "compute": "intel",
        "input": {"s3_bucket": "media-in", "s3_prefix": "assets/", "file_options": "null",
                  "extensions": [".mp3", ".wav", ".opus", ".m4a"]},
        "output": {"s3_bucket": "media-out", "s3_prefix": "output/", "s3_suffix": "", "file_options": "-ac 1 -ar 16000"},
        "global": {"options": "null"}, "processing": {"tolerated_failure_percent": 25},
    })
    code, s = run_json(req)
    assert code == 0
    assert s["files"]["total"] == 4 and s["files"]["succeeded"] == 3 and s["failures"][0]["key"] == "assets/empty.m4a"
    out_keys = {o["Key"] for o in s3.list_objects_v2(Bucket="media-out")["Contents"]}
    for k in keys[:3]:
        assert "output/" + k in out_keys  # the original mapping, exotic keys intact
    results = [k for k in out_keys if k.startswith("ffleet-results/s3-job/")]
    assert {k.rsplit("/", 1)[1] for k in results} == {"records.jsonl", "summary.json", "failed-files.jsonl", "report.html"}
    code, s2 = run_json(req)
    assert s2["files"]["skipped"] == 3


def test_progress_lists_the_input_once(tmp_path, corpus, monkeypatch):
    """The progress bar's total comes from the one listing the run processes (a spool), not a second pass."""
    from ffleet import runner
    from ffleet.request import parse_request

    calls, seen = [], []
    real = runner.list_items
    monkeypatch.setattr(runner, "list_items", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    outcome = runner.run_request(parse_request(demo_request(corpus, tmp_path / "out", tolerated_percent=30)),
                                 progress=lambda total, res: seen.append((total, res)), workers=2)
    assert len(calls) == 1
    assert seen[0] == (13, None) and len(seen) == 14 and outcome.summary["files"]["total"] == 13
