"""Fault: requests built to crash or stall the validator (deep nesting, huge numbers, huge tokens,
empty fields). `ffleet validate`, `ffleet run` and the start Lambda must answer each with a message
naming the problem (exit 2, or a .rejected.json), never a traceback, and in time linear in the size."""
from __future__ import annotations

import gc
import json
import shlex
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from conftest import EVENTS, run_cli, write_json
from ffleet import shellwords
from ffleet.policy import OptionPolicyError, parse_options
from ffleet.request import MAX_REQUEST_BYTES, RequestError, parse_request, parse_request_text
from ffleet.trigger import REJECTED_SUFFIX, handle_s3_event

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = '{"name": %s}' % ("9" * 5000)


def _base(**over) -> dict:
    req = {"name": "limits", "input": {"s3_bucket": "in-bucket"}, "output": {"s3_bucket": "out-bucket"}}
    for k, v in over.items():
        req[k] = {**req.get(k, {}), **v}
    return req


def _problems(data) -> dict[str, str]:
    with pytest.raises(RequestError) as exc:
        parse_request(data) if isinstance(data, dict) else parse_request_text(data)
    return dict(exc.value.problems)


@pytest.mark.parametrize("text", [DEEP, '{"name": {"a": ' * 50_000 + "1" + "}" * 50_001, HUGE_INT],
                         ids=["deep-list", "deep-object", "5000-digit-int"])
def test_validate_answers_deep_nesting_and_huge_numbers_with_exit_2(tmp_path, text):
    path = tmp_path / "job.json"
    path.write_text(text)
    p = run_cli("validate", str(path))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "(request)" in p.stderr and str(path) in p.stderr, p.stderr


def test_a_request_over_256_kib_is_refused_by_validate_and_run(tmp_path):
    req = _base(output={"file_options": "-metadata title=" + "a" * MAX_REQUEST_BYTES})
    path = write_json(tmp_path / "job.json", req)
    for cmd in ("validate", "run"):
        p = run_cli(cmd, str(path), "--no-progress") if cmd == "run" else run_cli(cmd, str(path))
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "at most 262,144 bytes" in p.stderr, p.stderr


def test_a_request_of_exactly_256_kib_still_validates():
    filler = "a" * (MAX_REQUEST_BYTES - len(json.dumps(_base(output={"file_options": "-metadata title="}))))
    text = json.dumps(_base(output={"file_options": "-metadata title=" + filler}))
    assert len(text.encode()) == MAX_REQUEST_BYTES
    assert parse_request_text(text).output.file_options.endswith("a")


@pytest.mark.parametrize("where,field", [("input", "path"), ("output", "path"), ("input", "s3_bucket"),
                                         ("output", "s3_bucket"), ("input", "manifest"), ("results", "path")])
def test_empty_paths_and_buckets_are_refused_naming_the_field(where, field):
    """"path": "" validated, then failed as s3://None/ (the empty string counted as unset)."""
    req = _base()
    if field == "path" and where != "results":
        req[where] = {"path": ""}
    else:
        req.setdefault(where, {})[field] = "  " if field == "s3_bucket" else ""
    problems = _problems(req)
    assert f"{where}.{field}" in problems and "empty" in problems[f"{where}.{field}"], problems


@pytest.mark.parametrize("field,value", [("s3_prefix", "../"), ("s3_prefix", "out/../../"), ("s3_prefix", "./out/"),
                                         ("s3_prefix", "out/.."), ("s3_prefix", "out\n"), ("s3_suffix", "..")])
def test_dot_segments_and_control_characters_in_output_key_parts_are_refused(field, value):
    problems = _problems(_base(output={field: value}))
    assert f"output.{field}" in problems, problems
    if field == "s3_prefix":
        assert "results.s3_prefix" in _problems(_base(results={"s3_bucket": "r-bucket", "s3_prefix": value}))


# ---------------------------------------------------------------------------------------------
# The start Lambda: every hostile request ends as a .rejected.json, never as an exception

TRIGGER, RESULTS = "ffleet-trigger-h", "ffleet-results-h"


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        for b in (TRIGGER, RESULTS):
            s3.create_bucket(Bucket=b)
        sm = sfn.create_state_machine(
            name="ffleet-pipeline", roleArn="arn:aws:iam::123456789012:role/sfn",
            definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
        )["stateMachineArn"]
        yield s3, sfn, sm


@pytest.mark.parametrize("body", [
    DEEP, HUGE_INT, json.dumps(_base(output={"file_options": "-metadata title=" + "a" * MAX_REQUEST_BYTES})),
    json.dumps(_base(input={"s3_bucket": ""})),
], ids=["deep", "5000-digit-int", "over-256-kib", "empty-bucket"])
def test_the_start_lambda_writes_a_rejected_json_for_hostile_requests(aws, body):
    s3, sfn, sm = aws
    key = "jobs/hostile.json"
    s3.put_object(Bucket=TRIGGER, Key=key, Body=body.encode())
    event = json.loads((EVENTS / "s3-put.json").read_text())
    event["Records"][0]["s3"]["bucket"]["name"] = TRIGGER
    event["Records"][0]["s3"]["object"].update({"key": key, "versionId": None, "eTag": "e"})
    outcome = handle_s3_event(event, s3=s3, sfn=sfn, state_machine_arn=sm, results_bucket=RESULTS)
    assert not outcome.started and len(outcome.rejected) == 1
    doc = json.loads(s3.get_object(Bucket=TRIGGER, Key=key + REJECTED_SUFFIX)["Body"].read())
    assert doc["valid"] is False and doc["errors"][0]["message"], doc
    assert sfn.list_executions(stateMachineArn=sm)["executions"] == []


# ---------------------------------------------------------------------------------------------
# Validation time is linear in a token's length (it was quadratic: 300 KB took 1.6 s, 10 MB minutes)

def _best_of(fn, repeat: int = 5) -> float:
    """The least CPU time of `repeat` runs (CPU time, garbage collector off: other processes on a
    busy machine then barely move the figure)."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
    finally:
        gc.enable()
    return best


def _validate(options: str) -> None:
    try:
        parse_options(options)
    except OptionPolicyError:
        pass


@pytest.mark.parametrize("payload,n", [
    (lambda n: "-af volume=" + "a" * n, 100_000),  # one long word: shlex grew it a character at a time
    (lambda n: "-af '" + "b" * n + "'", 100_000),  # the same, quoted
    (lambda n: "-af " + "[" * n, 10_000),  # unclosed link labels: the label regex rescanned to the end
], ids=["word", "quoted", "brackets"])
def test_validation_time_grows_linearly_with_a_token(payload, n):
    """No absolute timings: a 4x longer token must cost under 8x the time (quadratic costs 16x;
    measured linear: 3.7-4.3x)."""
    _validate(payload(n))  # warm up
    small, large = _best_of(lambda: _validate(payload(n))), _best_of(lambda: _validate(payload(4 * n)))
    assert large / small < 8, (small, large)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab '\"\\\t\n#=:,;-", max_size=24))
def test_shellwords_splits_exactly_as_shlex(text):
    try:
        expected = shlex.split(text)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            shellwords.split(text)
        return
    assert shellwords.split(text) == expected
