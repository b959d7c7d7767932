"""The summarizer: ResultWriter files + per-file records -> summary.json, failed-files.jsonl, EMF metrics."""
from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import EVENTS, REPO, run_cli, write_json
from ffleet.inventory import read_manifest
from ffleet.results import ItemResult
from ffleet.summarize import (
    SummarizeError, iter_json_values, parse_event, summarize_cloud,
)

MAP_RUN = "4977ded7-b097-3bee-81e1-7863c5660f29"
SM_ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:ffleet-pipeline/Process files"


# --- fixtures in ResultWriter's documented format ------------------------------------------------
def record(key: str, status: str = "succeeded", reason: str | None = None, seconds: float = 30.0) -> dict:
    r = ItemResult(key=key, status=status, reason=reason, output_key="out/" + key)
    if status in ("succeeded", "failed"):
        r.bytes_in, r.duration_in, r.cpu_seconds = 1_000_000, seconds, 0.25
    if status == "succeeded":
        r.bytes_out, r.duration_out = 400_000, seconds
    if status == "failed":
        r.detail = "Invalid data found when processing input"
    return json.loads(r.to_json())


def job_detail(batch_uri: str, attempts: int, status: str) -> dict:
    """What batch:submitJob.sync returns (Output) or puts in Cause when the job fails."""
    return {
        "JobName": "ffleet-batch", "JobId": "b1f0c0de", "Status": status,
        "Attempts": [{"Container": {"ExitCode": 0 if status == "SUCCEEDED" and i == attempts - 1 else 1}}
                     for i in range(attempts)],
        "Container": {"Environment": [{"Name": "FFLEET_BATCH_URI", "Value": batch_uri}]},
    }


class RunFixture:
    """Writes one cloud run's results (batches/, records/, ResultWriter files) through `put`."""

    def __init__(self, put, bucket: str = "results", prefix: str = "runs/exec-1/", map_run: str = MAP_RUN):
        self.put, self.bucket, self.prefix, self.map_run = put, bucket, prefix, map_run
        self.groups: dict[str, list[dict]] = {"SUCCEEDED": [], "FAILED": [], "PENDING": []}
        self.minute = 0

    def batch(self, batch_id: str, keys: list[str], status: str = "SUCCEEDED", records: list[dict] | None = None,
              attempts: int = 1, inline_items: bool = True, reveal_id: bool = True, error: str = "States.TaskFailed",
              request: dict | None = None):
        items = [{"Key": k, "Size": 1_000_000} for k in keys]
        batch_uri = f"s3://{self.bucket}/{self.prefix}batches/{batch_id}.json"
        batch_input = {"request": request or {"name": "t"}, "results_prefix": f"s3://{self.bucket}/{self.prefix}"}
        if reveal_id:
            self.put(f"{self.prefix}batches/{batch_id}.json",
                     json.dumps({"BatchInput": {**batch_input, "batch_id": batch_id}, "Items": items}).encode())
        if records is not None:
            self.put(f"{self.prefix}records/{batch_id}.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
        child_input = {"BatchInput": batch_input, **({"Items": items} if inline_items else {})}
        self.minute += 1
        entry = {
            "ExecutionArn": f"{SM_ARN.replace('stateMachine', 'execution')}:{batch_id}",
            "Input": json.dumps(child_input), "InputDetails": {"Included": True},
            "Name": batch_id, "RedriveCount": 0, "RedriveStatus": "NOT_REDRIVABLE",
            "StartDate": f"2026-01-01T00:{self.minute:02d}:00.000Z", "StateMachineArn": SM_ARN,
            "Status": status, "StopDate": f"2026-01-01T00:{self.minute:02d}:30.000Z",
        }
        detail = job_detail(batch_uri if reveal_id else "s3://elsewhere/x", attempts, "SUCCEEDED" if status == "SUCCEEDED" else "FAILED")
        if status == "SUCCEEDED":
            entry["Output"], entry["OutputDetails"] = json.dumps(detail), {"Included": True}
        elif status == "FAILED":
            entry["Error"] = error
            entry["Cause"] = json.dumps(detail) if reveal_id else "Essential container in task exited"
        self.groups["PENDING" if status in ("PENDING", "RUNNING") else status].append(entry)
        return self

    def finish(self, jsonl: bool = False, per_file: int = 1000) -> str:
        """Write the ResultWriter files and manifest.json; return the manifest's key."""
        base = f"{self.prefix}{self.map_run}/"
        result_files: dict[str, list] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        for group, entries in self.groups.items():
            for n, start in enumerate(range(0, len(entries), per_file)):
                chunk = entries[start:start + per_file]
                body = ("".join(json.dumps(e) + "\n" for e in chunk) if jsonl else json.dumps(chunk)).encode()
                key = f"{base}{group}_{n}.json"
                self.put(key, body)
                result_files[group].append({"Key": key, "Size": len(body)})
        manifest = {"DestinationBucket": self.bucket, "MapRunArn": f"arn:aws:states:us-east-1:123456789012:mapRun:ffleet-pipeline/Process files:{self.map_run}",
                    "ResultFiles": result_files}
        self.put(base + "manifest.json", json.dumps(manifest).encode())
        return base + "manifest.json"


def local_put(root: Path):
    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return put


@pytest.fixture
def cloud_run(tmp_path):
    """A run laid out as in S3, in a local folder: (fixture, summarize())."""
    root = tmp_path / "bucket"
    run = RunFixture(local_put(root))

    def summarize(**kw):
        manifest = run.finish(**{k: kw.pop(k) for k in ("jsonl", "per_file") if k in kw})
        return summarize_cloud(str(root / run.prefix), str(root / manifest), **kw), root / run.prefix

    return run, summarize


def redrive_keys(path: Path) -> list[str]:
    return sorted(o.key for o in read_manifest(str(path)))


# --- behaviour -----------------------------------------------------------------------------------
def test_batches_failures_and_retries(cloud_run):
    run, summarize = cloud_run
    run.batch("b-ok", ["a/1.wav", "a/2.wav"], records=[record("a/1.wav"), record("a/2.wav")])
    run.batch("b-bad-file", ["b/1.wav", "b/2.wav", "b/3.wav"], attempts=2,
              records=[record("b/1.wav"), record("b/2.wav", "failed", "corrupt_input"), record("b/3.wav", "skipped")])
    # The Batch job died after reporting one of its three files, three attempts in all.
    run.batch("b-died", ["c/1.wav", "c/2.wav", "c/3.wav"], status="FAILED", attempts=3,
              records=[record("c/1.wav")])
    result, folder = summarize(tolerated_failure_percent=50)
    s = result.summary

    assert s["files"] == {"total": 8, "succeeded": 4, "failed": 3, "skipped": 1, "rejected": 0, "not_done": 0}
    assert s["failures_by_reason"] == {"batch_job_failed": 2, "corrupt_input": 1}
    assert s["batches"] == {"jobs": 3, "succeeded": 2, "failed": 1, "pending": 0, "failed_percent": 33.3333,
                            "retries": 3, "jobs_with_known_attempts": 3}
    assert s["bytes"] == {"input": 5_000_000, "output": 1_600_000}
    assert s["audio_seconds"]["output"] == 120.0
    assert s["wall_seconds"] == 150.0  # first StartDate to last StopDate
    assert s["within_tolerance"] is True
    died = [f for f in s["failures"] if f["reason"] == "batch_job_failed"]
    assert {f["key"] for f in died} == {"c/2.wav", "c/3.wav"}
    assert "States.TaskFailed" in died[0]["detail"] and "b-died" in died[0]["detail"]

    written = json.loads((folder / "summary.json").read_text())
    assert written == s
    assert redrive_keys(folder / "failed-files.jsonl") == ["b/2.wav", "c/2.wav", "c/3.wav"]


def test_empty_run(cloud_run):
    run, summarize = cloud_run
    result, folder = summarize()
    s = result.summary
    assert s["files"]["total"] == 0 and s["failed_percent"] == 0 and s["within_tolerance"] is True
    assert "batches" not in s  # no Batch job ran
    assert (folder / "failed-files.jsonl").read_text() == ""
    assert redrive_keys(folder / "failed-files.jsonl") == []


def test_only_failures_items_from_batch_objects(cloud_run):
    run, summarize = cloud_run
    # Items not inline in the child's input: the summarizer reads batches/<id>.json for them.
    run.batch("b1", ["x/1.wav", "x/2.wav"], status="FAILED", inline_items=False, attempts=1)
    run.batch("b2", ["y/1.wav"], status="FAILED", inline_items=False, error="Batch.AWSBatchException")
    result, folder = summarize(tolerated_failure_percent=10)
    s = result.summary
    assert s["files"]["total"] == 3 and s["files"]["failed"] == 3 and s["files"]["succeeded"] == 0
    assert s["failed_percent"] == 100 and s["within_tolerance"] is False
    assert s["failures_by_reason"] == {"batch_job_failed": 3}
    assert s["batches"]["failed"] == 2 and s["batches"]["jobs"] == 2
    assert redrive_keys(folder / "failed-files.jsonl") == ["x/1.wav", "x/2.wav", "y/1.wav"]


def test_failed_batch_without_id_matched_by_key(cloud_run):
    """A failed child whose id nothing reveals: its files are matched by key against every record,
    so a file it did report is not counted twice."""
    run, summarize = cloud_run
    run.batch("hidden", ["h/1.wav", "h/2.wav", "h/3.wav"], status="FAILED", reveal_id=False)
    # Its worker did write a records file, which the summarizer finds only by listing records/.
    run.put(f"{run.prefix}records/hidden.jsonl", (json.dumps(record("h/2.wav")) + "\n").encode())
    result, folder = summarize()
    s = result.summary
    assert s["files"]["total"] == 3 and s["files"]["succeeded"] == 1 and s["files"]["failed"] == 2
    assert redrive_keys(folder / "failed-files.jsonl") == ["h/1.wav", "h/3.wav"]
    assert s["run"]["record_files"] == 1


def test_batch_objects_nobody_reported(cloud_run):
    """ResultWriter lists nothing (as under moto, which writes only manifest.json): batch objects
    with no records are files handed to a job and never reported; a failed child that hides its
    id but whose batch object exists is matched by key, and counted once, as batch_job_failed."""
    run, summarize = cloud_run
    run.batch("ran", ["r/1.wav"], records=[record("r/1.wav")])
    run.batch("vanished", ["v/1.wav", "v/2.wav"])
    run.batch("hid", ["h/1.wav", "h/2.wav"], status="FAILED", records=[record("h/1.wav")])
    run.groups["SUCCEEDED"].clear()  # ResultWriter knows only the failed child ...
    hid = run.groups["FAILED"][0]
    hid["Cause"] = "Essential container in task exited"  # ... and not its batch id
    # the child's own batch object exists under batches/
    run.put(f"{run.prefix}batches/hid.json", json.dumps({"BatchInput": {"batch_id": "hid"}, "Items": [
        {"Key": "h/1.wav"}, {"Key": "h/2.wav"}]}).encode())
    result, folder = summarize()
    s = result.summary
    assert s["files"] == {"total": 5, "succeeded": 2, "failed": 1, "skipped": 0, "rejected": 0, "not_done": 2}
    assert s["failures_by_reason"] == {"interrupted": 2, "batch_job_failed": 1}
    assert {f["key"]: f["reason"] for f in s["failures"]} == {
        "v/1.wav": "interrupted", "v/2.wav": "interrupted", "h/2.wav": "batch_job_failed"}
    assert redrive_keys(folder / "failed-files.jsonl") == ["h/2.wav", "v/1.wav", "v/2.wav"]


def test_missing_result_writer_manifest_still_summarizes(tmp_path):
    root = tmp_path / "bucket"
    run = RunFixture(local_put(root))
    run.batch("b1", ["a.wav", "b.wav"], records=[record("a.wav")])
    s = summarize_cloud(str(root / run.prefix), str(root / run.prefix / MAP_RUN / "manifest.json")).summary
    assert s["run"]["result_writer_missing"] is True and "batches" not in s
    assert s["files"]["succeeded"] == 1 and s["files"]["not_done"] == 1  # b.wav: handed out, never reported
    assert redrive_keys(root / run.prefix / "failed-files.jsonl") == ["b.wav"]


def test_pending_batches_are_not_done_and_succeeded_batch_without_records(cloud_run):
    run, summarize = cloud_run
    run.batch("p1", ["p/1.wav", "p/2.wav"], status="PENDING", records=[record("p/1.wav")])
    run.batch("lost", ["l/1.wav"], inline_items=False)  # succeeded, but no records file at all
    result, folder = summarize(tolerated_failure_percent=100)
    s = result.summary
    assert s["files"]["not_done"] == 1 and s["files"]["failed"] == 1 and s["files"]["succeeded"] == 1
    assert s["failures_by_reason"] == {"interrupted": 1, "internal_error": 1}
    assert s["batches"]["pending"] == 1
    assert s["within_tolerance"] is False  # files left undone never count as within tolerance
    assert redrive_keys(folder / "failed-files.jsonl") == ["l/1.wav", "p/2.wav"]


# What the Distributed Map hands a job, and what its worker makes of it: a folder marker, a file of
# another extension and a repeated key are skipped without a record (batch_worker.parse_batch).
LISTED_WITH_SKIPS = ["w/", "w/1.wav", "w/readme.txt", "w/1.wav", "w/2.WAV", "w/sub/"]
PROCESSED = ["w/1.wav", "w/2.WAV"]


@pytest.mark.parametrize("how", ["failed_inline_items", "failed_items_in_batch_object", "failed_id_hidden",
                                 "result_writer_missing", "succeeded_without_records"])
def test_keys_the_worker_skips_are_not_counted_for_an_unreported_batch(cloud_run, tmp_path, how):
    """A batch that did not report its files has them counted as failed or not done: only the files
    its worker would have processed, under the request's extensions, each once."""
    run, summarize = cloud_run
    # "wav": normalised to ".wav", as the worker does
    request = {"name": "t", "input": {"s3_bucket": "in", "extensions": ["wav"]}, "output": {"s3_bucket": "out"}}
    kw = {"status": "FAILED", "request": request}
    if how == "failed_items_in_batch_object":
        kw["inline_items"] = False
    elif how == "failed_id_hidden":
        kw["reveal_id"] = False
    elif how == "result_writer_missing":
        kw = {"request": request}
    elif how == "succeeded_without_records":
        kw = {"request": request, "inline_items": False}
    run.batch("b1", LISTED_WITH_SKIPS, **kw)
    if how == "result_writer_missing":
        root = tmp_path / "bucket"
        s = summarize_cloud(str(root / run.prefix), str(root / run.prefix / MAP_RUN / "manifest.json")).summary
        folder = root / run.prefix
    else:
        result, folder = summarize(tolerated_failure_percent=100)
        s = result.summary
    assert s["files"]["total"] == len(PROCESSED)
    assert sorted(f["key"] for f in s["failures"]) == PROCESSED
    assert redrive_keys(folder / "failed-files.jsonl") == PROCESSED


@pytest.mark.parametrize("request_", [None, {"name": "t", "input": {"extensions": [".wav"]}}],
                         ids=["no_extensions", "request_no_longer_parses"])
def test_without_extensions_only_markers_and_repeats_are_left_out(cloud_run, request_):
    """With no extension filter to apply, every file is counted: none may be left out of the re-drive."""
    run, summarize = cloud_run
    run.batch("b1", LISTED_WITH_SKIPS, status="FAILED", inline_items=False, request=request_)
    result, folder = summarize()
    assert redrive_keys(folder / "failed-files.jsonl") == ["w/1.wav", "w/2.WAV", "w/readme.txt"]


def test_caught_batch_failure_in_succeeded_file(tmp_path):
    """A Catch that lets the map go on leaves {"Error", "Cause"} in a SUCCEEDED child's Output."""
    root = tmp_path / "bucket"
    run = RunFixture(local_put(root))
    run.batch("c1", ["k/1.wav", "k/2.wav"], records=[])
    entry = run.groups["SUCCEEDED"][0]
    entry["Output"] = json.dumps({"BatchInput": {}, "error": {"Error": "States.TaskFailed",
                                  "Cause": json.dumps(job_detail(f"s3://results/{run.prefix}batches/c1.json", 2, "FAILED"))}})
    manifest = run.finish()
    s = summarize_cloud(str(root / run.prefix), str(root / manifest)).summary
    assert s["batches"]["failed"] == 1 and s["batches"]["retries"] == 1
    assert s["failures_by_reason"] == {"batch_job_failed": 2}


@pytest.mark.parametrize("jsonl", [False, True])
def test_json_and_jsonl_result_files_agree(cloud_run, jsonl):
    run, summarize = cloud_run
    for n in range(7):
        run.batch(f"b{n}", [f"k{n}.wav"], status="FAILED" if n % 3 == 0 else "SUCCEEDED",
                  records=[record(f"k{n}.wav")] if n % 3 else None)
    s = summarize(jsonl=jsonl, per_file=3)[0].summary  # 3 SUCCEEDED/FAILED files, split like ResultWriter does
    assert s["batches"]["jobs"] == 7 and s["batches"]["failed"] == 3
    assert s["files"]["succeeded"] == 4 and s["files"]["failed"] == 3


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 16])
def test_iter_json_values_streams_any_chunking(chunk):
    values = [{"Input": json.dumps({"Items": [{"Key": f"é{i}"}] * i}), "n": i} for i in range(50)] + [3.25, "x", None]
    for text in (json.dumps(values, indent=1), "\n".join(json.dumps(v) for v in values) + "\n"):
        data = text.encode("utf-8")
        chunks = (data[i:i + chunk] for i in range(0, len(data), chunk))
        assert list(iter_json_values(chunks, "t")) == values


def test_malformed_inputs_name_the_file(tmp_path):
    with pytest.raises(SummarizeError, match=r"x\.json.*not JSON"):
        list(iter_json_values([b'[{"a": 1}, {"b": '], "x.json"))
    with pytest.raises(SummarizeError, match="not closed"):
        list(iter_json_values([b'[{"a": 1}'], "x.json"))
    write_json(tmp_path / "run" / MAP_RUN / "manifest.json", {"DestinationBucket": "b"})
    with pytest.raises(SummarizeError, match=r"manifest\.json: no 'ResultFiles'"):
        summarize_cloud(str(tmp_path / "run"), str(tmp_path / "run" / MAP_RUN / "manifest.json"), write=False)


def test_event_validation_names_the_field():
    with pytest.raises(SummarizeError, match="results_prefix"):
        parse_event({"execution_name": "e", "results_prefix": "/not/s3"})
    with pytest.raises(SummarizeError, match="execution_name"):
        parse_event({"results_prefix": "s3://b/p/"})
    event = json.loads((EVENTS / "summarize.json").read_text())
    parsed = parse_event(event)
    assert parsed.map_result.result_writer_details.key.endswith("/manifest.json")
    assert parsed.results_prefix.startswith("s3://") and parsed.results_prefix.endswith("/")


# --- memory bound --------------------------------------------------------------------------------
def _synthesize_run(root: Path, batches: int, per_batch: int) -> tuple[RunFixture, str, int, int]:
    """A finished run of batches x per_batch records, ~1% failed; returns (run, manifest, failed, bytes)."""
    run = RunFixture(local_put(root))
    rng = random.Random(5)
    line = {s: json.dumps(record("K", s, "corrupt_input" if s == "failed" else None)) for s in ("succeeded", "failed")}
    failed = data_bytes = 0
    for b in range(batches):
        keys = [f"corpus/{b:04d}/clip-{i:05d}.wav" for i in range(per_batch)]
        statuses = ["failed" if rng.random() < 0.01 else "succeeded" for _ in keys]
        failed += statuses.count("failed")
        body = "".join(line[s].replace('"K"', json.dumps(k)).replace('"out/K"', json.dumps("out/" + k)) + "\n"
                       for k, s in zip(keys, statuses))
        data_bytes += len(body)
        run.put(f"{run.prefix}records/b{b:04d}.jsonl", body.encode())
        run.batch(f"b{b:04d}", keys, records=None)
    return run, run.finish(per_file=100), failed, data_bytes


def _summarize_traced(root: Path, run: RunFixture, manifest: str) -> tuple[dict, int]:
    tracemalloc.start()
    try:
        result = summarize_cloud(str(root / run.prefix), str(root / manifest))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result.summary, peak


MEMORY_BOUND = 8_000_000  # bytes of Python allocations while summarizing, whatever the run's size


def _check_large_run(root: Path, batches: int, per_batch: int) -> int:
    run, manifest, expected_failed, data_bytes = _synthesize_run(root, batches, per_batch)
    s, peak = _summarize_traced(root, run, manifest)
    assert s["files"]["total"] == batches * per_batch
    assert s["files"]["failed"] == expected_failed and s["batches"]["jobs"] == batches
    assert len(s["failures"]) == 100 and s["failures_truncated"] is True
    assert len(redrive_keys(root / run.prefix / "failed-files.jsonl")) == expected_failed
    # Holding the records would take several times data_bytes as Python objects; the summarizer
    # holds one ResultWriter entry and one batch at a time.
    assert peak < data_bytes / 4, f"peak {peak / 1e6:.1f} MB for {data_bytes / 1e6:.1f} MB of records"
    assert peak < MEMORY_BOUND, f"peak {peak / 1e6:.1f} MB for {batches * per_batch} records"
    return peak


def test_run_summarized_in_bounded_memory(tmp_path):
    _check_large_run(tmp_path, 80, 500)  # 40,000 records, 9.4 MB of JSON


@pytest.mark.slow
def test_200k_records_summarized_in_the_same_memory(tmp_path):
    """200,000 records in 400 batches (47 MB of JSON): the peak of Python allocations stays under
    the same bound, and does not grow with the run (compared with 20,000 records)."""
    small_peak = _check_large_run(tmp_path / "small", 40, 500)
    peak = _check_large_run(tmp_path / "large", 400, 500)
    assert peak < 1.5 * small_peak + 1_000_000, f"peak grew with the run: {small_peak / 1e6:.2f} -> {peak / 1e6:.2f} MB"


# --- the Lambda handler against moto -------------------------------------------------------------
def _lambda_context():
    return SimpleNamespace(function_name="ffleet-summarize", memory_limit_in_mb=512, aws_request_id="req-1",
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:ffleet-summarize")


def test_handler_with_sample_event_writes_summary_and_emits_emf(monkeypatch, capsys):
    import importlib.util
    import sys

    import boto3
    from moto import mock_aws

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ffleet-summarize")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ffleet-test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    event = json.loads((EVENTS / "summarize.json").read_text())
    bucket = event["map_result"]["ResultWriterDetails"]["Bucket"]
    prefix = event["results_prefix"].split(bucket + "/", 1)[1]
    map_run = event["map_result"]["ResultWriterDetails"]["Key"].split("/")[-2]

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        run = RunFixture(lambda k, d: s3.put_object(Bucket=bucket, Key=k, Body=d), bucket=bucket, prefix=prefix,
                         map_run=map_run)
        run.batch("b1", ["m/1.wav", "m/2.wav"], records=[record("m/1.wav", seconds=1800), record("m/2.wav", "failed", "corrupt_input")])
        run.batch("b2", ["n/1.wav", "n/2.wav"], status="FAILED", attempts=2, records=[record("n/1.wav", "skipped")])
        assert run.finish() == event["map_result"]["ResultWriterDetails"]["Key"]

        spec = importlib.util.spec_from_file_location("summarize_app", REPO / "functions/summarize/app.py")
        app = importlib.util.module_from_spec(spec)
        sys.modules["summarize_app"] = app
        spec.loader.exec_module(app)
        out = app.handler(event, _lambda_context())

        summary = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "summary.json")["Body"].read())
        failed = s3.get_object(Bucket=bucket, Key=prefix + "failed-files.jsonl")["Body"].read().decode()
        report = s3.get_object(Bucket=bucket, Key=prefix + "report.html")
        assert report["ContentType"].startswith("text/html")
        assert b"podcast-archive" in report["Body"].read()  # the dataset card page, as a local run writes
        assert sorted(o.key for o in read_manifest(f"s3://{bucket}/{prefix}failed-files.jsonl", s3)) == ["m/2.wav", "n/2.wav"]
    assert summary["run"]["name"] == "podcast-archive" and summary["tolerated_failure_percent"] == 5
    assert summary["files"]["total"] == 4 and summary["files"]["failed"] == 2
    assert len(failed.splitlines()) == 2
    assert out["files"] == summary["files"] and out["within_tolerance"] is False
    assert out["summary"] == f"s3://{bucket}/{prefix}summary.json"
    assert len(json.dumps(out)) < 4096  # a short summary for the execution's output

    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{") and '"_aws"' in line]
    values: dict[tuple, float] = {}
    for blob in emf:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "ffleet-test"
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]  # Powertools writes a list of the values added
                value = value if isinstance(value, list) else [value]
                assert len(value) == 1, (metric["Name"], value)
                values[(metric["Name"], blob.get("Reason"))] = value[0]
            assert "service" in directive["Dimensions"][0]
    assert values[("FilesSucceeded", None)] == 1
    assert values[("FilesFailed", None)] == 2
    assert values[("FilesSkipped", None)] == 1
    assert values[("AudioHoursProcessed", None)] == 0.5
    assert values[("BytesIn", None)] == 2_000_000 and values[("BytesOut", None)] == 400_000
    assert values[("FailedBatches", None)] == 1
    assert values[("FilesFailedByReason", "corrupt_input")] == 1
    assert values[("FilesFailedByReason", "batch_job_failed")] == 1


# --- the CLI -------------------------------------------------------------------------------------
def _flatten_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        keys.add(prefix + k)
        # maps keyed by data (reasons, codecs, sample rates) are not part of the schema
        if isinstance(v, dict) and k not in ("failures_by_reason", "run", "codecs", "sample_rate_hz", "rejected_by_reason"):
            keys |= _flatten_keys(v, prefix + k + ".")
    return keys


def test_cli_summarize_local_run_matches_run(tmp_path, tone_cache):
    import shutil

    from ffleet.demo import demo_request

    inputs = tmp_path / "in"
    for i, (ext, secs) in enumerate([(".wav", 1.0), (".mp3", 1.5), (".flac", 1.0)]):
        (inputs / "s").mkdir(parents=True, exist_ok=True)
        shutil.copy(tone_cache(ext, secs), inputs / "s" / f"t{i}{ext}")
    (inputs / "bad.wav").write_bytes(b"not audio" * 100)
    request = write_json(tmp_path / "req.json", demo_request(inputs, tmp_path / "out", tolerated_percent=30))
    ran = run_cli("run", str(request), "--json", "--no-progress", "--workers", "2")
    assert ran.returncode == 0, ran.stderr
    local = json.loads(ran.stdout)
    folder = local["run"]["results"]
    assert (Path(folder) / "records.jsonl").is_file()

    got = run_cli("summarize", folder, "--json")
    assert got.returncode == 0, got.stderr
    again = json.loads(got.stdout)
    for field in ("files", "bytes", "audio_seconds", "failures_by_reason", "failed_percent", "within_tolerance", "run"):
        assert again[field] == local[field], field
    assert local["files"]["failed"] == 1 and local["files"]["succeeded"] == 3

    parent = run_cli("summarize", str(Path(folder).parent))  # the results root, not one run
    assert parent.returncode == 2 and Path(folder).name in parent.stderr

    human = run_cli("summarize", folder)
    assert human.returncode == 0 and "3 succeeded, 1 failed" in human.stdout and "bad.wav" in human.stdout

    # strict tolerance: exit 1, and the summary says so
    strict = run_cli("summarize", folder, "--tolerated-failure-percent", "0")
    assert strict.returncode == 1 and "OVER TOLERANCE" in strict.stdout

    # the cloud summary is a superset of the local one, but for what only the local process knows:
    # the sandbox it ran FFmpeg in (each Batch job logs its own in its batch_start line)
    local = {k: v for k, v in local.items() if k != "sandbox"}
    cloud_root = tmp_path / "cloud"
    run = RunFixture(local_put(cloud_root))
    run.batch("b", ["k.wav"], records=[record("k.wav")])
    cloud = summarize_cloud(str(cloud_root / run.prefix), str(cloud_root / run.finish()), write=False).summary
    assert _flatten_keys(local) <= _flatten_keys(cloud)


def test_cli_summarize_s3_manifest(s3_endpoint, tmp_path):
    s3 = s3_endpoint
    s3.create_bucket(Bucket="results")
    run = RunFixture(lambda k, d: s3.put_object(Bucket="results", Key=k, Body=d))
    run.batch("b1", ["a.wav", "b.wav"], records=[record("a.wav"), record("b.wav", "failed", "timeout")])
    run.batch("b2", ["c.wav"], status="FAILED", inline_items=False)
    manifest = run.finish()

    got = run_cli("summarize", f"s3://results/{manifest}", "--json", "--write")
    assert got.returncode == 1, got.stderr  # 2 of 3 failed, tolerance 0
    s = json.loads(got.stdout)
    assert s["files"]["failed"] == 2 and s["batches"]["failed"] == 1
    assert s["run"]["results"] == f"s3://results/{run.prefix}"
    keys = sorted(o.key for o in read_manifest(f"s3://results/{run.prefix}failed-files.jsonl", s3))
    assert keys == ["b.wav", "c.wav"]

    # a prefix works too: the manifest is found under it
    by_prefix = run_cli("summarize", f"s3://results/{run.prefix}", "--json")
    assert json.loads(by_prefix.stdout)["files"] == s["files"]

    missing = run_cli("summarize", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_summarize_s3_location_builds_one_client(s3_endpoint, monkeypatch):
    """`ffleet summarize s3://...` reads the manifest, the records and the batches through one client."""
    import ffleet.storage
    from ffleet.summarize import summarize_location

    s3_endpoint.create_bucket(Bucket="results")
    run = RunFixture(lambda k, d: s3_endpoint.put_object(Bucket="results", Key=k, Body=d))
    run.batch("b1", ["a.wav"], records=[record("a.wav")])
    run.batch("b2", ["c.wav"], status="FAILED", inline_items=False)
    run.finish()
    made = []
    real = ffleet.storage.s3_client
    monkeypatch.setattr(ffleet.storage, "s3_client", lambda: made.append(1) or real())
    monkeypatch.setattr("ffleet.summarize.make_s3_client", ffleet.storage.s3_client)
    s = summarize_location(f"s3://results/{run.prefix}", write=True).summary
    assert s["files"]["succeeded"] == 1 and s["files"]["failed"] == 1
    assert len(made) == 1


def _record_to(key: str, output_key: str, status: str = "succeeded") -> dict:
    r = record(key, status)
    r["output_key"] = output_key
    return r


@pytest.mark.parametrize("rerun", [False, True], ids=["first_run", "rerun_skipped"])
def test_inputs_of_different_batches_sharing_an_output_are_failed(cloud_run, rerun):
    """song.mp3 and song.wav both became song.flac, in two batch jobs: each job saw no clash, so the
    summary counts the later record as failed (output_collision) and puts it in the re-drive manifest.
    On a re-run both are skipped (the object exists): the clash must still show."""
    run, summarize = cloud_run
    status = "skipped" if rerun else "succeeded"
    run.batch("b1", ["a/song.mp3"], records=[_record_to("a/song.mp3", "flac/a/song.flac", status)])
    run.batch("b2", ["a/song.wav", "a/other.wav"], records=[_record_to("a/song.wav", "flac/a/song.flac", status),
                                                           _record_to("a/other.wav", "flac/a/other.flac", status)])
    result, folder = summarize(tolerated_failure_percent=50)
    s = result.summary
    assert s["files"]["failed"] == 1 and s["failures_by_reason"] == {"output_collision": 1}
    (failure,) = s["failures"]
    assert failure["key"] == "a/song.wav" and "a/song.mp3" in failure["detail"] and "flac/a/song.flac" in failure["detail"]
    assert redrive_keys(folder / "failed-files.jsonl") == ["a/song.wav"]
    # a request that keeps each input's extension cannot map two inputs to one output: nothing is checked
    unchecked, _ = summarize(tolerated_failure_percent=50, outputs_may_collide=False)
    assert unchecked.summary["files"]["failed"] == 0


@pytest.mark.parametrize("output, checked", [({"s3_bucket": "o", "extension": ".flac"}, True),
                                             ({"s3_bucket": "o"}, False), (None, True)])
def test_summarize_event_checks_outputs_only_when_an_extension_is_replaced(monkeypatch, output, checked):
    import ffleet.summarize as summarize_module

    seen = {}
    monkeypatch.setattr(summarize_module, "summarize_cloud", lambda *a, **kw: seen.update(kw))
    request = {"name": "t", "output": output} if output is not None else {}
    summarize_module.summarize_event(parse_event({"execution_name": "e", "results_prefix": "s3://b/p/", "request": request}), None)
    assert seen["outputs_may_collide"] is checked
