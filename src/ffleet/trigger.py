"""Start a cloud run: turn an S3 or schedule event into a validated request and one state machine execution."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from ffleet.joblimits import StackLimits, job_timing
from ffleet.request import MAX_REQUEST_BYTES, JobRequest, RequestError, parse_request_text, request_too_large
from ffleet.storage import split_s3_uri

REJECTED_SUFFIX = ".rejected.json"
# Step Functions execution names: 1-80 characters of letters, digits, '-' and '_'.
MAX_EXECUTION_NAME = 80
_HASH_CHARS = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MANIFEST_TYPES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class StartOutcome:
    """What one event did: one entry per request it named."""

    started: list[dict[str, str]] = field(default_factory=list)
    already_running: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def execution_name(label: str, *identity: str) -> str:
    """A deterministic execution name: a readable label, then a hash of the event's identity.

    The same bucket/key/version (a duplicate S3 delivery) always gives the same name, so Step
    Functions refuses a second execution; a new version of the same key gives a new name.
    """
    digest = hashlib.sha256("\x00".join(identity).encode("utf-8")).hexdigest()[:_HASH_CHARS]
    slug = _UNSAFE.sub("_", label).strip("_-") or "run"
    slug = slug[: MAX_EXECUTION_NAME - _HASH_CHARS - 1]
    return f"{slug}-{digest}"


def manifest_source(request: JobRequest) -> dict[str, str]:
    """The ItemReader source for a manifest: bucket, key and reader type (csv or jsonl)."""
    uri = request.input.manifest or ""
    try:
        bucket, key = split_s3_uri(uri)
    except ValueError:
        raise RequestError([("input.manifest", f"{uri!r} must be an s3://bucket/key URI on AWS")]) from None
    lower = key.lower()
    kind = next((t for ext, t in MANIFEST_TYPES.items() if lower.endswith(ext)), None)
    if kind is None:
        raise RequestError(
            [("input.manifest", f"{uri!r} must end with .csv (with a header row naming a 'key' column), .jsonl or .ndjson")]
        )
    return {"type": kind, "bucket": bucket, "key": key}


def check_cloud_request(request: JobRequest) -> None:
    """What a valid request still needs to run on AWS (local folders cannot be reached from Batch)."""
    problems = []
    if request.input.path:
        problems.append(("input.path", "local folders cannot be processed on AWS; use input.s3_bucket"))
    if request.output.path:
        problems.append(("output.path", "local folders cannot be written on AWS; use output.s3_bucket"))
    if request.results and request.results.path:
        problems.append(("results.path", "local folders cannot be written on AWS; leave results out (the stack's results bucket is used)"))
    if problems:
        raise RequestError(problems)
    if request.input.manifest:
        manifest_source(request)


def check_stack_buckets(request: JobRequest, *, input_bucket: str, output_bucket: str, results_bucket: str) -> None:
    """The stack's roles reach only its own buckets: a request naming another would fail later, as
    AccessDenied in the map or storage errors in every Batch attempt. Empty names are not checked."""
    problems = []
    if input_bucket and request.input.s3_bucket and request.input.s3_bucket != input_bucket:
        problems.append(("input.s3_bucket", f"{request.input.s3_bucket!r} is not this stack's input bucket; use {input_bucket!r}"))
    if output_bucket and request.output.s3_bucket and request.output.s3_bucket != output_bucket:
        problems.append(("output.s3_bucket", f"{request.output.s3_bucket!r} is not this stack's output bucket; use {output_bucket!r}"))
    if input_bucket and request.input.manifest:
        bucket = manifest_source(request)["bucket"]
        allowed = [b for b in (input_bucket, results_bucket) if b]
        if bucket not in allowed:
            problems.append(("input.manifest", f"the manifest's bucket {bucket!r} is not readable by this stack; put the "
                             f"manifest in {' or '.join(repr(b) for b in allowed)}"))
    if problems:
        raise RequestError(problems)


def execution_input(request: JobRequest, name: str, results_bucket: str, trigger: dict[str, str],
                    limits: StackLimits | None = None) -> dict[str, Any]:
    """The state machine's input: everything its Choice states, ItemReader and ItemBatcher read."""
    if request.input.manifest:
        source = manifest_source(request)
    else:
        source = {"type": "prefix", "bucket": request.input.s3_bucket, "prefix": request.input.s3_prefix}
    key_prefix = f"runs/{name}/"
    normalised = request.to_json_dict()
    # The worker writes records where the run's results live, whatever the request said.
    normalised["results"] = {"s3_bucket": results_bucket, "s3_prefix": key_prefix, "path": None,
                             "manifests": request.manifest_formats or None}
    p = request.processing
    return {
        "execution_name": name,
        "compute": request.compute,
        "source": source,
        "processing": {
            "files_per_job": p.files_per_job,
            "max_concurrency": p.max_concurrency,
            # informational: the summarizer judges the run by the request's own processing.tolerated_failure_percent
            "tolerated_failure_percent": p.tolerated_failure_percent,
        },
        # each Batch job's time limit, and how long the map child waits for it (ffleet.joblimits)
        "job_timing": job_timing(request, limits or StackLimits()),
        "results": {
            "bucket": results_bucket,
            "key_prefix": key_prefix,
            # ResultWriter appends '/<map-run-id>/manifest.json' itself
            "writer_prefix": key_prefix.rstrip("/"),
            "uri": f"s3://{results_bucket}/{key_prefix}",
        },
        "request": normalised,
        "trigger": trigger,
    }


def start_execution(sfn, state_machine_arn: str, name: str, payload: dict[str, Any]) -> tuple[str, bool]:
    """StartExecution; returns (execution ARN, started_now). An existing execution counts as success."""
    try:
        resp = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
        return resp["executionArn"], True
    except sfn.exceptions.ExecutionAlreadyExists:
        # S3 delivers events at least once: the first delivery already started this run.
        arn = state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + name
        return arn, False


def _error_document(exc: RequestError, source: str) -> dict[str, Any]:
    doc = exc.to_dict()
    doc["request"] = source
    doc["hint"] = "fix the fields above and upload the request again (a new upload starts a new run)"
    return doc


def s3_records(event: dict[str, Any]) -> list[dict[str, str]]:
    """bucket, key (URL-decoded: S3 sends '+' for a space), version and ETag of every record."""
    out = []
    for record in event.get("Records") or []:
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        out.append(
            {
                "bucket": (s3.get("bucket") or {}).get("name", ""),
                "key": unquote_plus(obj.get("key", "")),
                "version": obj.get("versionId") or "",
                "etag": obj.get("eTag") or obj.get("etag") or "",
            }
        )
    return out


def handle_s3_event(event: dict[str, Any], *, s3, sfn, state_machine_arn: str, results_bucket: str, log=None,
                    input_bucket: str = "", output_bucket: str = "", limits: StackLimits | None = None) -> StartOutcome:
    """Every record of an S3 ObjectCreated event: validate its request and start (or reject) it."""
    outcome = StartOutcome()
    for rec in s3_records(event):
        bucket, key = rec["bucket"], rec["key"]
        uri = f"s3://{bucket}/{key}"
        if key.endswith(REJECTED_SUFFIX) or not key.endswith(".json"):
            # our own rejection notes match the trigger's jobs/*.json filter too
            outcome.ignored.append(uri)
            continue
        get = {"Bucket": bucket, "Key": key}
        if rec["version"]:
            get["VersionId"] = rec["version"]
        obj = s3.get_object(**get)
        # read no more than a request may hold: a huge object must not exhaust the Lambda's memory
        body = obj["Body"].read(MAX_REQUEST_BYTES + 1)
        try:
            if len(body) > MAX_REQUEST_BYTES:
                raise request_too_large(int(obj.get("ContentLength") or len(body)), uri)
            request = parse_request_text(body, source=uri)
            check_cloud_request(request)
            check_stack_buckets(request, input_bucket=input_bucket, output_bucket=output_bucket, results_bucket=results_bucket)
        except RequestError as exc:
            doc = _error_document(exc, uri)
            s3.put_object(Bucket=bucket, Key=key + REJECTED_SUFFIX, Body=json.dumps(doc, indent=2).encode(),
                          ContentType="application/json")
            outcome.rejected.append({"request": uri, "errors": doc["errors"]})
            if log:
                log.warning("rejected request", extra={"request": uri, "errors": doc["errors"]})
            continue
        identity = rec["version"] or rec["etag"]
        name = execution_name(request.name, bucket, key, identity)
        trigger = {"type": "s3", "bucket": bucket, "key": key, "version": rec["version"], "etag": rec["etag"]}
        arn, fresh = start_execution(sfn, state_machine_arn, name, execution_input(request, name, results_bucket, trigger, limits))
        (outcome.started if fresh else outcome.already_running).append({"request": uri, "execution_arn": arn})
        if log:
            log.info("started run" if fresh else "run already started", extra={"request": uri, "execution_arn": arn})
    return outcome


def handle_schedule_event(event: dict[str, Any], request_text: str, *, sfn, state_machine_arn: str,
                          results_bucket: str, input_bucket: str = "", output_bucket: str = "",
                          limits: StackLimits | None = None) -> StartOutcome:
    """A scheduled EventBridge event: run the stack's fixed request once per firing."""
    outcome = StartOutcome()
    if not request_text.strip():
        raise RequestError([("ScheduledRequest", "the schedule fired but the stack parameter ScheduledRequest is empty")])
    request = parse_request_text(request_text, source="the ScheduledRequest parameter")
    check_cloud_request(request)
    check_stack_buckets(request, input_bucket=input_bucket, output_bucket=output_bucket, results_bucket=results_bucket)
    rule = ",".join(event.get("resources") or []) or "schedule"
    fired_at = str(event.get("time") or event.get("id") or "")
    name = execution_name(request.name, rule, fired_at)
    trigger = {"type": "schedule", "rule": rule, "time": fired_at}
    arn, fresh = start_execution(sfn, state_machine_arn, name, execution_input(request, name, results_bucket, trigger, limits))
    (outcome.started if fresh else outcome.already_running).append({"request": "schedule", "execution_arn": arn})
    return outcome


def is_schedule_event(event: dict[str, Any]) -> bool:
    return event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event"
