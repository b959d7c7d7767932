"""Following a cloud run (`submit --wait`, `status`, `cancel`, `redrive`): moto end to end, botocore's Stubber
where moto cannot script a run (Map Run counts mid-run, FAILED, throttling). Sleep and clock are injected, so
no test waits for a poll interval."""
from __future__ import annotations

import functools
import io
import json
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from urllib.parse import quote_plus

import pytest

from conftest import EVENTS
from ffleet import follow

# the moto pipeline test's deployment: its fixtures and names (imported, so it stays the one definition)
from test_pipeline_moto import FAIL_MARK, MEDIA, RESULTS, TRIGGER, FakeContext, cloud, summarize_handler  # noqa: F401

STACK = "ffleet-follow"
Pace = follow.Pace  # the real one; _cli patches the module's with fake sleep and clock


class FakeTime:
    """A clock that moves only when slept; `hook(n)` runs at the n-th sleep (1-based)."""

    def __init__(self, hook=None, real_pause: float = 0.0):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.hook = hook
        self.real_pause = real_pause  # lets moto's execution thread run; no test asserts on time

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.hook:
            self.hook(len(self.sleeps))
        if self.real_pause:
            time.sleep(self.real_pause)
        if len(self.sleeps) > 5000:
            raise AssertionError("still polling after 5000 sleeps")


def _stack(cloud) -> None:
    import boto3

    cfn = boto3.client("cloudformation", region_name="us-east-1")
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps({
        "Resources": {"Marker": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "ffleet-follow-marker"}}},
        "Outputs": {
            "TriggerBucketName": {"Value": TRIGGER},
            "ResultsBucketName": {"Value": RESULTS},
            "StateMachineArn": {"Value": cloud.sm},
        },
    }))


def _s3_event(cloud, key: str) -> dict:
    """The S3 event AWS sends for the object now at `key` in the trigger bucket."""
    head = cloud.s3.head_object(Bucket=TRIGGER, Key=key)
    event = json.loads((EVENTS / "s3-put.json").read_text())
    event["Records"][0]["s3"]["bucket"]["name"] = TRIGGER
    obj = event["Records"][0]["s3"]["object"]
    obj.update(key=quote_plus(key, safe="/"), versionId=head.get("VersionId", ""), eTag=head["ETag"].strip('"'))
    return event


def _start_lambda(cloud):
    """A sleep hook: at the first sleep, S3 delivers the uploaded request's event to the start Lambda."""
    def hook(n: int) -> None:
        if n == 1:
            keys = [o["Key"] for o in cloud.s3.list_objects_v2(Bucket=TRIGGER, Prefix="jobs/").get("Contents", [])]
            for key in keys:
                if not key.endswith(follow.REJECTED_SUFFIX):
                    cloud.start.handler(_s3_event(cloud, key), FakeContext())
    return hook


def _request(tolerance: float) -> dict:
    return {
        "name": "podcast-episodes",
        "compute": "arm",
        "input": {"s3_bucket": MEDIA, "s3_prefix": "in/"},
        "output": {"s3_bucket": "media-out", "s3_prefix": "out/", "file_options": "-ac 1 -ar 48000"},
        "processing": {"files_per_job": 1, "tolerated_failure_percent": tolerance},
    }


@pytest.fixture(autouse=True)
def _map_runs_of_ended_executions(monkeypatch):
    """moto forgets an execution's map runs when it ends (its worker is gone) and then fails ListMapRuns
    and DescribeMapRun with an AttributeError; AWS keeps them. Here an ended execution has none."""
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    def pool(execution):
        return getattr(getattr(execution.exec_worker, "env", None), "map_run_record_pool_manager", None)

    def describe_map_run(self, map_run_arn):
        for execution in self._get_executions():
            record = pool(execution).get(map_run_arn) if pool(execution) else None
            if record is not None:
                return record.describe()
        from moto.stepfunctions.parser.api import ResourceNotFound

        raise ResourceNotFound()

    def list_map_runs(self, execution_arn):
        execution = self.describe_execution(execution_arn=execution_arn)
        return {"mapRuns": [r.list_item() for r in pool(execution).get_all()] if pool(execution) else []}

    monkeypatch.setattr(StepFunctionsParserBackend, "describe_map_run", describe_map_run)
    monkeypatch.setattr(StepFunctionsParserBackend, "list_map_runs", list_map_runs)


def _cli(monkeypatch, fake: FakeTime, *argv: str) -> int:
    from ffleet.cli import main

    monkeypatch.setattr(follow, "Pace", functools.partial(Pace, sleep=fake.sleep, clock=fake.clock))
    return main(list(argv))


def _submit_and_wait(cloud, tmp_path, monkeypatch, capsys, request: dict, *flags: str) -> tuple[int, str, str, FakeTime]:
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request))
    fake = FakeTime(hook=_start_lambda(cloud), real_pause=0.02)
    code = _cli(monkeypatch, fake, "submit", str(path), "--stack", STACK, "--wait", *flags)
    out, err = capsys.readouterr()
    return code, out, err, fake


def test_submit_wait_follows_the_moto_pipeline_then_status_finds_the_run(cloud, tmp_path, monkeypatch, capsys):
    _stack(cloud)
    for name in ("in/a.wav", "in/b c.wav"):
        cloud.s3.put_object(Bucket=MEDIA, Key=name, Body=b"RIFF")
    code, out, err, fake = _submit_and_wait(cloud, tmp_path, monkeypatch, capsys, _request(0))
    with capsys.disabled():  # the README's sample comes from this output (pytest -s)
        print(f"\n--- stdout ---\n{out}--- stderr ---\n{err}")
    assert code == 0, err
    # the run's own summary.json, printed as `ffleet run` prints a summary
    assert "files      2 total: 2 succeeded, 0 failed, 0 skipped" in out and "OVER TOLERANCE" not in out
    execution = cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"][0]
    assert f"following {execution['executionArn']}" in err
    assert f"summary: s3://{RESULTS}/runs/{execution['name']}/summary.json" in err
    # progress lines (stderr is not a terminal here), from the Map Run's counts and the records
    assert "files 2/2 done, 0 failed  batches 0 running, 0 failed, 0 pending" in err
    # polls back off: the intervals grow and never pass the cap
    polls = [s for s in fake.sleeps if s >= Pace.first]
    assert len(polls) >= 2 and polls == sorted(polls) and max(polls) <= Pace.cap

    key = cloud.s3.list_objects_v2(Bucket=TRIGGER, Prefix="jobs/")["Contents"][0]["Key"]
    for run in (execution["name"], execution["executionArn"], f"s3://{TRIGGER}/{key}", key):
        assert _cli(monkeypatch, FakeTime(), "status", run, "--stack", STACK, "--json") == 0, run
        assert json.loads(capsys.readouterr().out)["files"]["succeeded"] == 2

    assert _cli(monkeypatch, FakeTime(), "status", "--list", "--stack", STACK) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "STATE", "DONE", "FAILED", "STARTED", "DURATION"]
    assert lines[1].split()[:4] == [execution["name"], "SUCCEEDED", "2/2", "0"]

    # nothing failed, so there is nothing to re-drive: no new request is uploaded
    assert _cli(monkeypatch, FakeTime(), "redrive", execution["name"], "--stack", STACK) == 2
    assert "nothing to re-drive: no file of" in capsys.readouterr().err
    assert len(cloud.s3.list_objects_v2(Bucket=TRIGGER, Prefix="jobs/")["Contents"]) == 1


def test_submit_wait_exits_1_over_tolerance_and_redrive_submits_the_failed_files(cloud, tmp_path, monkeypatch, capsys):
    _stack(cloud)
    for name in ("in/a.wav", "in/b c.wav", f"in/{FAIL_MARK}.wav"):  # the last one's Batch job fails
        cloud.s3.put_object(Bucket=MEDIA, Key=name, Body=b"RIFF")
    request = _request(50)
    request["input"]["extensions"] = [".wav"]
    code, out, err, _ = _submit_and_wait(cloud, tmp_path, monkeypatch, capsys, request, "--json")
    assert code == 1, err
    summary = json.loads(out[out.index('{\n  "run"'):])  # after "submitted ..." and the Lambdas' log lines
    # under moto the failed job's file is not_done (ResultWriter lists no children): never within tolerance
    assert summary["files"]["not_done"] == 1 and not summary["within_tolerance"]
    # the caught job failure shows while following: its child "succeeded" but left no records
    assert "files 2/3 done, 1 failed  batches 0 running, 1 failed, 0 pending" in err
    first = cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"][0]["name"]

    assert _cli(monkeypatch, FakeTime(), "redrive", first, "--stack", STACK) == 0
    assert f"re-driving the failed files of {first}" in capsys.readouterr().out
    new_key = [o["Key"] for o in cloud.s3.list_objects_v2(Bucket=TRIGGER, Prefix="jobs/")["Contents"] if "redrive" in o["Key"]]
    assert len(new_key) == 1
    new = json.loads(cloud.s3.get_object(Bucket=TRIGGER, Key=new_key[0])["Body"].read())
    assert new["input"]["manifest"] == f"s3://{RESULTS}/runs/{first}/failed-files.jsonl" and not new["input"]["s3_prefix"]
    assert new["input"]["extensions"] == [".wav"] and new["input"]["s3_bucket"] == MEDIA
    assert new["output"]["file_options"] == "-ac 1 -ar 48000" and new["compute"] == "arm"
    assert new["processing"]["tolerated_failure_percent"] == 50 and new["name"] == "podcast-episodes-redrive"
    assert "results" not in new or not new["results"] or not new["results"].get("s3_bucket")
    failed = cloud.s3.get_object(Bucket=RESULTS, Key=f"runs/{first}/failed-files.jsonl")["Body"].read().decode()
    assert [json.loads(line)["key"] for line in failed.splitlines()] == [f"in/{FAIL_MARK}.wav"]
