"""Following a cloud run (`submit --wait`, `status`, `cancel`, `redrive`): moto end to end, botocore's Stubber
where moto cannot script a run (Map Run counts mid-run, FAILED, throttling). Sleep and clock are injected, so
no test waits for a poll interval."""
from __future__ import annotations

import functools
import io
import json
import os
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from urllib.parse import quote_plus

import pytest

from conftest import EVENTS
from ffleet import follow, run_watch

# the moto pipeline test's deployment: its fixtures and names (imported, so it stays the one definition)
from test_pipeline_moto import FAIL_MARK, MEDIA, RESULTS, TRIGGER, FakeContext, cloud, summarize_handler  # noqa: F401

STACK = "ffleet-follow"
Pace = follow.Pace  # the real one; _cli patches the module's with fake sleep and clock


class FakeTime:
    """A clock that moves only when slept; `hook(n)` runs at the n-th wait between polls (1-based), not at
    the short pauses that space calls."""

    def __init__(self, hook=None, real_pause: float = 0.0, max_sleeps: int = 5000):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.hook = hook
        self.real_pause = real_pause  # lets moto's execution thread run; no test asserts on time
        self.max_sleeps = max_sleeps

    @property
    def waits(self) -> list[float]:
        return [s for s in self.sleeps if s >= 1]

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.hook and seconds >= 1:
            self.hook(len(self.waits))
        if self.real_pause:
            time.sleep(self.real_pause)
        if len(self.sleeps) > self.max_sleeps:
            raise AssertionError(f"still polling after {self.max_sleeps} sleeps")


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
                if not key.endswith(run_watch.REJECTED_SUFFIX):
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
    if os.environ.get("FFLEET_SHOW_SAMPLE"):  # the README's sample comes from this output
        with capsys.disabled():
            print(f"\n--- stdout ---\n{out}--- stderr ---\n{err}")
    assert code == 0, err
    # the run's own summary.json, printed as `ffleet run` prints a summary
    assert "files      2 total: 2 succeeded, 0 failed, 0 skipped" in out and "OVER TOLERANCE" not in out
    execution = cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"][0]
    assert f"following {execution['executionArn']}" in err
    assert f"summary: s3://{RESULTS}/runs/{execution['name']}/summary.json" in err
    # progress lines (stderr is not a terminal here), from the Map Run's counts and the records
    assert "SUCCEEDED  files 2/2 done, 0 failed  batches 0 running, 0 failed, 0 pending" in err
    # polls back off: the intervals grow and never pass the cap
    polls = fake.waits
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
    request = _request(20)
    request["input"]["extensions"] = [".wav"]
    code, out, err, _ = _submit_and_wait(cloud, tmp_path, monkeypatch, capsys, request, "--json")
    summary = json.loads(out[out.index('{\n  "run"'):])  # after "submitted ..." and the Lambdas' log lines
    assert code == 1, err
    assert summary["files"]["total"] == 3 and summary["files"]["succeeded"] == 2 and not summary["within_tolerance"]
    # the caught job failure shows while following (its child "succeeded" but left no records file),
    # and the execution ends FAILED because the summary is over tolerance
    assert "FAILED  files 2/3 done, 1 failed  batches 0 running, 1 failed, 0 pending" in err
    first = cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"][0]["name"]

    assert _cli(monkeypatch, FakeTime(), "redrive", first, "--stack", STACK) == 0
    assert f"re-driving the failed files of {first}" in capsys.readouterr().out
    new_key = [o["Key"] for o in cloud.s3.list_objects_v2(Bucket=TRIGGER, Prefix="jobs/")["Contents"] if "redrive" in o["Key"]]
    assert len(new_key) == 1
    new = json.loads(cloud.s3.get_object(Bucket=TRIGGER, Key=new_key[0])["Body"].read())
    assert new["input"]["manifest"] == f"s3://{RESULTS}/runs/{first}/failed-files.jsonl" and not new["input"]["s3_prefix"]
    assert new["input"]["extensions"] == [".wav"] and new["input"]["s3_bucket"] == MEDIA
    assert new["output"]["file_options"] == "-ac 1 -ar 48000" and new["compute"] == "arm"
    assert new["processing"]["tolerated_failure_percent"] == 20 and new["name"] == "podcast-episodes-redrive"
    assert "results" not in new or not new["results"] or not new["results"].get("s3_bucket")
    failed = cloud.s3.get_object(Bucket=RESULTS, Key=f"runs/{first}/failed-files.jsonl")["Body"].read().decode()
    assert [json.loads(line)["key"] for line in failed.splitlines()] == [f"in/{FAIL_MARK}.wav"]


# --- botocore's Stubber for Step Functions (moto cannot script a run), moto for S3 ---------------
ARN = "arn:aws:states:us-east-1:123456789012:execution:ffleet-pipeline:podcasts-0123456789abcdef"
MAP_RUN = "arn:aws:states:us-east-1:123456789012:mapRun:ffleet-pipeline/Process prefix:1a2b"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def _execution_input(files_per_job: int = 10, tolerance: float = 0) -> str:
    return json.dumps({
        "execution_name": ARN.rsplit(":", 1)[1],
        "processing": {"files_per_job": files_per_job, "tolerated_failure_percent": tolerance},
        "results": {"bucket": "results", "key_prefix": "runs/podcasts-0123456789abcdef/"},
        "request": {"name": "podcasts", "input": {"s3_bucket": "in", "s3_prefix": "media/"},
                    "output": {"s3_bucket": "out", "s3_prefix": "mono/"}},
    })


def _describe(status: str, **extra) -> dict:
    d = {"executionArn": ARN, "stateMachineArn": ARN.replace(":execution:", ":stateMachine:").rsplit(":", 1)[0],
         "status": status, "startDate": T0, "input": _execution_input()}
    if status != "RUNNING":
        d["stopDate"] = T0 + timedelta(minutes=12)
    d.update(extra)
    return d


def _map_run(running: int, succeeded: int, failed: int, pending: int, items_per_child: int = 10) -> dict:
    def counts(scale):
        c = {"pending": pending * scale, "running": running * scale, "succeeded": succeeded * scale,
             "failed": failed * scale, "timedOut": 0, "aborted": 0,
             "total": (pending + running + succeeded + failed) * scale, "resultsWritten": 0}
        return c
    return {"mapRunArn": MAP_RUN, "executionArn": ARN, "status": "RUNNING", "maxConcurrency": 0,
            "toleratedFailurePercentage": 0.0, "toleratedFailureCount": 0, "startDate": T0,
            "itemCounts": counts(items_per_child), "executionCounts": counts(1)}


def _listed_map_run(stub, **counts) -> None:
    """ListMapRuns finds the run's map run; DescribeMapRun gives its child executions' counts."""
    stub.add_response("list_map_runs", {"mapRuns": [{"executionArn": ARN, "mapRunArn": MAP_RUN, "startDate": T0,
                                                   "stateMachineArn": MAP_RUN.replace(":mapRun:", ":stateMachine:")}]},
                      {"executionArn": ARN})
    stub.add_response("describe_map_run", _map_run(**counts), {"mapRunArn": MAP_RUN})


@pytest.fixture
def stubbed():
    """A stubbed Step Functions client and a moto S3 holding the run's results bucket."""
    import boto3
    from botocore.stub import Stubber
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for b in ("results", "trigger"):
            s3.create_bucket(Bucket=b)
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        with Stubber(sfn) as stub:
            yield SimpleNamespace(s3=s3, sfn=sfn, stub=stub)
            stub.assert_no_pending_responses()


def _records(s3, batch: str, *statuses: str) -> None:
    lines = "".join(json.dumps({"key": f"media/{batch}-{n}.wav", "status": st}) + "\n" for n, st in enumerate(statuses))
    s3.put_object(Bucket="results", Key=f"runs/podcasts-0123456789abcdef/records/{batch}.jsonl", Body=lines.encode())


def _summary(s3, within: bool) -> None:
    from ffleet.results import SummaryBuilder, ItemResult

    b = SummaryBuilder()
    b.add(ItemResult(key="media/a.wav", status="succeeded"))
    if not within:
        b.add(ItemResult(key="media/b.wav", status="failed", reason="corrupt_input", detail="moov atom not found"))
    s3.put_object(Bucket="results", Key="runs/podcasts-0123456789abcdef/summary.json",
                  Body=json.dumps(b.summary(wall_seconds=720, results="s3://results/runs/podcasts-0123456789abcdef/")).encode())


class Lines:
    """A stderr stand-in that is not a terminal: the progress view writes one line per change."""

    def __init__(self):
        self.buf = io.StringIO()

    def write(self, s):
        return self.buf.write(s)

    def flush(self):
        pass

    def lines(self):
        return self.buf.getvalue().splitlines()


def _watch(env, fake: FakeTime) -> follow.RunWatch:
    return follow.RunWatch(env.sfn, env.s3, ARN, Pace(sleep=fake.sleep, clock=fake.clock))


def test_map_run_item_counts_become_file_counts():
    items = {"total": 250, "succeeded": 100, "failed": 20, "running": 30, "pending": 100}
    children = {"total": 25, "succeeded": 10, "failed": 2, "running": 3, "pending": 10}
    # items counted one by one (Step Functions' documented meaning): they are the files
    assert run_watch.file_counts(items, children, 10) == (250, 100, 20)
    # items counted per batch: each stands for files_per_job files
    assert run_watch.file_counts(children, children, 10) == (250, 100, 20)
    assert run_watch.file_counts(children, children, 1) == (25, 10, 2)


def test_running_then_succeeded_shows_progress_and_exits_0(stubbed, monkeypatch, capsys):
    s = stubbed.stub
    s.add_response("describe_execution", _describe("RUNNING"), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})  # still listing the inputs
    s.add_response("describe_execution", _describe("RUNNING"), {"executionArn": ARN})
    _listed_map_run(s, running=4, succeeded=2, failed=1, pending=3)
    s.add_response("describe_execution", _describe("SUCCEEDED"), {"executionArn": ARN})
    s.add_response("describe_map_run", _map_run(running=0, succeeded=9, failed=1, pending=0), {"mapRunArn": MAP_RUN})
    _records(stubbed.s3, "b1", *["succeeded"] * 9, "failed")  # one file of a succeeded batch failed
    _records(stubbed.s3, "b2", *["succeeded"] * 10)
    _records(stubbed.s3, "b3", *["succeeded"] * 10)  # its job has ended, its child not yet
    _summary(stubbed.s3, within=True)

    def more_batches_end(n):
        if n == 2:
            for b in range(4, 10):
                _records(stubbed.s3, f"b{b}", *["succeeded"] * 10)

    fake = FakeTime(hook=more_batches_end)
    stream = Lines()
    view = follow.ProgressView(stream=stream, now=lambda: T0 + timedelta(minutes=6))
    watch = _watch(stubbed, fake)
    snap = follow.follow(watch, view)
    assert snap.status == "SUCCEEDED"
    lines = stream.lines()
    assert "RUNNING  files 0/? done, 0 failed  batches 0 running, 0 failed, 0 pending" in lines[0]
    # 100 files in 10 batches: 3 batches' records read (29 done, 1 failed), 1 batch's job failed (10 files)
    assert "RUNNING  files 29/100 done, 11 failed  batches 4 running, 1 failed, 3 pending  elapsed 0:06:00" in lines[1]
    assert lines[1].endswith("eta 0:09:00")  # 40 of 100 files in 6 minutes: 60 more take 9
    assert "SUCCEEDED  files 89/100 done, 11 failed  batches 0 running, 1 failed, 0 pending" in lines[2]
    assert fake.waits == [2.0, 3.0]  # two waits between three polls, growing
    assert all(s <= Pace.min_gap for s in fake.sleeps if s < 1)  # and short pauses between calls

    args = SimpleNamespace(json=False, stack="ffleet")
    assert follow.finish(watch, snap, args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("files      1 total: 1 succeeded") and "SUCCEEDED after 0:12:00" in err


def test_failed_execution_exits_1_and_says_why(stubbed, capsys):
    s = stubbed.stub
    s.add_response("describe_execution", _describe("FAILED", error="ffleet.OverTolerance",
                                                   cause="2 of 4 files failed; tolerated 0%"), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})
    _summary(stubbed.s3, within=False)
    watch = _watch(stubbed, FakeTime())
    code = follow.watch_to_end(watch, SimpleNamespace(json=True, stack="ffleet", no_progress=True))
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out)["files"]["failed"] == 1
    assert "FAILED after 0:12:00" in err and "ffleet.OverTolerance: 2 of 4 files failed" in err


@pytest.mark.parametrize("status", ["TIMED_OUT", "ABORTED"])
def test_timed_out_or_aborted_exits_1_even_when_the_records_are_clean(stubbed, capsys, status):
    s = stubbed.stub
    s.add_response("describe_execution", _describe(status), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})
    _records(stubbed.s3, "b1", "succeeded")  # no summary.json: the summarizer never ran
    code = follow.watch_to_end(_watch(stubbed, FakeTime()), SimpleNamespace(json=False, stack=None, no_progress=True))
    out, err = capsys.readouterr()
    assert code == 1 and "files      1 total: 1 succeeded" in out
    assert "summarized from the records in s3://results/runs/podcasts-0123456789abcdef/ (no summary.json)" in err


def test_a_rejected_request_is_reported_with_its_fields_and_exits_2(stubbed, capsys):
    from botocore.stub import ANY

    s = stubbed.stub
    for _ in range(2):
        s.add_client_error("describe_execution", "ExecutionDoesNotExist", "no such execution", 400,
                           expected_params={"executionArn": ANY})
    key = "jobs/podcasts/20261201T100000.000000Z.json"
    note = {"errors": [{"field": "compute", "message": "'quantum' is not one of intel, amd, arm, nvidia"},
                       {"field": "output.s3_bucket", "message": "required"}]}

    def lambda_rejects(n):  # the start Lambda writes its note while we wait
        stubbed.s3.put_object(Bucket="trigger", Key=key + ".rejected.json", Body=json.dumps(note).encode())

    fake = FakeTime(hook=lambda_rejects)
    sent = {"uri": f"s3://trigger/{key}", "execution_name": "podcasts-0123456789abcdef",
            "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:ffleet-pipeline"}
    code = follow.follow_submitted(sent, SimpleNamespace(stack="ffleet", json=False, no_progress=True),
                                   follow.Clients(sfn=stubbed.sfn, s3=stubbed.s3, cfn=object()),
                                   Pace(sleep=fake.sleep, clock=fake.clock))
    err = capsys.readouterr().err
    assert code == 2
    assert f"the stack rejected the request (s3://trigger/{key}.rejected.json)" in err
    assert "  compute: 'quantum' is not one of" in err and "  output.s3_bucket: required" in err


def test_a_throttled_describe_is_retried_with_backoff(stubbed):
    s = stubbed.stub
    for _ in range(2):
        s.add_client_error("describe_execution", "ThrottlingException", "Rate exceeded", 400,
                           expected_params={"executionArn": ARN})
    s.add_response("describe_execution", _describe("RUNNING"), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})
    fake = FakeTime()
    watch = _watch(stubbed, fake)
    assert watch.poll().status == "RUNNING"
    assert fake.waits == [4.0, 8.0]  # the interval doubles for each throttled answer
    assert watch.pace.throttled == 2 and watch.pace.calls["DescribeExecution"] == 3
    assert watch.pace.interval == 8.0  # and the polls after it stay slower


def test_throttling_that_never_ends_gives_up_following_not_the_run(stubbed, capsys):
    for _ in range(run_watch.MAX_TRANSIENT_IN_A_ROW):
        stubbed.stub.add_client_error("describe_execution", "ThrottlingException", "Rate exceeded", 400)
    fake = FakeTime()
    code = follow.watch_to_end(_watch(stubbed, fake), SimpleNamespace(json=False, stack="ffleet", no_progress=True))
    assert code == 1 and max(fake.sleeps) == Pace.cap
    err = capsys.readouterr().err
    assert "DescribeExecution still answers ThrottlingException after 12 tries" in err
    assert "the run goes on. Resume with: ffleet status podcasts-0123456789abcdef --stack ffleet --wait" in err


def test_ctrl_c_stops_following_not_the_run(stubbed, capsys):
    s = stubbed.stub
    s.add_response("describe_execution", _describe("RUNNING"), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})

    def ctrl_c(n):
        raise KeyboardInterrupt

    # no StopExecution is stubbed: the Stubber fails any call not listed above
    code = follow.watch_to_end(_watch(stubbed, FakeTime(hook=ctrl_c)),
                               SimpleNamespace(json=False, stack="ffleet", no_progress=True))
    err = capsys.readouterr().err
    assert code == follow.EXIT_INTERRUPTED
    assert "stopped following podcasts-0123456789abcdef; the run goes on" in err
    assert "ffleet status podcasts-0123456789abcdef --stack ffleet --wait" in err


def test_cancel_stops_the_execution_and_reports_what_finished(stubbed, capsys):
    s = stubbed.stub
    s.add_response("describe_execution", _describe("RUNNING"), {"executionArn": ARN})
    s.add_response("stop_execution", {"stopDate": T0}, {"executionArn": ARN, "error": "ffleet.Cancelled",
                                                         "cause": "stopped by `ffleet cancel`"})
    s.add_response("describe_execution", _describe("ABORTED"), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})
    _records(stubbed.s3, "b1", "succeeded", "succeeded")
    # a batch handed to a job that was stopped before it wrote records
    batch = {"BatchInput": {"batch_id": "b2", "results_prefix": "s3://results/runs/podcasts-0123456789abcdef/"},
             "Items": [{"Key": "media/late.wav"}]}
    stubbed.s3.put_object(Bucket="results", Key="runs/podcasts-0123456789abcdef/batches/b2.json", Body=json.dumps(batch).encode())
    fake = FakeTime()
    code = follow.cmd_cancel(SimpleNamespace(run=ARN, stack=None, json=False),
                             follow.Clients(sfn=stubbed.sfn, s3=stubbed.s3, cfn=object()), Pace(sleep=fake.sleep, clock=fake.clock))
    out, err = capsys.readouterr()
    assert code == 1
    assert "stopped podcasts-0123456789abcdef (ABORTED)" in err
    assert "files      3 total: 2 succeeded, 0 failed, 0 skipped, 1 not done" in out and "media/late.wav" in out
    # written, so `ffleet redrive` can pick the stopped run up
    failed = stubbed.s3.get_object(Bucket="results", Key="runs/podcasts-0123456789abcdef/failed-files.jsonl")["Body"].read()
    assert json.loads(failed)["key"] == "media/late.wav"


def test_a_caught_job_failure_counts_as_a_failed_batch(stubbed):
    """The pipeline's Catch turns a failed Batch job into a succeeded child; it is the one without records."""
    s = stubbed.stub
    s.add_response("describe_execution", _describe("RUNNING"), {"executionArn": ARN})
    _listed_map_run(s, running=1, succeeded=3, failed=0, pending=0)
    _records(stubbed.s3, "b1", *["succeeded"] * 10)
    _records(stubbed.s3, "b2", *["succeeded"] * 10)
    snap = _watch(stubbed, FakeTime()).poll()
    assert (snap.batches_succeeded, snap.batches_failed, snap.batches_running) == (2, 1, 1)
    assert (snap.files_total, snap.files_done, snap.files_failed, snap.record_files) == (40, 20, 10, 2)


class FakeRun:
    """A long run as AWS would answer about it: `files` files, `per_job` a batch, `hours` long, with
    Step Functions and S3 clients that count each call and the (fake) time it was made at."""

    def __init__(self, fake: FakeTime, files: int, per_job: int, hours: float):
        self.fake, self.t0, self.seconds = fake, fake.now, hours * 3600
        self.batches = -(-files // per_job)
        self.files, self.per_job = files, per_job
        self.calls: list[tuple[float, str]] = []
        self.body = ("".join(json.dumps({"key": f"k{i}", "status": "succeeded"}) + "\n" for i in range(per_job))).encode()

    def _note(self, api):
        self.calls.append((self.fake.now, api))

    def done(self) -> int:  # batches finished by now, linearly over the run
        return min(self.batches, int(self.batches * (self.fake.now - self.t0) / self.seconds))

    # Step Functions
    def describe_execution(self, executionArn):
        self._note("DescribeExecution")
        status = "SUCCEEDED" if self.done() >= self.batches else "RUNNING"
        return {"status": status, "startDate": T0, "input": _execution_input(self.per_job)}

    def list_map_runs(self, executionArn):
        self._note("ListMapRuns")
        return {"mapRuns": [{"mapRunArn": MAP_RUN}]}

    def describe_map_run(self, mapRunArn):
        self._note("DescribeMapRun")
        d = self.done()
        running = min(self.batches - d, 250)
        ec = {"total": self.batches, "succeeded": d, "running": running, "pending": self.batches - d - running}
        return {"executionCounts": ec, "itemCounts": {k: v * self.per_job for k, v in ec.items()}}

    # S3
    def list_objects_v2(self, Bucket, Prefix, ContinuationToken=None):
        self._note("ListObjectsV2")
        start = int(ContinuationToken or 0)
        end = min(start + 1000, self.done())
        page = {"Contents": [{"Key": f"{Prefix}{i:08d}.jsonl", "ETag": '"e"'} for i in range(start, end)],
                "IsTruncated": end < self.done()}
        if page["IsTruncated"]:
            page["NextContinuationToken"] = str(end)
        return page

    def get_object(self, Bucket, Key):
        self._note("GetObject")
        if Key.endswith("summary.json"):
            raise AssertionError("not read in this test")
        return {"Body": io.BytesIO(self.body)}


def test_a_ten_hour_run_stays_within_a_few_calls_a_second(capsys):
    """A 10-hour run: what following it costs in API calls (docs/cloud.md has FFLEET_SIM_FILES=3000000)."""
    files = int(os.environ.get("FFLEET_SIM_FILES", "300000"))
    fake = FakeTime(max_sleeps=100_000)
    run = FakeRun(fake, files=files, per_job=1000, hours=10)
    watch = follow.RunWatch(run, run, ARN, Pace(sleep=fake.sleep, clock=fake.clock))
    snap = follow.follow(watch)
    assert snap.status == "SUCCEEDED" and snap.files_done == files
    times = [t for t, _ in run.calls]
    # never more than 1/min_gap calls in any second
    assert all(b - a >= Pace.min_gap for a, b in zip(times, times[1:]))
    per_api = Counter(api for _, api in run.calls)
    polls = per_api["DescribeExecution"]
    assert per_api["DescribeMapRun"] == polls and per_api["ListMapRuns"] == 1
    assert per_api["GetObject"] == run.batches  # each records file read once
    # at the 30 s cap, 10 hours are at most about 1,200 polls (fewer: a poll's own calls take time too)
    assert 0.9 * 10 * 3600 / Pace.cap <= polls <= 10 * 3600 / Pace.cap + 20
    if "FFLEET_SIM_FILES" in os.environ:
        with capsys.disabled():
            print(f"\n10 h, {files:,} files, 1,000 a job: {polls} polls, calls {dict(per_api)}, "
                  f"{sum(per_api.values()) / polls:.1f} calls a poll, busiest second "
                  f"{max(Counter(int(t) for t in times).values())} calls")


def test_on_a_terminal_the_progress_is_two_rich_bars_within_80_columns():
    import re

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    view = follow.ProgressView(stream=term, now=lambda: T0 + timedelta(minutes=6))
    view.update(follow.Snapshot(name="podcasts-0123456789abcdef", status="RUNNING", started=T0, files_total=100,
                                files_done=29, files_failed=11, batches_total=10, batches_running=4,
                                batches_succeeded=2, batches_failed=1, batches_pending=3))
    view.close()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue()).split("\r")[-1].splitlines()
    assert len(screen) == 2 and all(len(line.rstrip()) <= 80 for line in screen)
    assert screen[0].startswith("files ") and "40/100 11 failed · RUNNING · 0:06:00 elapsed, eta 0:09:00" in screen[0]
    assert screen[1].startswith("batches ") and "3/10" in screen[1] and "4 running · 1 failed · 3 pending" in screen[1]


def test_a_hostile_key_in_the_summary_cannot_drive_the_terminal(stubbed, capsys):
    from ffleet.results import ItemResult, SummaryBuilder

    s = stubbed.stub
    s.add_response("describe_execution", _describe("SUCCEEDED"), {"executionArn": ARN})
    s.add_response("list_map_runs", {"mapRuns": []}, {"executionArn": ARN})
    b = SummaryBuilder()
    b.add(ItemResult(key="media/\x1b]0;owned\x07.wav", status="failed", reason="corrupt_input"))
    stubbed.s3.put_object(Bucket="results", Key="runs/podcasts-0123456789abcdef/summary.json",
                          Body=json.dumps(b.summary(wall_seconds=1)).encode())
    assert follow.watch_to_end(_watch(stubbed, FakeTime()), SimpleNamespace(json=False, stack=None, no_progress=True)) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "media/\\x1b]0;owned\\x07.wav" in out


def test_a_run_that_has_already_ended_is_summarized_without_reading_its_records(stubbed, capsys):
    s = stubbed.stub
    s.add_response("describe_execution", _describe("SUCCEEDED"), {"executionArn": ARN})
    _listed_map_run(s, running=0, succeeded=2, failed=0, pending=0)
    _records(stubbed.s3, "b1", *["succeeded"] * 10)
    _summary(stubbed.s3, within=True)
    fake = FakeTime()
    pace = Pace(sleep=fake.sleep, clock=fake.clock)
    code = follow.cmd_status(SimpleNamespace(run=ARN, stack=None, list=False, wait=False, json=False),
                             follow.Clients(sfn=stubbed.sfn, s3=stubbed.s3, cfn=object()), pace)
    assert code == 0 and capsys.readouterr().out.startswith("files      1 total: 1 succeeded")
    assert fake.waits == [] and pace.calls["ListObjectsV2"] == 0 and pace.calls["GetObject"] == 1  # summary.json


def test_a_manifest_run_is_found_by_its_trigger_key(stubbed):
    """A manifest's run is named after the request the stack picks: found by the key in its input."""
    sm = "arn:aws:states:us-east-1:123456789012:stateMachine:ffleet-pipeline"
    other, mine = ARN + "-other", ARN
    key = "manifests/tonight/20261201T100000.000000Z.csv"
    s = stubbed.stub

    def execution(arn, trigger_key):
        return {"executionArn": arn, "stateMachineArn": sm, "status": "RUNNING", "startDate": T0,
                "input": json.dumps({"trigger": {"type": "s3-manifest", "bucket": "trigger", "key": trigger_key}})}

    listed = {"executions": [{"executionArn": other, "stateMachineArn": sm, "name": "other", "status": "RUNNING",
                              "startDate": T0}]}
    s.add_response("list_executions", listed, {"stateMachineArn": sm, "maxResults": 20})
    s.add_response("describe_execution", execution(other, "manifests/another.csv"), {"executionArn": other})
    # the start Lambda has not started it yet; on the next poll it has
    listed2 = {"executions": [{"executionArn": mine, "stateMachineArn": sm, "name": "mine", "status": "RUNNING",
                               "startDate": T0}] + listed["executions"]}
    s.add_response("list_executions", listed2, {"stateMachineArn": sm, "maxResults": 20})
    s.add_response("describe_execution", execution(mine, key), {"executionArn": mine})  # `other` is not asked again
    fake = FakeTime()
    arn = run_watch.await_start_by_trigger(stubbed.sfn, stubbed.s3, state_machine_arn=sm, bucket="trigger", key=key,
                                           pace=Pace(sleep=fake.sleep, clock=fake.clock))
    assert arn == mine and fake.waits == [2.0]
