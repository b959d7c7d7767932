"""`ffleet submit`: upload a job request (under jobs/) or a manifest (under manifests/) to a deployed stack's trigger bucket, which starts a run."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from ffleet.request import JobRequest
from ffleet.manifest_trigger import DEFAULT_REQUEST_PARAMETER, MANIFESTS_PREFIX, Rejected, manifest_kind, write_run_keys
from ffleet.trigger import REJECTED_SUFFIX, check_cloud_request, execution_name

TRIGGER_OUTPUT = "TriggerBucketName"
RESULTS_OUTPUT = "ResultsBucketName"


class SubmitError(RuntimeError):
    pass


def stack_outputs(stack: str, cfn=None) -> dict[str, str]:
    """The outputs of a CloudFormation stack, as {OutputKey: OutputValue}."""
    return {o["OutputKey"]: o["OutputValue"] for o in describe_stack(stack, cfn).get("Outputs", [])}


def describe_stack(stack: str, cfn=None) -> dict:
    """A CloudFormation stack's description (Outputs, Parameters)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    cfn = cfn or boto3.client("cloudformation")
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        raise SubmitError(f"cannot read stack {stack!r}: {exc.response.get('Error', {}).get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise SubmitError(f"cannot read stack {stack!r}: {exc}") from None
    return stacks[0]


def request_key(request: JobRequest, now: datetime | None = None) -> str:
    """jobs/<name>/<UTC time>.json: one object per submission, so each submission is its own run."""
    now = now or datetime.now(timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", request.name)
    return f"jobs/{safe}/{now.strftime('%Y%m%dT%H%M%S.%fZ')}.json"


def submit(request: JobRequest, stack: str, *, cfn=None, s3=None, now: datetime | None = None) -> dict[str, str]:
    """Check the request for the cloud, upload it, and say where to look. Returns uri and hints."""
    import boto3

    check_cloud_request(request)
    outputs = stack_outputs(stack, cfn)
    bucket = outputs.get(TRIGGER_OUTPUT)
    if not bucket:
        raise SubmitError(f"stack {stack!r} has no output {TRIGGER_OUTPUT}; is it an ffleet stack?")
    key = request_key(request, now)
    body = json.dumps(request.to_json_dict(), indent=2, ensure_ascii=False).encode("utf-8")
    s3 = s3 or boto3.client("s3")
    put = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    # the name the start Lambda gives this upload's execution (trigger.handle_s3_event)
    identity = put.get("VersionId") or str(put.get("ETag", "")).strip('"')
    return {
        "execution_name": execution_name(request.name, bucket, key, identity),
        "uri": f"s3://{bucket}/{key}",
        "rejected_uri": f"s3://{bucket}/{key}{REJECTED_SUFFIX}",
        "results_bucket": outputs.get(RESULTS_OUTPUT, ""),
        "state_machine_arn": outputs.get("StateMachineArn", ""),
    }


def manifest_key(path: Path, now: datetime | None = None) -> str:
    """manifests/<file name>/<UTC time><extension>: one object per submission, so each is its own run."""
    now = now or datetime.now(timezone.utc)
    stem, ext = os.path.splitext(path.name)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "manifest"
    return f"{MANIFESTS_PREFIX}{safe}/{now.strftime('%Y%m%dT%H%M%S.%fZ')}{ext.lower()}"


def submit_manifest(path: Path, stack: str, *, cfn=None, s3=None, now: datetime | None = None) -> dict[str, str]:
    """Check a manifest as the stack will, upload it under manifests/, and say which request it runs with."""
    import boto3

    kind = manifest_kind(path.name)
    if kind is None:
        raise SubmitError(f"{path}: not a request (.json) or a manifest (.csv, .jsonl, .ndjson)")
    try:
        with open(path, "rb") as body, open(os.devnull, "wb") as sink:
            found = write_run_keys(body, kind, str(path), sink)
    except OSError as exc:
        raise SubmitError(f"cannot read {path}: {exc.strerror}") from None
    runs = found.runs - {None}
    if len(found.runs) > 1:
        raise SubmitError(f"{path}: the lines name more than one run ({', '.join(sorted(r or '(none)' for r in found.runs))})")
    described = describe_stack(stack, cfn)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    bucket = outputs.get(TRIGGER_OUTPUT)
    if not bucket:
        raise SubmitError(f"stack {stack!r} has no output {TRIGGER_OUTPUT}; is it an ffleet stack?")
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    if not runs and not parameters.get(DEFAULT_REQUEST_PARAMETER, "").strip():
        raise SubmitError(
            f"stack {stack!r} has no {DEFAULT_REQUEST_PARAMETER}, so it would reject this manifest. Set it "
            f"(sam deploy --parameter-overrides {DEFAULT_REQUEST_PARAMETER}='<one-line request without input>'), "
            'or submit a request whose input is {"s3_bucket": "<input bucket>", "manifest": "s3://<bucket>/<key>"}'
        )
    key = manifest_key(path, now)
    s3 = s3 or boto3.client("s3")
    with open(path, "rb") as body:
        s3.put_object(Bucket=bucket, Key=key, Body=body,
                      ContentType="text/csv" if kind == "csv" else "application/x-ndjson")
    return {
        "uri": f"s3://{bucket}/{key}",
        "rejected_uri": f"s3://{bucket}/{key}{REJECTED_SUFFIX}",
        "results_bucket": outputs.get(RESULTS_OUTPUT, ""),
        "state_machine_arn": outputs.get("StateMachineArn", ""),
        "keys": str(found.count),
        "runs_with": f"the request of run {next(iter(runs))}" if runs else f"the stack's {DEFAULT_REQUEST_PARAMETER}",
    }


def cmd_submit(args) -> int:
    """The `ffleet submit REQUEST --stack NAME` command."""
    import sys

    from ffleet.cli import _print_request_error
    from ffleet.results import EXIT_INVALID, EXIT_OK
    from ffleet.request import RequestError, load_request

    try:
        if manifest_kind(args.request):
            sent = submit_manifest(Path(args.request), args.stack)
        else:
            sent = submit(load_request(args.request), args.stack)
    except RequestError as exc:
        _print_request_error(args.request, exc)
        return EXIT_INVALID
    except SubmitError as exc:
        print(f"ffleet: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Rejected as exc:  # the manifest, checked here as the stack would check it
        print(f"ffleet: {exc}\n  {exc.hint}", file=sys.stderr)
        return EXIT_INVALID
    print(f"submitted {args.request} as {sent['uri']}")
    if "keys" in sent:
        print(f"  {sent['keys']} keys, run with {sent['runs_with']}")
    if getattr(args, "wait", False):
        from ffleet.follow import follow_submitted  # the follower sits above submit; imported on use

        return follow_submitted(sent, args)
    print(f"  if the stack rejects it, the reasons appear in {sent['rejected_uri']}")
    if sent["results_bucket"]:
        print(f"  results: s3://{sent['results_bucket']}/runs/<execution-name>/")
    if sent["state_machine_arn"]:
        print(f"  watch: aws stepfunctions list-executions --state-machine-arn {sent['state_machine_arn']}")
    return EXIT_OK
