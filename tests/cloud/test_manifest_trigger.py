"""Manifests as triggers: the start logic with S3 events under moto, for every kind of drop, and one manifest end to end."""
from __future__ import annotations

import json
import re
from urllib.parse import quote_plus

import pytest

from cloudkit import template  # noqa: F401 (fixture)
from ffleet.joblimits import StackLimits, job_timing
from ffleet.manifest_trigger import (
    MAX_REQUEST_BYTES, RUN_KEYS_FILE, Rejected, csv_keys, handle_trigger_event, jsonl_keys,
)
from ffleet.request import parse_request

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402

# the moto pipeline's fixtures and helpers (the shipped ASL, adapted for moto; a stand-in worker)
from test_pipeline_moto import FAIL_MARK, FakeContext, _history_names, _keys, _wait, cloud, summarize_handler  # noqa: E402,F401

REGION = "us-east-1"
TRIGGER, RESULTS, MEDIA, OUT = "ffleet-trigger", "ffleet-results", "media-in", "media-out"
DEFAULT = {
    "name": "nightly",
    "compute": "arm",
    "input": {"file_options": "null", "extensions": [".wav"]},
    "output": {"s3_bucket": OUT, "s3_prefix": "mono/", "file_options": "-ac 1"},
    "processing": {"files_per_job": 2, "tolerated_failure_percent": 5},
}
AWKWARD = ["in/a b.wav", "in/a+b.wav", "in/ü é 日本.wav", "in/comma, and \"quotes\".wav", "in/100%.wav"]


@pytest.fixture
def stack(monkeypatch):
    """moto S3 and Step Functions (executions recorded, not run) and a call of the start logic."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name=REGION)
        for b in (TRIGGER, RESULTS, MEDIA, OUT):
            s3.create_bucket(Bucket=b)
        s3.put_bucket_versioning(Bucket=TRIGGER, VersioningConfiguration={"Status": "Enabled"})
        sfn = boto3.client("stepfunctions", region_name=REGION)
        role = boto3.client("iam", region_name=REGION).create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        sm = sfn.create_state_machine(name="ffleet-pipeline", roleArn=role, definition=json.dumps(
            {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}))["stateMachineArn"]

        class Stack:
            def fire(self, event, default=DEFAULT, input_bucket=MEDIA, limits=None):
                text = json.dumps(default) if isinstance(default, dict) else default
                return handle_trigger_event(event, s3=s3, sfn=sfn, state_machine_arn=sm, results_bucket=RESULTS,
                                            input_bucket=input_bucket, output_bucket=OUT, limits=limits,
                                            default_request=text)

            def executions(self):
                return sfn.list_executions(stateMachineArn=sm)["executions"]

            def execution_input(self, arn):
                return json.loads(sfn.describe_execution(executionArn=arn)["input"])

            def read(self, bucket, key):
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

            def rejection(self, key):
                return json.loads(self.read(TRIGGER, key + ".rejected.json"))

        st = Stack()
        st.s3, st.sfn, st.sm = s3, sfn, sm
        yield st


def drop(s3, key: str, body: bytes, bucket: str = TRIGGER) -> dict:
    """Upload an object and return the event S3 sends for it: key URL-encoded ('+' for a space)."""
    resp = s3.put_object(Bucket=bucket, Key=key, Body=body)
    return {"Records": [{
        "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {
            "key": quote_plus(key, safe="/"), "size": len(body), "versionId": resp.get("VersionId", ""),
            "eTag": resp["ETag"].strip('"'), "sequencer": "0A1B2C"}},
    }]}


def run_keys(stack, arn: str) -> list[str]:
    source = stack.execution_input(arn)["source"]
    assert source["type"] == "jsonl" and source["bucket"] == RESULTS
    # lines end at '\n' only: a key may hold U+2028 or U+0085 (json.dumps(ensure_ascii=False) keeps them raw)
    return [json.loads(line)["key"] for line in stack.read(RESULTS, source["key"]).decode().split("\n") if line]


# --- manifests that start a run -----------------------------------------------------------------
def test_csv_with_key_column_runs_those_keys_with_the_default_request(stack):
    out = stack.fire(drop(stack.s3, "manifests/todo.csv", b"note,Key\nfirst,in/x.wav\nsecond,in/y.wav\n"))
    assert len(out.started) == 1 and not out.rejected, out
    arn = out.started[0]["execution_arn"]
    assert run_keys(stack, arn) == ["in/x.wav", "in/y.wav"]
    payload = stack.execution_input(arn)
    name = payload["execution_name"]
    assert payload["source"]["key"] == f"runs/{name}/{RUN_KEYS_FILE}" and name.startswith("nightly-")
    req = payload["request"]
    # the manifest gives the keys, the stack the input bucket, the default request everything else
    assert req["input"]["s3_bucket"] == MEDIA and req["input"]["s3_prefix"] == ""
    assert req["input"]["manifest"] == f"s3://{RESULTS}/runs/{name}/{RUN_KEYS_FILE}"
    assert req["input"]["extensions"] == [".wav"]
    assert req["output"]["s3_prefix"] == "mono/" and payload["compute"] == "arm"
    assert payload["processing"]["files_per_job"] == 2 and payload["processing"]["tolerated_failure_percent"] == 5
    assert payload["trigger"]["type"] == "s3-manifest" and payload["trigger"]["keys"] == 2


@pytest.mark.parametrize("body, keys", [
    (b"in/a.wav\nin/b c.wav\n\n", ["in/a.wav", "in/b c.wav"]),  # no header: every line a key, blank lines skipped
    (b"\xef\xbb\xbfKEY\r\nin/a.wav\r\n", ["in/a.wav"]),  # a BOM and CRLF (Excel), a header in any case
    (b"in/a.wav", ["in/a.wav"]),  # no final newline
    (b"key\nin/a.wav\nin/a.wav\nin/b.wav\n", ["in/a.wav", "in/b.wav"]),  # each key once
    (b"\n\nin/a,b.wav\nin/\"q\".wav\n", ["in/a,b.wav", 'in/"q".wav']),  # no header: each line whole
    (b'n,KEY\n1,"in/a,b.wav"\n2,\n3,in/c.wav\n', ["in/a,b.wav", "in/c.wav"]),  # quoted; an empty key skipped
])
def test_csv_forms(stack, body, keys):
    out = stack.fire(drop(stack.s3, "manifests/list.csv", body))
    assert out.started, out
    assert run_keys(stack, out.started[0]["execution_arn"]) == keys


@pytest.mark.parametrize("ext", [".jsonl", ".ndjson", ".JSONL"])
def test_json_lines(stack, ext):
    body = b'{"key": "in/a.wav", "size": 3}\n\n{"Key": "in/b.wav"}\n'
    out = stack.fire(drop(stack.s3, f"manifests/list{ext}", body))
    assert out.started, out
    assert run_keys(stack, out.started[0]["execution_arn"]) == ["in/a.wav", "in/b.wav"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_awkward_keys_are_taken_from_the_file_as_written_not_url_decoded(stack, fmt):
    import csv
    import io

    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([["key"]] + [[k] for k in AWKWARD])
        body = buf.getvalue().encode()
    else:
        body = "".join(json.dumps({"key": k}, ensure_ascii=False) + "\n" for k in AWKWARD).encode()
    # the object's own name is awkward too: it arrives URL-encoded in the event
    key = f"manifests/my list+1 é.{fmt}"
    event = drop(stack.s3, key, body)
    assert "+" in event["Records"][0]["s3"]["object"]["key"] and "%2B" in event["Records"][0]["s3"]["object"]["key"]
    out = stack.fire(event)
    assert out.started and out.started[0]["manifest"] == f"s3://{TRIGGER}/{key}", out
    assert run_keys(stack, out.started[0]["execution_arn"]) == AWKWARD
    assert stack.execution_input(out.started[0]["execution_arn"])["trigger"]["key"] == key


def test_duplicate_event_starts_one_run_and_a_new_version_another(stack):
    event = drop(stack.s3, "manifests/todo.csv", b"in/a.wav\n")
    first = stack.fire(event)
    again = stack.fire(event)
    # Step Functions answers a repeated name with the same input as a success while the run is
    # RUNNING (moto here) and with ExecutionAlreadyExists after it: either way one run, one ARN.
    arn = first.started[0]["execution_arn"]
    assert [e["execution_arn"] for e in again.started + again.already_running] == [arn]
    assert len(stack.executions()) == 1
    stack.sfn.stop_execution(executionArn=arn)
    late = stack.fire(event)
    assert late.started == [] and late.already_running[0]["execution_arn"] == arn
    newer = stack.fire(drop(stack.s3, "manifests/todo.csv", b"in/a.wav\n"))
    assert len(newer.started) == 1 and len(stack.executions()) == 2


def test_start_handler_reads_default_request_and_input_bucket_from_its_environment(stack, monkeypatch):
    import importlib.util
    import uuid

    from cloudkit import REPO

    monkeypatch.setenv("STATE_MACHINE_ARN", stack.sm)
    monkeypatch.setenv("RESULTS_BUCKET", RESULTS)
    monkeypatch.setenv("INPUT_BUCKET", MEDIA)
    monkeypatch.setenv("OUTPUT_BUCKET", OUT)
    monkeypatch.setenv("DEFAULT_REQUEST", json.dumps(DEFAULT))
    monkeypatch.setenv("JOB_VCPUS", "1")
    monkeypatch.setenv("JOB_ATTEMPTS", "7")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ffleet")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ffleet")
    spec = importlib.util.spec_from_file_location(f"start_{uuid.uuid4().hex}", REPO / "functions" / "start" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    class Ctx:
        function_name, memory_limit_in_mb, aws_request_id = "ffleet-start", 512, "r"
        invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:ffleet-start"

    out = app.handler(drop(stack.s3, "manifests/a.csv", b"in/a.wav\n"), Ctx())
    assert len(out["started"]) == 1, out
    payload = stack.execution_input(out["started"][0]["execution_arn"])
    assert payload["request"]["input"]["s3_bucket"] == MEDIA
    # the manifest run's job limits come from the stack's parameters, as a request's do
    expected = job_timing(parse_request(payload["request"]), StackLimits(job_vcpus=1, job_attempts=7))
    assert payload["job_timing"] == expected != job_timing(parse_request(payload["request"]), StackLimits())
    # and its DefaultRequest is held to the stack's output bucket
    monkeypatch.setenv("DEFAULT_REQUEST", json.dumps({**DEFAULT, "output": {**DEFAULT["output"], "s3_bucket": "other"}}))
    spec.loader.exec_module(app)
    out = app.handler(drop(stack.s3, "manifests/b.csv", b"in/a.wav\n"), Ctx())
    assert not out["started"] and out["rejected"][0]["errors"][0]["field"] == "DefaultRequest: output.s3_bucket", out


# --- manifests that start nothing, and say why --------------------------------------------------
def test_without_a_default_request_the_manifest_is_rejected_with_both_ways_out(stack):
    out = stack.fire(drop(stack.s3, "manifests/todo.csv", b"in/a.wav\n"), default="")
    assert not out.started and len(out.rejected) == 1 and stack.executions() == []
    note = stack.rejection("manifests/todo.csv")
    assert note["valid"] is False and note["manifest"] == f"s3://{TRIGGER}/manifests/todo.csv"
    assert note["errors"][0]["field"] == "DefaultRequest"
    assert "DefaultRequest" in note["hint"] and "--parameter-overrides" in note["hint"]
    assert "jobs/" in note["hint"] and '"manifest"' in note["hint"]


@pytest.mark.parametrize("default, field", [
    ({**DEFAULT, "input": {"s3_bucket": "elsewhere"}}, "DefaultRequest.input.s3_bucket"),
    ({**DEFAULT, "input": {"s3_prefix": "media/"}}, "DefaultRequest.input.s3_prefix"),
    ({**DEFAULT, "compute": "quantum"}, "DefaultRequest: compute"),
    ({k: v for k, v in DEFAULT.items() if k != "output"}, "DefaultRequest: output"),
    ("{not json", "DefaultRequest"),
    ("[1]", "DefaultRequest"),
    # the stack's roles reach only its own buckets (trigger.check_stack_buckets, as for a request under jobs/)
    ({**DEFAULT, "output": {**DEFAULT["output"], "s3_bucket": "elsewhere"}}, "DefaultRequest: output.s3_bucket"),
])
def test_an_invalid_default_request_is_named_in_the_rejection(stack, default, field):
    out = stack.fire(drop(stack.s3, "manifests/todo.csv", b"in/a.wav\n"), default=default)
    assert not out.started and stack.executions() == []
    note = stack.rejection("manifests/todo.csv")
    assert field in [e["field"] for e in note["errors"]], note
    assert "DefaultRequest" in note["hint"]


@pytest.mark.parametrize("key, body, field, words", [
    ("manifests/list.txt", b"in/a.wav\n", "(file)", ["not a manifest", ".csv", ".jsonl"]),
    ("manifests/req.json", b"{}", "(file)", ["not a manifest", "jobs/"]),
    ("manifests/empty.csv", b"", "(file)", ["empty"]),
    ("manifests/latin1.csv", b"key\nin/caf\xe9.wav\n", "(file)", ["not UTF-8", "byte 10"]),
    ("manifests/header-only.csv", b"key\n\n", "(file)", ["names no keys"]),
    ("manifests/comma.csv", b"key\nin/a.wav\nin/b,c.wav\n", "line 3", ["2 fields", "quote"]),
    ("manifests/open-quote.csv", b'key,n\n"in/a.wav,1\nin/b.wav,2\n', "line 3", ["not valid CSV"]),  # where the data ran out
    ("manifests/hole.csv", b"key,n\n,1\n  ,2\n", "(file)", ["names no keys"]),
    ("manifests/bad.jsonl", b'{"key": "in/a.wav"}\n{"key": \n', "line 2", ["not JSON"]),
    ("manifests/nokey.ndjson", b'{"path": "in/a.wav"}\n', "line 1", ['"key"']),
    ("manifests/deep.jsonl", b"[" * 100_000 + b"\n", "line 1", ["nested too deeply"]),
    ("manifests/digits.jsonl", b'{"key": "in/a.wav", "size": ' + b"9" * 5000 + b"}\n", "line 1", ["number too long"]),
    ("manifests/long.csv", b"x" * 1025 + b"\n", "line 1", ["1024 bytes"]),
    ("jobs/req.yaml", b"name: x\n", "(file)", ["not a request", ".json"]),
    ("jobs/list.csv", b"in/a.wav\n", "(file)", ["not a request", "manifests/"]),
    ("jobs/empty.json", b"", "(file)", ["empty"]),
    ("jobs/latin1.json", b'{"name": "caf\xe9"}', "(request)", ["utf-8"]),
    ("jobs/huge.json", b"{" + b" " * MAX_REQUEST_BYTES + b"}", "(file)", ["at most 262144", "manifest"]),
])
def test_anything_else_dropped_gets_a_note_naming_the_problem(stack, key, body, field, words):
    out = stack.fire(drop(stack.s3, key, body))
    assert not out.started and len(out.rejected) == 1 and stack.executions() == []
    note = stack.rejection(key)
    assert note["valid"] is False and note["hint"]
    (error,) = [e for e in note["errors"] if e["field"] == field] or [None]
    assert error is not None, note
    for w in words:
        assert w.lower() in error["message"].lower(), (w, error)


def test_own_notes_and_folder_markers_are_ignored_not_answered(stack):
    stack.fire(drop(stack.s3, "manifests/list.txt", b"x\n"))
    note_key = "manifests/list.txt.rejected.json"
    before = stack.read(TRIGGER, note_key)
    out = stack.fire(drop(stack.s3, "manifests/", b""))  # the console's "folder"
    assert out.ignored and not out.rejected
    # the note's own event (prefix filters deliver it) must not be answered with a note about the note
    echo = {"Records": [{"s3": {"bucket": {"name": TRIGGER}, "object": {"key": quote_plus(note_key, safe="/"), "size": 10}}}]}
    out = stack.fire(echo)
    assert out.ignored == [f"s3://{TRIGGER}/{note_key}"] and not out.rejected
    assert stack.read(TRIGGER, note_key) == before
    keys = [o["Key"] for o in stack.s3.list_objects_v2(Bucket=TRIGGER)["Contents"]]
    assert not any(k.endswith(".rejected.json.rejected.json") for k in keys)


def test_requests_under_jobs_still_start_as_before(stack):
    req = {**DEFAULT, "input": {"s3_bucket": MEDIA, "s3_prefix": "in/"}}
    out = stack.fire(drop(stack.s3, "jobs/nightly run.json", json.dumps(req).encode()))
    assert len(out.started) == 1 and out.started[0]["request"] == f"s3://{TRIGGER}/jobs/nightly run.json"
    assert stack.execution_input(out.started[0]["execution_arn"])["source"] == {"type": "prefix", "bucket": MEDIA, "prefix": "in/"}


# --- failed-files.jsonl re-drives with its own run's options ---------------------------------------
def _recorded_run(stack, run: str, request: dict) -> None:
    stack.s3.put_object(Bucket=RESULTS, Key=f"runs/{run}/request.json", Body=json.dumps(request).encode())


def test_failed_files_redrive_uses_the_recorded_request_not_the_default(stack):
    old = {**DEFAULT, "name": "archive", "compute": "nvidia",
           "input": {"s3_bucket": MEDIA, "s3_prefix": "media/", "file_options": "-ss 1"},
           "output": {"s3_bucket": OUT, "s3_prefix": "flac/", "extension": ".flac"},
           "results": {"s3_bucket": RESULTS, "s3_prefix": "runs/archive-0123456789abcdef/"}}
    _recorded_run(stack, "archive-0123456789abcdef", old)
    lines = [{"key": k, "reason": "batch_job_failed", "detail": "x", "run": "archive-0123456789abcdef"}
             for k in ("media/a.wav", "media/b c.wav")]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out = stack.fire(drop(stack.s3, "manifests/failed-files.jsonl", body), default="")
    assert len(out.started) == 1, out
    payload = stack.execution_input(out.started[0]["execution_arn"])
    assert payload["execution_name"].startswith("archive-redrive-")
    assert payload["compute"] == "nvidia" and payload["trigger"]["redrive_of"] == "archive-0123456789abcdef"
    req = payload["request"]
    assert req["input"]["s3_bucket"] == MEDIA and req["input"]["file_options"] == "-ss 1"
    assert req["input"]["s3_prefix"] == "" and req["output"]["extension"] == ".flac"
    assert req["results"]["s3_prefix"] == f"runs/{payload['execution_name']}/"
    assert run_keys(stack, out.started[0]["execution_arn"]) == ["media/a.wav", "media/b c.wav"]


def test_failed_files_of_a_run_on_another_input_bucket_are_rejected_naming_it(stack):
    # the stack's input bucket changed since that run: its keys are no longer readable
    _recorded_run(stack, "r1", {**DEFAULT, "input": {"s3_bucket": "old-input", "s3_prefix": ""}})
    out = stack.fire(drop(stack.s3, "manifests/failed-files.jsonl", b'{"key": "a.wav", "run": "r1"}\n'))
    assert not out.started and stack.executions() == []
    errors = stack.rejection("manifests/failed-files.jsonl")["errors"]
    assert errors[0]["field"] == "runs/r1/request.json: input.s3_bucket" and "'old-input'" in errors[0]["message"]


def test_manifest_runs_take_the_stack_limits_given(stack):
    limits = StackLimits(job_vcpus=2, job_attempts=9, capacity_wait_seconds=7200)
    out = stack.fire(drop(stack.s3, "manifests/todo.csv", b"in/a.wav\n"), limits=limits)
    payload = stack.execution_input(out.started[0]["execution_arn"])
    assert payload["job_timing"] == job_timing(parse_request(payload["request"]), limits)
    assert payload["job_timing"] != job_timing(parse_request(payload["request"]), StackLimits())


@pytest.mark.parametrize("lines, words", [
    ([{"key": "a", "run": "r1"}, {"key": "b", "run": "r2"}], ["more than one run"]),
    ([{"key": "a", "run": "r1"}, {"key": "b"}], ["more than one run"]),
    ([{"key": "a", "run": "no-such-run"}], ["no-such-run", "request.json"]),
    ([{"key": "a", "run": "../../etc"}], ["not a run"]),
])
def test_failed_files_that_cannot_be_traced_to_one_run_are_rejected(stack, lines, words):
    _recorded_run(stack, "r1", {**DEFAULT, "input": {"s3_bucket": MEDIA, "s3_prefix": ""}})
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    out = stack.fire(drop(stack.s3, "manifests/failed-files.jsonl", body))
    assert not out.started and stack.executions() == []
    message = " ".join(e["message"] for e in stack.rejection("manifests/failed-files.jsonl")["errors"])
    for w in words:
        assert w in message, message


# --- the parsers on their own ---------------------------------------------------------------------
def test_a_key_named_key_without_header_is_read_as_the_header():
    # documented: a first row whose only cell is "key" (any case) is the header
    assert [k for _, k, _ in csv_keys(["Key\n", "in/a.wav\n"], "m")] == ["in/a.wav"]
    assert [k for _, k, _ in csv_keys(["in/key\n", "in/a.wav\n"], "m")] == ["in/key", "in/a.wav"]


@pytest.mark.parametrize("text", [
    "KEY\nin/a.wav\n", " Key ,n\nin/a.wav,1\n", "object_key,key\nin/o.wav,in/k.wav\n", "S3_KEY\nin/a.wav\n",
    'in/a.wav\n"in/b,c.wav"\n"in/q"x".wav\n', "in/line\u2028sep.wav\nin/nel\x85.wav\r\nin/ff\x0c.wav\n",
    '\n\nkey,n\n"in/multi\nline.wav",1\n\n,\n', '{"key": "in/j.wav"}\n',
    "n,key\n1\n", 'key\n"open.wav\nb.wav\n', "key\nc,d.wav\n", 'key\n"a.wav"x\n',
])
def test_a_csv_means_the_same_locally_and_in_the_trigger(stack, text):
    from ffleet.inventory import parse_manifest

    try:
        local = [o.key for o in parse_manifest(text.encode(), "m.csv")]
    except ValueError as exc:
        local = "line " + re.search(r" line (\d+):", str(exc))[1]
    out = stack.fire(drop(stack.s3, "manifests/m.csv", text.encode()))
    cloud = run_keys(stack, out.started[0]["execution_arn"]) if out.started else out.rejected[0]["errors"][0]["field"]
    assert cloud == local


def test_keys_keep_their_spaces_and_quotes():
    lines = [' in/lead.wav \r\n', '"in/a,b.wav"\n', 'in/"x", y.wav\n']
    assert [k for _, k, _ in csv_keys(lines, "m")] == [" in/lead.wav ", "in/a,b.wav", 'in/"x", y.wav']
    assert [r for _, _, r in jsonl_keys(['{"key": "a", "run": "x"}\n'], "m")] == ["x"]
    with pytest.raises(Rejected):
        list(jsonl_keys(['["a"]\n'], "m"))


# --- the template wires it -----------------------------------------------------------------------
def test_template_delivers_manifests_and_lets_the_function_answer(template):
    fn = template["Resources"]["StartFunction"]["Properties"]
    rules = fn["Events"]["ManifestDropped"]["Properties"]["Filter"]["S3Key"]["Rules"]
    # no suffix rule: a wrong extension must reach the function to be answered
    assert {r["Name"]: r["Value"] for r in rules} == {"prefix": "manifests/"}
    assert fn["Environment"]["Variables"]["DEFAULT_REQUEST"] == {"Ref": "DefaultRequest"}
    assert fn["Environment"]["Variables"]["INPUT_BUCKET"] == {"Ref": "InputBucketName"}
    assert template["Parameters"]["DefaultRequest"]["Default"] == ""
    statements = {s["Sid"]: s for s in fn["Policies"][0]["Statement"]}
    text = json.dumps(statements)
    assert "/manifests/*" in json.dumps(statements["ReadRequests"]["Resource"])
    assert "/manifests/*.rejected.json" in json.dumps(statements["WriteRejections"]["Resource"])
    assert f"runs/*/{RUN_KEYS_FILE}" in text and "runs/*/request.json" in text


# --- end to end under moto: the shipped state machine runs a dropped manifest, then its failures ---
def _json_lines_for_moto(monkeypatch):
    """moto has no JSONL ItemReader (test_pipeline_moto renames the branch's InputType to JSON); let its
    JSON reader read JSON Lines too, so the branch a manifest drop takes runs here. Test-only."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader.eval.resource_output_transformer import (
        transformer_json,
    )

    class JsonOrLines:
        @staticmethod
        def loads(text):
            if text.lstrip().startswith("["):
                return json.loads(text)
            return [json.loads(line) for line in text.splitlines() if line.strip()]

    monkeypatch.setattr(transformer_json, "json", JsonOrLines)


def _batch_items(cloud, run: str) -> list[dict]:
    items = []
    for key in _keys(cloud.s3, RESULTS, f"runs/{run}/batches/"):
        items += json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=key)["Body"].read())["Items"]
    return items


def test_manifest_drop_runs_end_to_end_and_its_failed_files_re_drive_with_its_options(cloud, monkeypatch):
    _json_lines_for_moto(monkeypatch)
    keys = ["in/a.wav", "in/b c+d.wav", f"in/ü {FAIL_MARK}.wav"]
    for k in keys:
        cloud.s3.put_object(Bucket=MEDIA, Key=k, Body=b"RIFF")
    default = {**DEFAULT, "processing": {"files_per_job": 1, "tolerated_failure_percent": 50}}
    monkeypatch.setattr(cloud.start, "DEFAULT_REQUEST", json.dumps(default))
    monkeypatch.setattr(cloud.start, "INPUT_BUCKET", MEDIA)

    body = ("key\n" + "".join(f'"{k}"\n' for k in keys)).encode()
    out = cloud.start.handler(drop(cloud.s3, "manifests/tonight's list.csv", body), FakeContext())
    assert len(out["started"]) == 1 and not out["rejected"], out
    desc = _wait(cloud.sfn, out["started"][0]["execution_arn"])
    assert desc["status"] == "SUCCEEDED", desc
    assert "Process JSON Lines manifest" in _history_names(cloud.sfn, desc["executionArn"])
    run = desc["executionArn"].rsplit(":", 1)[1]
    assert sorted(i["key"] for i in _batch_items(cloud, run)) == sorted(keys)
    summary = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=f"runs/{run}/summary.json")["Body"].read())
    # a failed Batch job's files count as failed (as in test_pipeline_moto), and are listed for a re-drive
    assert summary["files"]["succeeded"] == 2 and summary["files"]["failed"] == 1, summary["files"]

    # The run's failed-files.jsonl names the run; the summarizer recorded its request beside it.
    failed = cloud.s3.get_object(Bucket=RESULTS, Key=f"runs/{run}/failed-files.jsonl")["Body"].read()
    assert [json.loads(line)["run"] for line in failed.splitlines()] == [run]
    recorded = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=f"runs/{run}/request.json")["Body"].read())
    assert recorded["output"]["s3_prefix"] == "mono/"

    # Copied as is under manifests/, it re-drives those files with that run's options, even with
    # no default request configured any more.
    monkeypatch.setattr(cloud.start, "DEFAULT_REQUEST", "")
    cloud.s3.copy_object(Bucket=TRIGGER, Key="manifests/failed-files.jsonl",
                         CopySource={"Bucket": RESULTS, "Key": f"runs/{run}/failed-files.jsonl"})
    again = cloud.start.handler(_event_for(cloud, "manifests/failed-files.jsonl"), FakeContext())
    assert len(again["started"]) == 1 and not again["rejected"], again
    desc2 = _wait(cloud.sfn, again["started"][0]["execution_arn"])
    # its one file fails again: 100% is over the recorded request's 50% tolerance, so the execution FAILS
    assert desc2["status"] == "FAILED" and "Process JSON Lines manifest" in _history_names(cloud.sfn, desc2["executionArn"]), desc2
    run2 = desc2["executionArn"].rsplit(":", 1)[1]
    assert run2.startswith("nightly-redrive-")
    items = _batch_items(cloud, run2)
    assert [i["key"] for i in items] == [f"in/ü {FAIL_MARK}.wav"]
    batch = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=_keys(cloud.s3, RESULTS, f"runs/{run2}/batches/")[0])["Body"].read())
    request = batch["BatchInput"]["request"]
    assert request["output"] == recorded["output"] and request["compute"] == "arm"
    assert request["input"]["extensions"] == [".wav"] and request["input"]["s3_bucket"] == MEDIA


def _event_for(cloud, key: str) -> dict:
    head = cloud.s3.head_object(Bucket=TRIGGER, Key=key)
    return {"Records": [{"s3": {"bucket": {"name": TRIGGER}, "object": {
        "key": quote_plus(key, safe="/"), "size": head["ContentLength"], "versionId": head.get("VersionId", ""),
        "eTag": head["ETag"].strip('"')}}}]}


# --- ffleet submit with a manifest -----------------------------------------------------------------
def _cfn_template(default_request: str) -> str:
    return json.dumps({
        "Parameters": {"DefaultRequest": {"Type": "String", "Default": default_request}},
        "Resources": {"Trigger": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "ffleet-trigger-submit"}}},
        "Outputs": {"TriggerBucketName": {"Value": {"Ref": "Trigger"}}, "ResultsBucketName": {"Value": RESULTS}},
    })


@pytest.fixture
def submit_stack(s3_endpoint, moto_server):
    import boto3

    cfn = boto3.client("cloudformation", endpoint_url=moto_server, region_name=REGION)

    def make(default_request: str) -> str:
        cfn.create_stack(StackName="ffleet-submit", TemplateBody=_cfn_template(default_request))
        return "ffleet-submit"

    yield make
    cfn.delete_stack(StackName="ffleet-submit")


def _uploaded(s3_endpoint) -> list[str]:
    return [o["Key"] for o in s3_endpoint.list_objects_v2(Bucket="ffleet-trigger-submit").get("Contents", [])]


def test_submit_uploads_a_manifest_under_manifests(submit_stack, s3_endpoint, tmp_path, moto_server):
    from conftest import run_cli

    stack = submit_stack(json.dumps(DEFAULT))
    path = tmp_path / "tonight list.csv"
    path.write_bytes("key\nin/a b.wav\nin/ü+1.wav\n".encode())
    proc = run_cli("submit", str(path), "--stack", stack, env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 0, proc.stderr
    (key,) = _uploaded(s3_endpoint)
    assert key.startswith("manifests/tonight_list/") and key.endswith(".csv")
    assert s3_endpoint.get_object(Bucket="ffleet-trigger-submit", Key=key)["Body"].read() == path.read_bytes()
    assert f"s3://ffleet-trigger-submit/{key}" in proc.stdout and ".rejected.json" in proc.stdout
    assert "2 keys" in proc.stdout and "DefaultRequest" in proc.stdout


def test_submit_refuses_a_manifest_the_stack_would_reject(submit_stack, s3_endpoint, tmp_path, moto_server):
    from conftest import run_cli

    stack = submit_stack("")
    good = tmp_path / "list.jsonl"
    good.write_text('{"key": "in/a.wav"}\n')
    proc = run_cli("submit", str(good), "--stack", stack, env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 2 and "DefaultRequest" in proc.stderr and '"manifest"' in proc.stderr
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"key\nin/caf\xe9.wav\n")
    proc = run_cli("submit", str(bad), "--stack", stack, env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr
    assert _uploaded(s3_endpoint) == []
    # a failed-files.jsonl brings its own run's request: no default needed
    redrive = tmp_path / "failed-files.jsonl"
    redrive.write_text('{"key": "in/a.wav", "reason": "timeout", "detail": "", "run": "nightly-0123456789abcdef"}\n')
    proc = run_cli("submit", str(redrive), "--stack", stack, env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 0, proc.stderr
    assert "nightly-0123456789abcdef" in proc.stdout and len(_uploaded(s3_endpoint)) == 1


def test_a_manifest_over_the_key_limit_is_rejected_with_the_way_out(stack, monkeypatch):
    import ffleet.manifest_trigger as mt

    monkeypatch.setattr(mt, "MAX_MANIFEST_KEYS", 2)
    ok = stack.fire(drop(stack.s3, "manifests/two.csv", b"a\nb\na\n"))  # a repeated key counts once
    assert ok.started, ok
    out = stack.fire(drop(stack.s3, "manifests/three.csv", b"a\nb\nc\n"))
    assert not out.started and len(stack.executions()) == 1
    note = stack.rejection("manifests/three.csv")
    assert "more than 2 keys" in note["errors"][0]["message"] and '"manifest"' in note["hint"]


def test_a_lone_surrogate_key_is_rejected_not_crashed_on(stack):
    out = stack.fire(drop(stack.s3, "manifests/odd.jsonl", b'{"key": "in/a\\ud800.wav"}\n'))
    assert not out.started
    assert "not valid Unicode" in stack.rejection("manifests/odd.jsonl")["errors"][0]["message"]


def test_sample_manifest_event_for_sam_local_invoke(stack):
    """events/s3-put-manifest.json (for `sam local invoke StartFunction -e ...`) names a manifest the start logic runs."""
    from conftest import EVENTS

    event = json.loads((EVENTS / "s3-put-manifest.json").read_text())
    key = "manifests/tonight's list (v2)+ü.csv"
    live = drop(stack.s3, key, b"key\nin/a.wav\n")  # the sample's version and ETag are not this moto object's
    event["Records"][0]["s3"]["bucket"]["name"] = TRIGGER
    event["Records"][0]["s3"]["object"].update(
        {k: live["Records"][0]["s3"]["object"][k] for k in ("versionId", "eTag", "size")})
    out = stack.fire(event)
    assert [s["manifest"] for s in out.started] == [f"s3://{TRIGGER}/{key}"], out
