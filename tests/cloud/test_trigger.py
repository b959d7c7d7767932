"""Start logic: key decoding, execution names, rejection notes, execution input, schedule events."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EVENTS
from ffleet.request import RequestError, parse_request
from ffleet.trigger import (
    MAX_EXECUTION_NAME,
    check_cloud_request,
    execution_input,
    execution_name,
    handle_s3_event,
    handle_schedule_event,
    is_schedule_event,
    manifest_source,
    s3_records,
)

NAME_RULE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def _request(**over) -> dict:
    req = {
        "name": "nightly.podcasts",
        "compute": "nvidia",
        "input": {"s3_bucket": "in", "s3_prefix": "media/", "file_options": "null"},
        "output": {"s3_bucket": "out", "s3_prefix": "mono/", "file_options": "-ac 1"},
        "processing": {"files_per_job": 250, "max_concurrency": 40, "tolerated_failure_percent": 2.5},
    }
    req.update(over)
    return req


def test_sample_event_key_is_decoded():
    (rec,) = s3_records(json.loads((EVENTS / "s3-put.json").read_text()))
    assert rec["key"] == "jobs/podcast episodes (ep 1).json"
    assert rec["version"] and rec["etag"]


def test_every_record_is_decoded_not_just_the_first():
    event = {"Records": [
        {"s3": {"bucket": {"name": "b"}, "object": {"key": "jobs/a+b.json"}}},
        {"s3": {"bucket": {"name": "b"}, "object": {"key": "jobs/c%2Bd+%C3%A9.json"}}},
    ]}
    assert [r["key"] for r in s3_records(event)] == ["jobs/a b.json", "jobs/c+d é.json"]


def test_execution_name_is_deterministic_and_distinguishes_versions():
    a = execution_name("run", "bucket", "jobs/x.json", "v1")
    assert a == execution_name("run", "bucket", "jobs/x.json", "v1")
    assert a != execution_name("run", "bucket", "jobs/x.json", "v2")
    assert a != execution_name("run", "bucket", "jobs/y.json", "v1")
    assert a.startswith("run-")


@settings(max_examples=200, deadline=None)
@given(label=st.text(max_size=200), parts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_execution_name_always_fits_step_functions_rules(label, parts):
    name = execution_name(label, *parts)
    assert NAME_RULE.match(name), name
    assert len(name) <= MAX_EXECUTION_NAME


def test_execution_input_carries_what_the_state_machine_reads():
    req = parse_request(_request())
    payload = execution_input(req, "nightly_podcasts-0123", "results-bkt", {"type": "s3"})
    assert payload["compute"] == "nvidia"
    assert payload["source"] == {"type": "prefix", "bucket": "in", "prefix": "media/"}
    assert payload["processing"] == {"files_per_job": 250, "max_concurrency": 40, "tolerated_failure_percent": 2.5}
    assert payload["results"] == {
        "bucket": "results-bkt",
        "key_prefix": "runs/nightly_podcasts-0123/",
        "writer_prefix": "runs/nightly_podcasts-0123",
        "uri": "s3://results-bkt/runs/nightly_podcasts-0123/",
    }
    # the worker writes its records where the run lives, whatever the request said
    assert parse_request(payload["request"]).results_location() == {
        "s3_bucket": "results-bkt", "s3_prefix": "runs/nightly_podcasts-0123/"}


@pytest.mark.parametrize("manifest, kind", [
    ("s3://in/lists/todo.csv", "csv"),
    ("s3://in/lists/todo.CSV", "csv"),
    ("s3://res/runs/x/failed-files.jsonl", "jsonl"),
    ("s3://in/lists/todo.ndjson", "jsonl"),
])
def test_manifest_source_type(manifest, kind):
    req = parse_request(_request(input={"s3_bucket": "in", "manifest": manifest}))
    src = manifest_source(req)
    assert src["type"] == kind and "s3://" + src["bucket"] + "/" + src["key"] == manifest
    assert execution_input(req, "n", "r", {})["source"] == src


@pytest.mark.parametrize("over, field", [
    ({"input": {"s3_bucket": "in", "manifest": "s3://in/list.txt"}}, "input.manifest"),
    ({"input": {"s3_bucket": "in", "manifest": "/home/me/list.csv"}}, "input.manifest"),
    ({"input": {"path": "/data/in"}}, "input.path"),
    ({"output": {"path": "/data/out"}}, "output.path"),
])
def test_requests_that_cannot_run_on_aws_are_refused(over, field):
    req = parse_request(_request(**over))
    with pytest.raises(RequestError) as exc:
        check_cloud_request(req)
    assert field in [f for f, _ in exc.value.problems]


class FakeSfn:
    """Records StartExecution calls; refuses a name it has seen, as Step Functions does."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions
        class ExecutionAlreadyExists(Exception):
            pass

    def __init__(self):
        self.calls = []

    def start_execution(self, stateMachineArn, name, input):  # noqa: A002, N803
        if any(c["name"] == name for c in self.calls):
            raise self.exceptions.ExecutionAlreadyExists(name)
        self.calls.append({"arn": stateMachineArn, "name": name, "input": json.loads(input)})
        return {"executionArn": stateMachineArn.replace(":stateMachine:", ":execution:") + ":" + name}


class FakeS3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = dict(objects)
        self.gets = []

    def get_object(self, Bucket, Key, VersionId=None):  # noqa: N803
        self.gets.append((Bucket, Key, VersionId))
        import io

        return {"Body": io.BytesIO(self.objects[Key])}

    def put_object(self, Bucket, Key, Body, ContentType=None):  # noqa: N803
        self.objects[Key] = Body


SM = "arn:aws:states:us-east-1:123456789012:stateMachine:ffleet-pipeline"


def test_s3_event_reads_the_exact_version_and_starts_once():
    event = json.loads((EVENTS / "s3-put.json").read_text())
    key = "jobs/podcast episodes (ep 1).json"
    s3, sfn = FakeS3({key: json.dumps(_request()).encode()}), FakeSfn()
    first = handle_s3_event(event, s3=s3, sfn=sfn, state_machine_arn=SM, results_bucket="res")
    again = handle_s3_event(event, s3=s3, sfn=sfn, state_machine_arn=SM, results_bucket="res")
    assert s3.gets[0] == ("ffleet-trigger-bucket", key, "3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrH")
    assert len(first.started) == 1 and not again.started
    assert again.already_running[0]["execution_arn"] == first.started[0]["execution_arn"]
    assert len(sfn.calls) == 1
    assert sfn.calls[0]["input"]["trigger"]["key"] == key


def test_invalid_request_writes_rejection_and_starts_nothing():
    event = {"Records": [{"s3": {"bucket": {"name": "t"}, "object": {"key": "jobs/bad.json", "eTag": "e"}}}]}
    s3, sfn = FakeS3({"jobs/bad.json": b"{not json"}), FakeSfn()
    out = handle_s3_event(event, s3=s3, sfn=sfn, state_machine_arn=SM, results_bucket="res")
    assert not sfn.calls and len(out.rejected) == 1
    note = json.loads(s3.objects["jobs/bad.json.rejected.json"])
    assert note["valid"] is False and "not valid JSON" in note["errors"][0]["message"]


def test_schedule_event_uses_the_stack_request_and_dedupes_per_firing():
    event = json.loads((EVENTS / "schedule.json").read_text())
    assert is_schedule_event(event)
    sfn = FakeSfn()
    text = json.dumps(_request())
    out = handle_schedule_event(event, text, sfn=sfn, state_machine_arn=SM, results_bucket="res")
    dup = handle_schedule_event(event, text, sfn=sfn, state_machine_arn=SM, results_bucket="res")
    later = handle_schedule_event({**event, "time": "2026-01-02T03:00:00Z"}, text, sfn=sfn,
                                  state_machine_arn=SM, results_bucket="res")
    assert len(out.started) == 1 and dup.already_running and len(later.started) == 1
    assert len(sfn.calls) == 2


def test_schedule_without_request_names_the_parameter():
    with pytest.raises(RequestError, match="ScheduledRequest"):
        handle_schedule_event(json.loads((EVENTS / "schedule.json").read_text()), "  ",
                              sfn=FakeSfn(), state_machine_arn=SM, results_bucket="res")
