"""Fault: S3 events delivered twice, late, or for a request replaced while its run is going.

S3 delivers events at least once and in no guaranteed order. ffleet must start exactly one run per
request *version*: the execution name derives from bucket, key and version id, and the start logic
reads the request at that version, so a late event for an old version can neither start a second
run nor start a run with the new version's content.
"""
from __future__ import annotations

import json

import pytest
from moto import mock_aws

from conftest import EVENTS
from ffleet.trigger import handle_s3_event

TRIGGER, RESULTS = "ffleet-trigger-t", "ffleet-results-t"


def _request(name: str, options: str) -> dict:
    return {"name": name, "compute": "intel",
            "input": {"s3_bucket": "media-in", "s3_prefix": "in/"},
            "output": {"s3_bucket": "media-out", "s3_prefix": "out/", "file_options": options}}


def _event(key: str, version: str, etag: str) -> dict:
    from urllib.parse import quote_plus

    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = TRIGGER
    obj["object"].update({"key": quote_plus(key, safe="/"), "versionId": version, "eTag": etag})
    return event


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        for b in (TRIGGER, RESULTS):
            s3.create_bucket(Bucket=b)
        s3.put_bucket_versioning(Bucket=TRIGGER, VersioningConfiguration={"Status": "Enabled"})
        sm = sfn.create_state_machine(
            name="ffleet-pipeline", roleArn="arn:aws:iam::123456789012:role/sfn",
            definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
        )["stateMachineArn"]
        yield s3, sfn, sm


def _start(aws, event):
    s3, sfn, sm = aws
    return handle_s3_event(event, s3=s3, sfn=sfn, state_machine_arn=sm, results_bucket=RESULTS)


def _executions(aws):
    s3, sfn, sm = aws
    return sfn.list_executions(stateMachineArn=aws[2])["executions"]


def test_same_event_twice_starts_one_run(aws):
    s3 = aws[0]
    put = s3.put_object(Bucket=TRIGGER, Key="jobs/a b.json", Body=json.dumps(_request("dup", "-ac 1")).encode())
    event = _event("jobs/a b.json", put["VersionId"], put["ETag"].strip('"'))
    first, second = _start(aws, event), _start(aws, event)
    # While the run is going, StartExecution with the same name and input is idempotent on AWS: it
    # returns the running execution (so the second delivery may be logged as "started"); once the
    # run has ended it answers ExecutionAlreadyExists. Either way: one run.
    arns = {o["execution_arn"] for o in first.started + second.started + second.already_running}
    assert len(arns) == 1
    assert len(_executions(aws)) == 1


def test_replaced_request_and_late_old_event(aws):
    """v1 is uploaded, then replaced by v2 while v1's run goes on; v1's event is then delivered
    again after v2's. Two runs (one per version), each with its own version's options."""
    s3, sfn, _ = aws
    v1 = s3.put_object(Bucket=TRIGGER, Key="jobs/r.json", Body=json.dumps(_request("redo", "-ac 1")).encode())
    e1 = _event("jobs/r.json", v1["VersionId"], v1["ETag"].strip('"'))
    assert len(_start(aws, e1).started) == 1
    v2 = s3.put_object(Bucket=TRIGGER, Key="jobs/r.json", Body=json.dumps(_request("redo", "-ac 2")).encode())
    e2 = _event("jobs/r.json", v2["VersionId"], v2["ETag"].strip('"'))
    assert len(_start(aws, e2).started) == 1
    late = _start(aws, e1)  # out of order: the old version's event again, after the new one
    assert not late.rejected
    runs = _executions(aws)
    assert len(runs) == 2
    options = sorted(
        json.loads(sfn.describe_execution(executionArn=r["executionArn"])["input"])["request"]["output"]["file_options"]
        for r in runs
    )
    assert options == ["-ac 1", "-ac 2"]  # each run carries its own version, never the latest twice


def test_old_event_processed_after_replacement_reads_its_own_version(aws):
    """v1 and v2 are both uploaded before either event is handled, and v2's event comes first.
    v1's run must carry v1's content: the request is read at the event's version, not the latest."""
    s3, sfn, _ = aws
    v1 = s3.put_object(Bucket=TRIGGER, Key="jobs/x.json", Body=json.dumps(_request("race", "-ac 1")).encode())
    v2 = s3.put_object(Bucket=TRIGGER, Key="jobs/x.json", Body=json.dumps(_request("race", "-ac 2")).encode())
    _start(aws, _event("jobs/x.json", v2["VersionId"], v2["ETag"].strip('"')))
    _start(aws, _event("jobs/x.json", v1["VersionId"], v1["ETag"].strip('"')))
    inputs = [json.loads(sfn.describe_execution(executionArn=r["executionArn"])["input"]) for r in _executions(aws)]
    by_version = {i["trigger"]["version"]: i["request"]["output"]["file_options"] for i in inputs}
    assert by_version == {v1["VersionId"]: "-ac 1", v2["VersionId"]: "-ac 2"}
