"""Watch a cloud run: find its execution, poll it with backoff, and estimate what it has done so far."""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ffleet.results import (
    EXIT_FAILURES, EXIT_OK, FAILED, NOT_DONE, RECORDS_DIR, SKIPPED, SUCCEEDED, SUMMARY_FILE,
)
from ffleet.storage import split_s3_uri
from ffleet.trigger import REJECTED_SUFFIX, execution_name

TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
# Error codes that mean "slow down or try again", from Step Functions and S3 alike.
TRANSIENT = {
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown",
    "ServiceUnavailable", "InternalServerError", "InternalFailure", "RequestTimeout",
}
MAX_TRANSIENT_IN_A_ROW = 12  # about 6 minutes at the 30 s cap: then following gives up, the run goes on
MAX_RECORD_READS_PER_POLL = 20  # each new records file is read once; the rest wait for the next poll
START_TIMEOUT_SECONDS = 300.0  # from upload to execution (or .rejected.json); S3 events arrive in seconds


class FollowError(RuntimeError):
    """The run cannot be found or followed (the run itself is not affected)."""


class GaveUp(FollowError):
    """AWS kept refusing (throttling, 5xx): following stops; the run goes on."""


class Rejected(Exception):
    """The stack refused the request: its .rejected.json, naming each bad field."""

    def __init__(self, uri: str, note: dict[str, Any]):
        super().__init__(uri)
        self.uri, self.note = uri, note


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""


@dataclass
class Pace:
    """How often to ask AWS: polls `first` seconds apart growing by `factor` to `cap`; calls at least
    `min_gap` apart (never more than 1/min_gap a second); a throttled call waits twice as long each time.

    sleep and clock are injected so tests run without waiting.
    """

    first: float = 2.0
    factor: float = 1.5
    cap: float = 30.0
    min_gap: float = 0.25
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    interval: float = 0.0
    calls: Counter = field(default_factory=Counter)
    throttled: int = 0
    _last: float | None = None

    def __post_init__(self) -> None:
        self.interval = self.interval or self.first

    def call(self, api: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """fn(**kwargs), spaced from the previous call, retried with backoff while AWS throttles."""
        in_a_row = 0
        while True:
            if self._last is not None:
                gap = self._last + self.min_gap - self.clock()
                if gap > 0:
                    self.sleep(gap)
            self._last = self.clock()
            self.calls[api] += 1
            try:
                return fn(**kwargs)
            except Exception as exc:  # botocore's ClientError, without importing botocore here
                if error_code(exc) not in TRANSIENT:
                    raise
                self.throttled += 1
                in_a_row += 1
                if in_a_row >= MAX_TRANSIENT_IN_A_ROW:
                    raise GaveUp(f"{api} still answers {error_code(exc)} after {in_a_row} tries") from None
                self.interval = min(self.interval * 2, self.cap)
                self.sleep(self.interval)

    def wait(self) -> None:
        """Sleep until the next poll; the interval grows to its cap."""
        self.sleep(self.interval)
        self.interval = min(self.interval * self.factor, self.cap)


# --- where a run is ----------------------------------------------------------------------------
def execution_arn(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + name


def read_rejection(s3, bucket: str, key: str, pace: Pace) -> dict[str, Any] | None:
    """The .rejected.json the start Lambda wrote beside a request, if any."""
    try:
        body = pace.call("GetObject", s3.get_object, Bucket=bucket, Key=key + REJECTED_SUFFIX)["Body"].read()
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return {"errors": [{"field": "request", "message": body.decode("utf-8", "replace")[:500]}]}


def await_start(sfn, s3, *, state_machine_arn: str, name: str, bucket: str, key: str, pace: Pace,
                timeout: float = START_TIMEOUT_SECONDS) -> str:
    """The ARN of the execution the start Lambda begins for s3://bucket/key (named `name`), once it
    exists. Raises Rejected if the Lambda wrote a .rejected.json instead."""
    arn = execution_arn(state_machine_arn, name)
    deadline = pace.clock() + timeout
    while True:
        try:
            pace.call("DescribeExecution", sfn.describe_execution, executionArn=arn)
            return arn
        except Exception as exc:
            if error_code(exc) != "ExecutionDoesNotExist":
                raise
        note = read_rejection(s3, bucket, key, pace)
        if note is not None:
            raise Rejected(f"s3://{bucket}/{key}{REJECTED_SUFFIX}", note)
        if pace.clock() >= deadline:
            waited = f" after {timeout:.0f} s" if timeout else " yet"
            raise FollowError(
                f"no execution {name} for s3://{bucket}/{key} and no {REJECTED_SUFFIX} beside it{waited}: the "
                "start function's log says what it received; an invocation that failed is in the stack's "
                "failed-requests queue (docs/cloud.md); no invocation at all: is the trigger's notification in place?"
            )
        pace.wait()


def await_start_by_trigger(sfn, s3, *, state_machine_arn: str, bucket: str, key: str, pace: Pace,
                           timeout: float = START_TIMEOUT_SECONDS) -> str:
    """As await_start, where the name cannot be known in advance (a manifest's run is named after a
    request the stack chooses): the newest executions whose input names s3://bucket/key as trigger.
    Each execution is described once; a poll is one ListExecutions and one GetObject besides."""
    seen: set[str] = set()
    deadline = pace.clock() + timeout
    while True:
        listed = pace.call("ListExecutions", sfn.list_executions, stateMachineArn=state_machine_arn,
                           maxResults=20).get("executions") or []
        for e in listed:
            if e["executionArn"] in seen:
                continue
            seen.add(e["executionArn"])
            d = pace.call("DescribeExecution", sfn.describe_execution, executionArn=e["executionArn"])
            try:
                trigger = json.loads(d.get("input") or "{}").get("trigger") or {}
            except (json.JSONDecodeError, AttributeError):
                continue
            if trigger.get("bucket") == bucket and trigger.get("key") == key:
                return e["executionArn"]
        note = read_rejection(s3, bucket, key, pace)
        if note is not None:
            raise Rejected(f"s3://{bucket}/{key}{REJECTED_SUFFIX}", note)
        if pace.clock() >= deadline:
            raise FollowError(f"no execution for s3://{bucket}/{key} and no {REJECTED_SUFFIX} beside it after "
                              f"{timeout:.0f} s: the start function's log says what it received")
        pace.wait()


def resolve_run(run: str, *, sfn, s3, outputs: Callable[[], dict[str, str]], pace: Pace) -> str:
    """An execution ARN for RUN: an execution ARN, an execution name (with the stack), or the request's
    key in the trigger bucket (s3://bucket/jobs/... or jobs/... with the stack)."""
    if run.startswith("arn:"):
        if ":execution:" not in run:
            raise FollowError(f"{run} is not an execution ARN (arn:...:execution:STATE_MACHINE:NAME)")
        return run
    if run.startswith("s3://") or run.endswith((".json", ".csv", ".jsonl", ".ndjson")):
        if run.startswith("s3://"):
            bucket, key = split_s3_uri(run)
        else:
            bucket, key = stack_output(outputs(), "TriggerBucketName"), run
        if not key.endswith(".json"):  # a manifest dropped under manifests/: found by its trigger
            return await_start_by_trigger(sfn, s3, state_machine_arn=stack_output(outputs(), "StateMachineArn"),
                                          bucket=bucket, key=key, pace=pace, timeout=0)
        try:
            head = pace.call("HeadObject", s3.head_object, Bucket=bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise FollowError(f"no request at s3://{bucket}/{key}") from None
            raise
        from ffleet.request import RequestError, parse_request_text

        body = pace.call("GetObject", s3.get_object, Bucket=bucket, Key=key, **_version(head))["Body"].read()
        try:
            name = parse_request_text(body, source=f"s3://{bucket}/{key}").name
        except RequestError:
            note = read_rejection(s3, bucket, key, pace)
            raise Rejected(f"s3://{bucket}/{key}{REJECTED_SUFFIX}", note or {"errors": []}) from None
        identity = head.get("VersionId") or str(head.get("ETag", "")).strip('"')
        if identity == "null":  # an object written before versioning was enabled
            identity = str(head.get("ETag", "")).strip('"')
        return await_start(sfn, s3, state_machine_arn=stack_output(outputs(), "StateMachineArn"),
                           name=execution_name(name, bucket, key, identity), bucket=bucket, key=key, pace=pace,
                           timeout=0)
    return execution_arn(stack_output(outputs(), "StateMachineArn"), run)


def _version(head: dict[str, Any]) -> dict[str, str]:
    v = head.get("VersionId")
    return {"VersionId": v} if v and v != "null" else {}


def stack_output(outputs: dict[str, str], key: str) -> str:
    value = outputs.get(key)
    if not value:
        raise FollowError(f"the stack has no output {key}; is it an ffleet stack?")
    return value


# --- what a run has done so far --------------------------------------------------------------
@dataclass
class Snapshot:
    """One poll's view of a run. File counts are estimates until the run ends; the summary is exact."""

    name: str
    status: str
    started: datetime | None = None
    stopped: datetime | None = None
    files_total: int | None = None
    files_done: int = 0
    files_failed: int = 0
    batches_total: int = 0
    batches_running: int = 0
    batches_succeeded: int = 0
    batches_failed: int = 0
    batches_pending: int = 0
    record_files: int = 0
    error: str | None = None
    cause: str | None = None

    def elapsed(self, now: datetime) -> float:
        if self.started is None:
            return 0.0
        return max(((self.stopped or now) - self.started).total_seconds(), 0.0)

    def eta(self, now: datetime) -> float | None:
        """Seconds left at the rate files have finished so far; None until one has."""
        finished = self.files_done + self.files_failed
        if not self.files_total or not finished or self.status in TERMINAL:
            return None
        return self.elapsed(now) * max(self.files_total - finished, 0) / finished

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("started", "stopped"):
            d[k] = d[k].isoformat(timespec="seconds") if d[k] else None
        return d


def _count(counts: dict[str, Any], *names: str) -> int:
    return sum(int(counts.get(n) or 0) for n in names)


def file_counts(item_counts: dict[str, Any], execution_counts: dict[str, Any], files_per_job: int) -> tuple[int, int, int]:
    """(total, done, failed) files from a Map Run's counts.

    Step Functions counts a batched map's items one by one and its children (one Batch job each)
    separately. Where the two totals agree although batches hold several files, items were counted
    per batch: then each stands for files_per_job files (the last batch may hold fewer).
    """
    per = 1
    if files_per_job > 1 and _count(item_counts, "total") == _count(execution_counts, "total") > 1:
        per = files_per_job
    total = _count(item_counts, "total") * per
    done = _count(item_counts, "succeeded") * per
    failed = _count(item_counts, "failed", "timedOut", "aborted") * per
    return total, done, failed


class RunWatch:
    """Polls one execution: DescribeExecution, its Map Run, and the worker records already written."""

    def __init__(self, sfn, s3, arn: str, pace: Pace):
        self.sfn, self.s3, self.arn, self.pace = sfn, s3, arn, pace
        self.name = arn.rsplit(":", 1)[-1]
        self.desc: dict[str, Any] = {}
        self.input: dict[str, Any] = {}
        self.map_run_arn: str | None = None
        self._records: dict[str, tuple[str, int, int]] = {}  # key -> (etag, files done, files failed)
        self._listed_at: int | None = None  # finished batches when records/ was last listed

    # the execution's input says where its results go and how it batches
    @property
    def results_bucket(self) -> str:
        return str((self.input.get("results") or {}).get("bucket") or "")

    @property
    def results_prefix(self) -> str:
        return str((self.input.get("results") or {}).get("key_prefix") or f"runs/{self.name}/")

    @property
    def results_uri(self) -> str:
        return f"s3://{self.results_bucket}/{self.results_prefix}"

    @property
    def files_per_job(self) -> int:
        return int((self.input.get("processing") or {}).get("files_per_job") or 1)

    @property
    def tolerated_failure_percent(self) -> float:
        return float((self.input.get("processing") or {}).get("tolerated_failure_percent") or 0.0)

    @property
    def request(self) -> dict[str, Any]:
        return self.input.get("request") or {}

    def describe(self) -> dict[str, Any]:
        try:
            self.desc = self.pace.call("DescribeExecution", self.sfn.describe_execution, executionArn=self.arn)
        except Exception as exc:
            if error_code(exc) == "ExecutionDoesNotExist":
                raise FollowError(f"no execution {self.arn}") from None
            raise
        if not self.input:
            try:
                self.input = json.loads(self.desc.get("input") or "{}")
            except json.JSONDecodeError:
                self.input = {}
        return self.desc

    def poll(self, read_records: bool = True) -> Snapshot:
        """One round: 1 DescribeExecution, 1 DescribeMapRun (1 ListMapRuns until the map starts),
        and when batches have finished since the last look, a listing of records/ (one call per
        1,000 records files) plus one GET per new records file (at most MAX_RECORD_READS_PER_POLL)."""
        d = self.describe()
        snap = Snapshot(name=self.name, status=d["status"], started=as_utc(d.get("startDate")),
                        stopped=as_utc(d.get("stopDate")), error=d.get("error"), cause=d.get("cause"))
        if self.map_run_arn is None:
            runs = self.pace.call("ListMapRuns", self.sfn.list_map_runs, executionArn=self.arn).get("mapRuns") or []
            if runs:
                self.map_run_arn = runs[0]["mapRunArn"]
        if self.map_run_arn is None:
            return snap  # still choosing the queue, or the map is listing its inputs
        m = self.pace.call("DescribeMapRun", self.sfn.describe_map_run, mapRunArn=self.map_run_arn)
        ec, ic = m.get("executionCounts") or {}, m.get("itemCounts") or {}
        snap.batches_total = _count(ec, "total")
        snap.batches_running = _count(ec, "running")
        snap.batches_succeeded = _count(ec, "succeeded")
        snap.batches_failed = _count(ec, "failed", "timedOut", "aborted")
        snap.batches_pending = _count(ec, "pending")
        snap.files_total, map_done, map_failed = file_counts(ic, ec, self.files_per_job)
        finished = snap.batches_succeeded + snap.batches_failed
        if snap.status in TERMINAL and self._listed_at is None:
            read_records = False  # an ended run first seen now: its summary is exact, no need to estimate
        if read_records and self.results_bucket and (self._listed_at != finished or self._unread()):
            self._read_records()
            self._listed_at = finished
        rec_done = sum(r[1] for r in self._records.values())
        rec_failed = sum(r[2] for r in self._records.values())
        snap.record_files = len(self._records)
        if self.results_bucket and self._listed_at == finished:
            # The pipeline catches a failed Batch job, so its child still counts as succeeded; but
            # every job that ran writes a records file before its child ends. Succeeded children
            # beyond the records files listed after them are failed jobs.
            caught = max(snap.batches_succeeded - snap.record_files, 0)
            per_batch = snap.files_total / snap.batches_total if snap.batches_total else self.files_per_job
            snap.batches_succeeded -= caught
            snap.batches_failed += caught
            moved = min(round(caught * per_batch), map_done)
            map_done, map_failed = map_done - moved, map_failed + moved
        # A batch's files are known one by one once its records file is read; until then a finished
        # batch counts as all done (its job succeeded) or all failed (its job failed).
        snap.files_failed = map_failed + rec_failed
        snap.files_done = max(rec_done, map_done - rec_failed, 0)
        if snap.batches_total == 0 and snap.status not in TERMINAL:
            snap.files_total = None  # the map is still reading its item list
        elif snap.files_total is not None:
            snap.files_total = max(snap.files_total, snap.files_done + snap.files_failed)
        return snap

    def _unread(self) -> bool:
        return any(etag == "" for etag, _, _ in self._records.values())

    def _read_records(self) -> None:
        listed: dict[str, str] = {}
        token = None
        while True:
            kw = {"Bucket": self.results_bucket, "Prefix": self.results_prefix + RECORDS_DIR}
            if token:
                kw["ContinuationToken"] = token
            page = self.pace.call("ListObjectsV2", self.s3.list_objects_v2, **kw)
            for obj in page.get("Contents") or []:
                if obj["Key"].endswith(".jsonl"):
                    listed[obj["Key"]] = str(obj.get("ETag", "")).strip('"')
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        reads = 0
        for key, etag in listed.items():
            known = self._records.get(key)
            if known and known[0] == etag:
                continue  # read before, unchanged (a retried batch rewrites its file)
            if reads >= MAX_RECORD_READS_PER_POLL:
                self._records.setdefault(key, ("", 0, 0))  # read on a later poll
                continue
            reads += 1
            body = self.pace.call("GetObject", self.s3.get_object, Bucket=self.results_bucket, Key=key)["Body"].read()
            statuses = Counter(m.decode() for m in _RECORD_STATUS.findall(body))
            self._records[key] = (etag, statuses[SUCCEEDED] + statuses[SKIPPED], statuses[FAILED] + statuses[NOT_DONE])

    # --- the end -------------------------------------------------------------------------------
    def summary(self) -> tuple[dict[str, Any] | None, str]:
        """The run's summary.json, or (when the summarizer never ran) one made from its records
        here, without writing; and a note saying which."""
        if not self.results_bucket:
            return None, "the execution's input names no results bucket"
        key = self.results_prefix + SUMMARY_FILE
        try:
            body = self.pace.call("GetObject", self.s3.get_object, Bucket=self.results_bucket, Key=key)["Body"].read()
            return json.loads(body), f"s3://{self.results_bucket}/{key}"
        except Exception as exc:
            if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                raise
        return self.summarize(write=False), f"summarized from the records in {self.results_uri} (no summary.json)"

    def summarize(self, write: bool) -> dict[str, Any] | None:
        from ffleet.summarize import summarize_cloud

        if not self.results_bucket:
            return None
        result = summarize_cloud(
            self.results_uri, None, s3_client=self.s3, name=self.request.get("name"), execution_name=self.name,
            tolerated_failure_percent=self.tolerated_failure_percent, write=write,
        )
        return result.summary


# A record's own status: the first "status" of its line (ItemResult.to_json writes key, then status;
# a quote inside the key is escaped, so the key cannot hold this pattern). A regex over the whole
# object, not json.loads per line: a long run's follower reads every records file once.
_RECORD_STATUS = re.compile(rb'(?m)^\{[^\n]*?"status": *"([a-z_]+)"')


def as_utc(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


def exit_code(status: str, summary: dict[str, Any] | None) -> int:
    """As `ffleet run`: 0 only for a run that ended and is within its tolerance."""
    if status == "SUCCEEDED" and summary is not None and summary.get("within_tolerance"):
        return EXIT_OK
    return EXIT_FAILURES


def follow(watch: RunWatch, view=None) -> Snapshot:
    """Poll until the execution ends, showing each Snapshot on `view` (update, close); KeyboardInterrupt
    (Ctrl-C) propagates with the run untouched."""
    try:
        while True:
            snap = watch.poll()
            if view:
                view.update(snap)
            if snap.status in TERMINAL:
                return snap
            watch.pace.wait()
    finally:
        if view:
            view.close()
