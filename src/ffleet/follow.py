"""Follow a cloud run from the terminal: find its execution, poll it with backoff, show progress, end as `ffleet run` does."""
from __future__ import annotations

import copy
import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ffleet.results import (
    EXIT_FAILURES, EXIT_INVALID, EXIT_OK, FAILED, FAILED_FILE, NOT_DONE, RECORDS_DIR, SKIPPED, SUCCEEDED, SUMMARY_FILE,
    format_summary,
)
from ffleet.storage import split_s3_uri
from ffleet.trigger import REJECTED_SUFFIX, execution_name

TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
# Error codes that mean "slow down or try again", from Step Functions and S3 alike.
TRANSIENT = {
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown",
    "ServiceUnavailable", "InternalServerError", "InternalFailure", "RequestTimeout",
}
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C: following stopped, the run did not
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


def _code(exc: Exception) -> str:
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
                if _code(exc) not in TRANSIENT:
                    raise
                self.throttled += 1
                in_a_row += 1
                if in_a_row >= MAX_TRANSIENT_IN_A_ROW:
                    raise GaveUp(f"{api} still answers {_code(exc)} after {in_a_row} tries") from None
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
        if _code(exc) in ("NoSuchKey", "404", "NotFound"):
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
            if _code(exc) != "ExecutionDoesNotExist":
                raise
        note = read_rejection(s3, bucket, key, pace)
        if note is not None:
            raise Rejected(f"s3://{bucket}/{key}{REJECTED_SUFFIX}", note)
        if pace.clock() >= deadline:
            waited = f" after {timeout:.0f} s" if timeout else " yet"
            raise FollowError(
                f"no execution {name} for s3://{bucket}/{key} and no {REJECTED_SUFFIX} beside it{waited}: is the "
                "trigger bucket's event notification in place? The start function's log says what it received"
            )
        pace.wait()


def resolve_run(run: str, *, sfn, s3, outputs: Callable[[], dict[str, str]], pace: Pace) -> str:
    """An execution ARN for RUN: an execution ARN, an execution name (with the stack), or the request's
    key in the trigger bucket (s3://bucket/jobs/... or jobs/... with the stack)."""
    if run.startswith("arn:"):
        if ":execution:" not in run:
            raise FollowError(f"{run} is not an execution ARN (arn:...:execution:STATE_MACHINE:NAME)")
        return run
    if run.startswith("s3://") or run.endswith(".json"):
        if run.startswith("s3://"):
            bucket, key = split_s3_uri(run)
        else:
            bucket, key = _output(outputs(), "TriggerBucketName"), run
        try:
            head = pace.call("HeadObject", s3.head_object, Bucket=bucket, Key=key)
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
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
        return await_start(sfn, s3, state_machine_arn=_output(outputs(), "StateMachineArn"),
                           name=execution_name(name, bucket, key, identity), bucket=bucket, key=key, pace=pace,
                           timeout=0)
    return execution_arn(_output(outputs(), "StateMachineArn"), run)


def _version(head: dict[str, Any]) -> dict[str, str]:
    v = head.get("VersionId")
    return {"VersionId": v} if v and v != "null" else {}


def _output(outputs: dict[str, str], key: str) -> str:
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
            if _code(exc) == "ExecutionDoesNotExist":
                raise FollowError(f"no execution {self.arn}") from None
            raise
        if not self.input:
            try:
                self.input = json.loads(self.desc.get("input") or "{}")
            except json.JSONDecodeError:
                self.input = {}
        return self.desc

    def poll(self) -> Snapshot:
        """One round: 1 DescribeExecution, 1 DescribeMapRun (1 ListMapRuns until the map starts),
        and when batches have finished since the last look, a listing of records/ (one call per
        1,000 records files) plus one GET per new records file (at most MAX_RECORD_READS_PER_POLL)."""
        d = self.describe()
        snap = Snapshot(name=self.name, status=d["status"], started=_utc(d.get("startDate")),
                        stopped=_utc(d.get("stopDate")), error=d.get("error"), cause=d.get("cause"))
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
        if self.results_bucket and (self._listed_at != finished or self._unread()):
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
            if _code(exc) not in ("NoSuchKey", "404", "NotFound"):
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


def _utc(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


def exit_code(status: str, summary: dict[str, Any] | None) -> int:
    """As `ffleet run`: 0 only for a run that ended and is within its tolerance."""
    if status == "SUCCEEDED" and summary is not None and summary.get("within_tolerance"):
        return EXIT_OK
    return EXIT_FAILURES


# --- showing it ------------------------------------------------------------------------------
def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(snap: Snapshot, now: datetime) -> str:
    """The progress as one line of text (what a CI log shows; the bar shows the same fields)."""
    total = snap.files_total if snap.files_total is not None else "?"
    return (
        f"{snap.name}  {snap.status}  files {snap.files_done}/{total} done, {snap.files_failed} failed  "
        f"batches {snap.batches_running} running, {snap.batches_failed} failed, {snap.batches_pending} pending  "
        f"elapsed {_clock_text(snap.elapsed(now))}  eta {_clock_text(snap.eta(now))}"
    )


class ProgressView:
    """A rich progress bar on stderr when it is a terminal; otherwise a line per change (CI logs)."""

    def __init__(self, enabled: bool = True, stream=None, now: Callable[[], datetime] | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._bar = self._task = None
        self._last = ""
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.fields[total_text]} files, {task.fields[failed]} failed"),
                TextColumn("batches {task.fields[batches]}"),
                TextColumn("{task.fields[elapsed]} elapsed, eta {task.fields[eta]}"),
                console=Console(file=self.stream), transient=False,
            )

    def update(self, snap: Snapshot) -> None:
        if not self.enabled:
            return
        now = self.now()
        if self._bar is None:
            line = progress_line(snap, now)
            key = line.split("  elapsed")[0]
            if key != self._last:  # a line per change, not per poll
                print(line, file=self.stream, flush=True)
                self._last = key
            return
        fields = {
            "total_text": snap.files_total if snap.files_total is not None else "?",
            "failed": snap.files_failed,
            "batches": f"{snap.batches_running} running, {snap.batches_failed} failed, {snap.batches_pending} pending",
            "elapsed": _clock_text(snap.elapsed(now)), "eta": _clock_text(snap.eta(now)),
        }
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(snap.name, total=snap.files_total, **fields)
        self._bar.update(self._task, completed=snap.files_done + snap.files_failed, total=snap.files_total,
                         description=f"{snap.name} {snap.status}", **fields)

    def close(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.stop()


def follow(watch: RunWatch, view: ProgressView | None = None) -> Snapshot:
    """Poll until the execution ends; KeyboardInterrupt (Ctrl-C) propagates with the run untouched."""
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


# --- commands --------------------------------------------------------------------------------
class Clients:
    """AWS clients, each made on first use (tests hand in moto's or stubbed ones). region: the run's
    own, when RUN is an ARN."""

    def __init__(self, sfn=None, s3=None, cfn=None, region: str | None = None):
        self._made = {"sfn": sfn, "s3": s3, "cfn": cfn}
        self.region = region

    def _client(self, kind: str):
        if self._made[kind] is None:
            import boto3
            from botocore.config import Config

            # botocore retries a throttled call a few times itself; Pace backs off beyond that
            config = Config(retries={"max_attempts": 3, "mode": "standard"})
            where = {"region_name": self.region} if self.region else {}
            if kind == "s3":
                from ffleet.storage import s3_client

                self._made[kind] = s3_client() if not self.region else boto3.client("s3", **where)
            else:
                self._made[kind] = boto3.client("stepfunctions" if kind == "sfn" else "cloudformation",
                                                config=config, **where)
        return self._made[kind]

    sfn = property(lambda self: self._client("sfn"))
    s3 = property(lambda self: self._client("s3"))
    cfn = property(lambda self: self._client("cfn"))


def _clients_for(args) -> Clients:
    run = getattr(args, "run", None) or ""
    parts = run.split(":")
    return Clients(region=parts[3] if run.startswith("arn:") and len(parts) > 3 and parts[3] else None)


def _stack_outputs(args, clients: Clients) -> Callable[[], dict[str, str]]:
    cache: dict[str, dict[str, str]] = {}

    def get() -> dict[str, str]:
        if "outputs" not in cache:
            if not getattr(args, "stack", None):
                raise FollowError("give --stack NAME (or set FFLEET_STACK) to find a run by name or request key")
            from ffleet.submit import stack_outputs

            cache["outputs"] = stack_outputs(args.stack, clients.cfn)
        return cache["outputs"]

    return get


def resume_hint(name: str, stack: str | None) -> str:
    return f"ffleet status {name}" + (f" --stack {stack}" if stack else "") + " --wait"


def print_rejection(exc: Rejected) -> None:
    print(f"ffleet: the stack rejected the request ({exc.uri}):", file=sys.stderr)
    for e in exc.note.get("errors") or []:
        print(f"  {e.get('field', '?')}: {e.get('message', '')}", file=sys.stderr)


def finish(watch: RunWatch, snap: Snapshot, args) -> int:
    """Print the run's summary (human or --json) as `ffleet run` does; return its exit code."""
    summary, source = watch.summary()
    took = _clock_text(snap.elapsed(snap.stopped or datetime.now(timezone.utc)))
    print(f"ffleet: {snap.name} {snap.status} after {took}; summary: {source}", file=sys.stderr)
    if snap.status != "SUCCEEDED" and (snap.error or snap.cause):
        print(f"  {snap.error or ''}: {(snap.cause or '')[:500]}", file=sys.stderr)
    if summary is None:
        print("ffleet: the run has no summary and no records to summarize", file=sys.stderr)
    elif getattr(args, "json", False):
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
    return exit_code(snap.status, summary)


def watch_to_end(watch: RunWatch, args, now: Callable[[], datetime] | None = None) -> int:
    """Follow with progress, then finish; Ctrl-C stops following and says how to resume."""
    view = ProgressView(enabled=not getattr(args, "no_progress", False), now=now)
    try:
        snap = follow(watch, view)
    except KeyboardInterrupt:
        print(f"\nffleet: stopped following {watch.name}; the run goes on. Resume with: "
              f"{resume_hint(watch.name, getattr(args, 'stack', None))}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except GaveUp as exc:
        print(f"ffleet: {exc}; stopped following {watch.name}, the run goes on. Resume with: "
              f"{resume_hint(watch.name, getattr(args, 'stack', None))}", file=sys.stderr)
        return EXIT_FAILURES
    return finish(watch, snap, args)


def follow_submitted(sent: dict[str, str], args, clients: Clients | None = None, pace: Pace | None = None) -> int:
    """`ffleet submit ... --wait`: wait for the execution the start Lambda begins, then follow it."""
    clients = clients or _clients_for(args)
    pace = pace or Pace()
    bucket, key = split_s3_uri(sent["uri"])

    def wait_and_follow() -> int:
        try:
            arn = await_start(clients.sfn, clients.s3, state_machine_arn=sent["state_machine_arn"],
                              name=sent["execution_name"], bucket=bucket, key=key, pace=pace)
        except GaveUp:
            raise
        except FollowError as exc:  # the request was uploaded but no run started
            print(f"ffleet: {exc}", file=sys.stderr)
            return EXIT_FAILURES
        except KeyboardInterrupt:
            print(f"\nffleet: stopped waiting; resume with: {resume_hint(sent['execution_name'], args.stack)}",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"ffleet: following {arn}", file=sys.stderr)
        return watch_to_end(RunWatch(clients.sfn, clients.s3, arn, pace), args)

    return _guard(wait_and_follow)


def _watch_for(args, clients: Clients, pace: Pace) -> RunWatch:
    if not args.run.startswith("arn:") and not getattr(args, "stack", None):
        raise FollowError(f"give --stack NAME (or set FFLEET_STACK) to find run {args.run!r}, or give its execution ARN")
    arn = resolve_run(args.run, sfn=clients.sfn, s3=clients.s3, outputs=_stack_outputs(args, clients), pace=pace)
    return RunWatch(clients.sfn, clients.s3, arn, pace)


def _guard(command: Callable[[], int]) -> int:
    """Errors every run command reports the same way."""
    from ffleet.submit import SubmitError

    try:
        return command()
    except Rejected as exc:
        print_rejection(exc)
        return EXIT_INVALID
    except GaveUp as exc:
        print(f"ffleet: {exc}; the run goes on", file=sys.stderr)
        return EXIT_FAILURES
    except (FollowError, SubmitError, ValueError) as exc:
        print(f"ffleet: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("\nffleet: interrupted; the run goes on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from botocore.exceptions import BotoCoreError

        if isinstance(exc, BotoCoreError):  # no region, no credentials, no connection
            print(f"ffleet: {exc}", file=sys.stderr)
            return EXIT_FAILURES
        if not _code(exc):
            raise
        print(f"ffleet: AWS refused: {exc}", file=sys.stderr)
        return EXIT_FAILURES


def cmd_status(args, clients: Clients | None = None, pace: Pace | None = None) -> int:
    """`ffleet status RUN [--wait]` and `ffleet status --list`."""
    clients = clients or _clients_for(args)
    pace = pace or Pace()
    if args.list:
        return _guard(lambda: list_runs(args, clients, pace))
    if not args.run:
        print("ffleet status: name a run (execution name or ARN, or the request's S3 key), or give --list",
              file=sys.stderr)
        return EXIT_INVALID

    def status() -> int:
        watch = _watch_for(args, clients, pace)
        if args.wait:
            return watch_to_end(watch, args)
        snap = watch.poll()
        if snap.status in TERMINAL:
            return finish(watch, snap, args)
        if args.json:
            print(json.dumps(snap.to_dict(), indent=2))
        else:
            print(progress_line(snap, datetime.now(timezone.utc)))
            print(f"follow it: {resume_hint(snap.name, args.stack)}")
        return EXIT_OK

    return _guard(status)


def cmd_cancel(args, clients: Clients | None = None, pace: Pace | None = None) -> int:
    """`ffleet cancel RUN`: StopExecution, then the summary of what had finished."""
    clients = clients or _clients_for(args)
    pace = pace or Pace()

    def cancel() -> int:
        watch = _watch_for(args, clients, pace)
        desc = watch.describe()
        if desc["status"] in TERMINAL:
            print(f"ffleet: {watch.name} already ended {desc['status']}; nothing to cancel", file=sys.stderr)
            return finish(watch, watch.poll(), args)
        pace.call("StopExecution", clients.sfn.stop_execution, executionArn=watch.arn,
                  error="ffleet.Cancelled", cause="stopped by `ffleet cancel`")
        snap = watch.poll()
        # The summarizer never runs for a stopped execution: summarize the records written so far
        # here, and write summary.json and failed-files.jsonl so `ffleet redrive` can pick the run up.
        summary = watch.summarize(write=True)
        print(f"ffleet: stopped {watch.name} ({snap.status}); files never handed to a Batch job are not "
              "counted below: submit the request again to process them (existing outputs are skipped)",
              file=sys.stderr)
        if summary is not None:
            print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_summary(summary))
        return EXIT_FAILURES

    return _guard(cancel)


def redrive_request(request: dict[str, Any], manifest_uri: str) -> dict[str, Any]:
    """The run's own request, reading only the files in `manifest_uri` (same options otherwise)."""
    new = copy.deepcopy(request)
    new.pop("results", None)  # the stack decides where a run's results go
    new["input"] = {**(new.get("input") or {}), "manifest": manifest_uri, "s3_prefix": ""}
    name = str(new.get("name") or "run")
    new["name"] = name if name.endswith("-redrive") else f"{name}-redrive"
    return new


def cmd_redrive(args, clients: Clients | None = None, pace: Pace | None = None) -> int:
    """`ffleet redrive RUN`: submit the run's failed-files.jsonl as a new request."""
    clients = clients or _clients_for(args)
    pace = pace or Pace()

    def redrive() -> int:
        from ffleet.request import RequestError, parse_request
        from ffleet.submit import submit

        if not args.stack:
            raise FollowError("give --stack NAME (or set FFLEET_STACK): the re-drive is submitted to that stack")
        watch = _watch_for(args, clients, pace)
        desc = watch.describe()
        if desc["status"] not in TERMINAL:
            raise FollowError(f"{watch.name} is still {desc['status']}: follow it to the end "
                              f"({resume_hint(watch.name, args.stack)}) or cancel it first")
        key = watch.results_prefix + FAILED_FILE
        try:
            head = pace.call("HeadObject", clients.s3.head_object, Bucket=watch.results_bucket, Key=key)
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            raise FollowError(f"nothing to re-drive: {watch.name} has no {FAILED_FILE} in {watch.results_uri} "
                              "(it was never summarized)") from None
        if not head.get("ContentLength"):
            raise FollowError(f"nothing to re-drive: no file of {watch.name} failed")
        try:
            request = parse_request(redrive_request(watch.request, f"s3://{watch.results_bucket}/{key}"))
        except RequestError as exc:
            raise FollowError("the run's request no longer validates: " +
                              "; ".join(f"{f}: {m}" for f, m in exc.problems)) from None
        sent = submit(request, args.stack, cfn=clients.cfn, s3=clients.s3)
        print(f"re-driving the failed files of {watch.name} as {sent['uri']}")
        print(f"  run: {sent['execution_name']}")
        if args.wait:
            return follow_submitted(sent, args, clients, pace)
        print(f"  follow it: {resume_hint(sent['execution_name'], args.stack)}")
        return EXIT_OK

    return _guard(redrive)


def list_runs(args, clients: Clients, pace: Pace) -> int:
    """`ffleet status --list`: the stack's recent runs, newest first."""
    outputs = _stack_outputs(args, clients)()
    sm = _output(outputs, "StateMachineArn")
    listed = pace.call("ListExecutions", clients.sfn.list_executions, stateMachineArn=sm,
                       maxResults=args.limit).get("executions") or []
    rows = []
    now = datetime.now(timezone.utc)
    for e in listed:
        watch = RunWatch(clients.sfn, clients.s3, e["executionArn"], pace)
        watch.input = {"results": {"bucket": outputs.get("ResultsBucketName", ""),
                                   "key_prefix": f"runs/{watch.name}/"}}
        snap = Snapshot(name=watch.name, status=e["status"], started=_utc(e.get("startDate")),
                        stopped=_utc(e.get("stopDate")))
        if e["status"] in TERMINAL:
            summary = None
            if watch.results_bucket:
                try:
                    summary = json.loads(pace.call("GetObject", clients.s3.get_object, Bucket=watch.results_bucket,
                                                   Key=watch.results_prefix + SUMMARY_FILE)["Body"].read())
                except Exception as exc:
                    if _code(exc) not in ("NoSuchKey", "404", "NotFound"):
                        raise
            if summary:
                f = summary["files"]
                snap.files_total = f["total"]
                snap.files_done = f["succeeded"] + f["skipped"]
                snap.files_failed = f["failed"] + f["not_done"]
        else:
            snap = watch.poll()
        rows.append(snap)
    if args.json:
        print(json.dumps([s.to_dict() for s in rows], indent=2))
        return EXIT_OK
    print(f"{'RUN':<48} {'STATE':<10} {'DONE':>9} {'FAILED':>7} {'STARTED':<20} DURATION")
    for s in rows:
        done = f"{s.files_done}/{s.files_total}" if s.files_total is not None else "-"
        started = s.started.strftime("%Y-%m-%d %H:%M:%S") if s.started else "-"
        print(f"{s.name:<48} {s.status:<10} {done:>9} {s.files_failed:>7} {started:<20} {_clock_text(s.elapsed(now))}")
    if not rows:
        print("(no runs yet)")
    return EXIT_OK
