"""The AWS Batch entrypoint (`ffleet worker`): one batch of files through the shared worker, records to S3."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, TextIO

from ffleet.inventory import item_key, wanted
from ffleet.request import JobRequest, RequestError, parse_request
from ffleet.results import (
    INFRA_REASONS, NOT_DONE, RECORDS_DIR, SKIPPED, SUCCEEDED, ItemResult, SummaryBuilder, read_records,
)
from ffleet.runner import stop_on_signals
from ffleet.sandbox import SandboxRequired
from ffleet.storage import (
    Forbidden, ListedObject, MissingBucket, NotFound, S3Storage, StorageError, s3_client, split_s3_uri,
)
from ffleet.worker import WorkContext, default_workers, run_items

# Exit codes. Batch's retryStrategy and Step Functions' Retry can tell them apart:
# 0 and 2 must not be retried (2: the batch itself is wrong, a retry fails the same way);
# 1 and 143 should be (a storage fault, or Spot reclaim / timeout).
EXIT_OK = 0
EXIT_INFRASTRUCTURE = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a shell reports for a process that SIGTERM ended

SERVICE = "ffleet-worker"
# After this many storage faults in a row the store is most likely down: stop and let the retry
# (which skips finished files) try later, instead of spending retries on every remaining file.
DEFAULT_MAX_CONSECUTIVE_INFRA_FAILURES = 5
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
# Batch on EC2 gives a job CPU *shares* (1,024 per vCPU), not a quota: the container sees every
# CPU of the host, so the pool size must come from the job's own limit.
CPU_UNITS_PER_VCPU = 1024
# ECS sends SIGKILL 30 s after SIGTERM (ECS_CONTAINER_STOP_TIMEOUT's default); the records must be
# written before that, whatever is still in flight.
DEFAULT_STOP_GRACE_SECONDS = 20.0


class BatchError(Exception):
    """The batch cannot run at all. `exit_code` says whether a retry may help."""

    exit_code = EXIT_INFRASTRUCTURE


class InvalidBatch(BatchError):
    exit_code = EXIT_INVALID


@dataclass
class BatchOfItems:
    request: JobRequest
    results_prefix: str
    batch_id: str
    items: list[ListedObject]
    ignored: int = 0  # keys the request's filters leave out (folder markers, other extensions)

    @property
    def records_uri(self) -> str:
        return f"{self.results_prefix}{RECORDS_DIR}{self.batch_id}.jsonl"


# ---------------------------------------------------------------------------------------------
# Reading the batch


def parse_batch(data: Any, source: str) -> BatchOfItems:
    """Validate a decoded batch object (docs/contracts.md). Raises InvalidBatch naming the field."""
    if not isinstance(data, dict):
        raise InvalidBatch(f"{source}: the batch must be a JSON object")
    bi = data.get("BatchInput")
    if not isinstance(bi, dict):
        raise InvalidBatch(f"{source}: BatchInput: missing or not an object")
    try:
        request = parse_request(bi.get("request"))
    except RequestError as exc:
        lines = "\n".join(f"  BatchInput.request.{f}: {m}" if f != "(request)" else f"  BatchInput.request: {m}" for f, m in exc.problems)
        raise InvalidBatch(f"{source}: invalid request:\n{lines}") from None
    prefix = bi.get("results_prefix")
    if not isinstance(prefix, str) or not prefix.startswith("s3://"):
        raise InvalidBatch(f"{source}: BatchInput.results_prefix: must be an s3://bucket/prefix/ URI, got {prefix!r}")
    try:
        split_s3_uri(prefix)
    except ValueError as exc:
        raise InvalidBatch(f"{source}: BatchInput.results_prefix: {exc}") from None
    if not prefix.endswith("/"):
        prefix += "/"
    batch_id = bi.get("batch_id")
    if not isinstance(batch_id, str) or not _BATCH_ID.match(batch_id):
        raise InvalidBatch(
            f"{source}: BatchInput.batch_id: must be 1-200 letters, digits, '.', '_', ':' or '-', got {batch_id!r}"
        )
    raw_items = data.get("Items")
    if not isinstance(raw_items, list):
        raise InvalidBatch(f"{source}: Items: missing or not a list")
    listed: list[ListedObject] = []
    for n, raw in enumerate(raw_items):
        key = item_key(raw)
        if key is None:
            raise InvalidBatch(f"{source}: Items[{n}]: needs a non-empty 'Key' (or 'key') string")
        size = raw.get("Size", raw.get("size"))
        listed.append(ListedObject(key, size if isinstance(size, int) else None))
    # The map lists every object under the prefix; the request's filters apply here, as
    # `ffleet run` applies them while listing. A key named twice is processed once.
    items = list(wanted(listed, request.input.extensions, dedupe=True))
    return BatchOfItems(request=request, results_prefix=prefix, batch_id=batch_id, items=items,
                        ignored=len(listed) - len(items))


def load_batch(env: Mapping[str, str], client=None) -> BatchOfItems:
    """The batch from FFLEET_BATCH_JSON (inline) or FFLEET_BATCH_URI (an S3 object)."""
    inline, uri = env.get("FFLEET_BATCH_JSON"), env.get("FFLEET_BATCH_URI")
    if inline and uri:
        raise InvalidBatch("set FFLEET_BATCH_URI or FFLEET_BATCH_JSON, not both")
    if inline:
        source, text = "FFLEET_BATCH_JSON", inline.encode("utf-8")
    elif uri:
        source = uri
        try:
            bucket, key = split_s3_uri(uri)
        except ValueError as exc:
            raise InvalidBatch(f"FFLEET_BATCH_URI: {exc}") from None
        try:
            text = S3Storage(bucket, client).read_bytes(key)
        except StorageError as exc:
            raise BatchError(f"cannot read the batch object: {exc}") from None
    else:
        raise InvalidBatch("no batch given: set FFLEET_BATCH_URI (s3:// URI of the batch object) or FFLEET_BATCH_JSON")
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidBatch(f"{source}: not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidBatch(f"{source}: nested too deeply to be a batch") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InvalidBatch(f"{source}: not a usable JSON document: {exc}") from None
    try:
        return parse_batch(data, source)
    except RecursionError:
        raise InvalidBatch(f"{source}: nested too deeply to be a batch") from None


# ---------------------------------------------------------------------------------------------
# How many FFmpegs at once


def ecs_cpu_limit(env: Mapping[str, str], timeout: float = 1.0) -> int | None:
    """The job's vCPUs from the ECS container metadata (Limits.CPU, in CPU units), if available."""
    uri = env.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        return None
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as resp:  # noqa: S310 - ECS's link-local endpoint
            units = float((json.load(resp).get("Limits") or {}).get("CPU") or 0)
    except (OSError, ValueError, AttributeError):
        return None
    return max(1, round(units / CPU_UNITS_PER_VCPU)) if units > 0 else None


def job_workers(env: Mapping[str, str], cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """FFLEET_WORKERS if set, else the smallest of: usable CPUs, cgroup quota, the ECS job's vCPUs."""
    value = env.get("FFLEET_WORKERS")
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise InvalidBatch(f"FFLEET_WORKERS: must be a whole number >= 1, got {value!r}")
        return n
    limits = [default_workers(cgroup_root), ecs_cpu_limit(env)]
    return min(n for n in limits if n)


def stop_grace_from_env(env: Mapping[str, str]) -> float:
    """FFLEET_STOP_GRACE_SECONDS: how long a stopped batch may wind down before its records are written."""
    value = env.get("FFLEET_STOP_GRACE_SECONDS")
    if not value:
        return DEFAULT_STOP_GRACE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= 3600:
        raise InvalidBatch(f"FFLEET_STOP_GRACE_SECONDS: must be a number of seconds from 0 to 3600, got {value!r}")
    return seconds


# ---------------------------------------------------------------------------------------------
# Logs


class JsonLog:
    """One JSON object per line on stdout: awslogs sends each line to CloudWatch Logs as one event,
    and Logs Insights discovers the fields of JSON events, so `filter event="file" and
    status="failed" | stats count() by reason` works with no parse step.

    Powertools' Logger also runs outside Lambda, but it would add a dependency to the image for
    what is one json.dumps; the keys (level, message, timestamp, service) are the ones it writes,
    so one query serves the Lambdas' logs and these.
    """

    def __init__(self, stream: TextIO | None = None, **context: Any):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()  # the stop watchdog logs too: lines must not interleave
        self.context = {k: v for k, v in context.items() if v is not None}

    def __call__(self, level: str, message: str, **fields: Any) -> None:
        line = {
            "level": level,
            "message": message,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "service": SERVICE,
            **self.context,
            **{k: v for k, v in fields.items() if v is not None},
        }
        with self._lock:
            self.stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            self.stream.flush()  # a killed job must not lose its last lines in a buffer


def _file_line(res: ItemResult) -> dict[str, Any]:
    d = json.loads(res.to_json())
    d.pop("extra", None)
    d.update(res.extra)
    if "segments" in d:  # a long recording's pieces would pass CloudWatch's 256 KB per event; the record has them
        d["segments"] = len(d["segments"])
    return d


# ---------------------------------------------------------------------------------------------
# Running the batch


def read_previous_records(store: S3Storage, key: str) -> dict[str, ItemResult]:
    """The records an earlier attempt of this batch wrote (empty if none).

    Without s3:ListBucket S3 answers AccessDenied for a missing key; that is treated as "no earlier
    attempt", so a role that may only Get and Put still works. Anything else (no such bucket, no
    route to S3) fails the job now, before any work that could not be recorded.
    """
    try:
        body = store.read_bytes(key)
    except (NotFound, Forbidden):
        return {}
    except StorageError as exc:  # no such bucket, no route to S3...
        raise BatchError(str(exc)) from None
    try:
        return {r.key: r for r in read_records(body.splitlines())}
    except (ValueError, TypeError):
        return {}  # unreadable leftovers are simply overwritten


class _BatchState:
    """The results so far, shared by the main thread and the stop watchdog; the first to finish wins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: dict[str, ItemResult] = {}
        self.finishing = False
        self.infra_failures = 0
        self.tripped = False


def run_batch(
    batch: BatchOfItems,
    workers: int,
    log: JsonLog,
    client=None,
    max_consecutive_infra_failures: int = DEFAULT_MAX_CONSECUTIVE_INFRA_FAILURES,
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS,
) -> int:
    """Process one batch; write its records; return the exit code.

    After a stop (SIGTERM, or repeated storage faults) running FFmpegs are killed at once, but a
    download or upload in flight cannot be interrupted. If the batch has not wound down within
    `stop_grace_seconds`, a watchdog writes the records as they stand (the rest not_done) and
    ends the process, so they are written before ECS's SIGKILL, 30 s after its SIGTERM.
    """
    started = time.monotonic()
    bucket, records_key = split_s3_uri(batch.records_uri)
    results = S3Storage(bucket, client)
    previous = read_previous_records(results, records_key)
    work_dir = Path(tempfile.mkdtemp(prefix="ffleet-worker-"))
    try:
        ctx = WorkContext.for_request(batch.request, work_dir=work_dir, client=results.client)
    except SandboxRequired as exc:  # this host cannot confine FFmpeg: no retry on it will either
        shutil.rmtree(work_dir, ignore_errors=True)
        raise InvalidBatch(str(exc)) from exc
    try:
        # before the first conversion: a missing output bucket was found only after every file
        # had been converted (and then failed each one alone). A batch with nothing to write skips it.
        if batch.items:
            ctx.output_store.check_writable(batch.request.output.s3_prefix)
    except (MissingBucket, Forbidden) as exc:  # a retry of the job meets the same bucket and policy
        shutil.rmtree(work_dir, ignore_errors=True)
        raise InvalidBatch(f"the output location cannot be written: {exc}") from None
    except StorageError as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise BatchError(f"the output location cannot be written: {exc}") from None
    state = _BatchState()
    all_done = threading.Event()

    def finish(signalled: bool) -> int:
        """Write the records (one PUT: whole or nothing, and a retry's PUT replaces it) and log the summary."""
        ordered = list(state.done.values())
        builder = SummaryBuilder(dataset=None).add_all(ordered)  # the log line carries no dataset card
        write_error = None
        try:
            data = "".join(r.to_json() + "\n" for r in ordered).encode("utf-8")
            results.write_bytes(records_key, data, content_type="application/x-ndjson")
        except StorageError as exc:
            write_error = str(exc)
        not_done = builder.counts[NOT_DONE]
        if write_error:
            code = EXIT_INFRASTRUCTURE
        elif not_done and signalled:
            code = EXIT_INTERRUPTED
        elif not_done or state.infra_failures:
            code = EXIT_INFRASTRUCTURE
        else:
            code = EXIT_OK
        summary = builder.summary(wall_seconds=time.monotonic() - started, name=batch.request.name, workers=workers)
        log(
            "INFO" if code == EXIT_OK else "ERROR",
            "batch summary" if not write_error else f"batch summary: the records could not be written: {write_error}",
            event="batch_summary",
            exit_code=code,
            interrupted=signalled or None,
            records=batch.records_uri if not write_error else None,
            **{k: summary[k] for k in ("files", "failures_by_reason", "bytes", "audio_seconds", "wall_seconds", "cpu_seconds")},
        )
        if write_error:
            print(f"ffleet worker: cannot write the records: {write_error}", file=sys.stderr)
        return code

    def watchdog() -> None:
        while not ctx.registry.stopping.wait(1.0):
            if all_done.is_set():
                return
        if all_done.wait(stop_grace_seconds):
            return
        with state.lock:
            if state.finishing:
                return
            state.finishing = True
            for item in batch.items:
                if item.key not in state.done:
                    res = ItemResult(
                        key=item.key, status=NOT_DONE, output_key=ctx.output_key_for(item.key), reason="interrupted",
                        detail=f"not finished {stop_grace_seconds:g} s after the stop (a transfer still in flight)",
                    )
                    state.done[item.key] = res
                    log("WARNING", "file not_done", event="file", **_file_line(res))
        code = finish(signalled=not state.tripped)
        shutil.rmtree(work_dir, ignore_errors=True)
        sys.stdout.flush()
        os._exit(code)  # the threads still waiting on S3 cannot be joined; the records are written

    log(
        "INFO", "batch started", event="batch_start", files_in_batch=len(batch.items), ignored_keys=batch.ignored,
        workers=workers, records=batch.records_uri, earlier_records=len(previous) or None,
        sandbox=ctx.sandbox.to_dict(),
    )
    threading.Thread(target=watchdog, name="ffleet-stop-watchdog", daemon=True).start()
    consecutive = 0
    try:
        with stop_on_signals(ctx):
            for res in run_items(ctx, batch.items, workers=workers):
                before = previous.get(res.key)
                if res.status == SKIPPED and before is not None and before.status == SUCCEEDED:
                    # An earlier attempt of this batch made this output: keep its record, so a
                    # retried job reports the file as succeeded once rather than as skipped.
                    before.extra["resumed"] = True
                    res = before
                with state.lock:
                    if state.finishing:
                        break
                    state.done[res.key] = res
                    if res.status != NOT_DONE and res.reason in INFRA_REASONS:
                        state.infra_failures += 1
                        consecutive += 1
                        if consecutive >= max_consecutive_infra_failures and not ctx.registry.stopping.is_set():
                            state.tripped = True
                            log("ERROR", f"{consecutive} storage faults in a row: stopping this batch", event="circuit_open")
                            ctx.registry.stop_all()
                    elif res.status != NOT_DONE:
                        consecutive = 0
                level = "INFO" if res.status in (SUCCEEDED, SKIPPED) else "WARNING"
                log(level, f"file {res.status}", event="file", **_file_line(res))
        all_done.set()
        with state.lock:
            if state.finishing:  # the watchdog is writing the records and will end the process
                threading.Event().wait()
            state.finishing = True
        return finish(signalled=ctx.registry.stopping.is_set() and not state.tripped)
    finally:
        all_done.set()
        shutil.rmtree(work_dir, ignore_errors=True)


def main(env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> int:
    """`ffleet worker`: everything comes from the environment, as the Batch job definition sets it."""
    env = os.environ if env is None else env
    log = JsonLog(
        stream,
        job_id=env.get("AWS_BATCH_JOB_ID"),
        attempt=int(env["AWS_BATCH_JOB_ATTEMPT"]) if env.get("AWS_BATCH_JOB_ATTEMPT", "").isdigit() else None,
    )
    try:
        workers = job_workers(env)
        grace = stop_grace_from_env(env)
        client = s3_client()
        batch = load_batch(env, client)
        log.context["batch_id"] = batch.batch_id
        log.context["run"] = batch.request.name
        return run_batch(batch, workers, log, client=client, stop_grace_seconds=grace)
    except BatchError as exc:
        log("ERROR", str(exc), event="batch_error", exit_code=exc.exit_code)
        print(f"ffleet worker: {exc}", file=sys.stderr)
        return exc.exit_code


def cmd_worker(args) -> int:  # noqa: ARG001 - argparse hands every command its namespace
    return main()
