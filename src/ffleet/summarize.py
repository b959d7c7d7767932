"""Summarize a finished run: ResultWriter files + per-file records -> summary.json, re-drive manifest, metrics."""
from __future__ import annotations

import codecs
import json
import os
import posixpath
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ffleet.inventory import item_key, wanted
from ffleet.keys import OutputClaims
from ffleet.manifests import FORMATS as MANIFEST_FORMATS
from ffleet.manifests import ManifestWriter, local_locator
from ffleet.report import REPORT_FILE, render_html
from ffleet.request import RequestError, parse_request
from ffleet.results import (
    FAILED, FAILED_FILE, NOT_DONE, RECORDS_DIR, RECORDS_FILE, SKIPPED, SUMMARY_FILE, SUCCEEDED, ItemResult, SummaryBuilder, failed_manifest_line,
    read_records, summary_text,
)
from ffleet.results import REQUEST_FILE
from ffleet.storage import (
    CHUNK, ListedObject, LocalStorage, NotFound, S3Storage, Storage, StorageError, open_location, split_s3_uri,
)
from ffleet.storage import s3_client as make_s3_client


BATCHES_DIR = "batches/"
MANIFEST_FILE = "manifest.json"


# ResultWriter groups child executions by status; these statuses mean the child (one Batch job) failed.
FAILED_CHILD_STATUSES = ("FAILED", "TIMED_OUT", "ABORTED")
UNKNOWN = "unknown"  # a batch object with neither records nor a ResultWriter entry

_BATCH_URI = re.compile(r"batches/([A-Za-z0-9._-]+)\.json")
_BATCH_ID_FIELD = re.compile(r'\\*"batch_id\\*"\s*:\s*\\*"([A-Za-z0-9._-]+)')


class SummarizeError(ValueError):
    """The run cannot be summarized (bad event, unreadable or malformed ResultWriter file)."""


# --- the event ------------------------------------------------------------------------------
class ResultWriterDetails(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    bucket: str = Field(..., alias="Bucket")
    key: str = Field(..., alias="Key")


class MapResult(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    map_run_arn: str | None = Field(None, alias="MapRunArn")
    result_writer_details: ResultWriterDetails | None = Field(None, alias="ResultWriterDetails")
    # set instead when the Map state itself failed (its Catch passes the error on)
    error: str | None = Field(None, alias="Error")
    cause: str | None = Field(None, alias="Cause")


class SummarizeEvent(BaseModel):
    """What the state machine passes to the summarize Lambda (docs/contracts.md)."""

    model_config = ConfigDict(extra="allow")
    execution_name: str = Field(..., min_length=1)
    results_prefix: str
    request: dict[str, Any] = Field(default_factory=dict)
    # ResultWriter's details; or, where the map has no ResultWriter, the children's outputs inline
    map_result: MapResult | list[Any] | None = None

    @field_validator("results_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        split_s3_uri(v)  # raises ValueError naming the value
        return v if v.endswith("/") else v + "/"


def parse_event(event: Any) -> SummarizeEvent:
    try:
        return SummarizeEvent.model_validate(event)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors())
        raise SummarizeError(f"invalid summarize event: {problems}") from None


def _request_settings(request: dict[str, Any]) -> tuple[str | None, float]:
    """The run's name and tolerated failure percent, read leniently: the summary must still be
    written at the end of a long run even if the request's shape has moved on."""
    name = request.get("name") if isinstance(request.get("name"), str) else None
    processing = request.get("processing") if isinstance(request.get("processing"), dict) else {}
    tolerance = processing.get("tolerated_failure_percent", 0)
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 100:
        raise SummarizeError(f"request.processing.tolerated_failure_percent: {tolerance!r} is not a percentage")
    return name, float(tolerance)


# --- streaming readers ----------------------------------------------------------------------
def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a byte stream. Split as bytes: a b"\n" never occurs inside a UTF-8 character, and
    read_records decodes each line."""
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


def iter_json_values(chunks: Iterable[bytes], source: str) -> Iterator[Any]:
    """The elements of a JSON array, or the values of a JSON Lines file, one at a time.

    ResultWriter writes a JSON array by default (OutputType JSON) and JSON Lines with OutputType
    JSONL; one file can hold thousands of child executions, each carrying its batch of keys, so the
    array is decoded element by element instead of with one json.loads.
    """
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")()
    it = iter(chunks)
    buf, pos, eof, mode = "", 0, False, None

    def more(want: int) -> None:
        nonlocal buf, pos, eof
        buf = buf[pos:]
        pos = 0
        while not eof and len(buf) < want:
            chunk = next(it, None)
            if chunk is None:
                eof = True
                buf += text.decode(b"", final=True)
            else:
                buf += text.decode(chunk)

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(buf):
            if eof:
                break
            more(CHUNK)
            continue
        if mode is None:
            mode = "array" if buf[pos] == "[" else "lines"
            pos += buf[pos] == "["
            continue
        if mode == "array" and buf[pos] == "]":
            mode = "end"
            pos += 1
            continue
        if mode == "end":
            raise SummarizeError(f"{source}: unexpected data after the JSON array")
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if eof:
                raise SummarizeError(f"{source}: not JSON ({exc.msg} at character {exc.pos})") from None
            # Doubling what is buffered keeps re-decoding of a long element linear overall.
            more(2 * (len(buf) - pos) + CHUNK)
            continue
        if end >= len(buf) and not eof and not isinstance(value, (dict, list)):
            more(2 * (len(buf) - pos) + CHUNK)  # a number or literal may continue in the next chunk
            continue
        yield value
        pos = end
    if mode == "array":
        raise SummarizeError(f"{source}: the JSON array is not closed")


def iter_records(store: Storage, key: str) -> Iterator[ItemResult]:
    try:
        yield from read_records(iter_lines(store.iter_chunks(key)))
    except json.JSONDecodeError as exc:
        raise SummarizeError(f"{store.uri(key)}: a record is not JSON ({exc.msg})") from None


# --- ResultWriter entries ---------------------------------------------------------------------
@dataclass
class BatchOutcome:
    """One Distributed Map child (one AWS Batch job), as ResultWriter reports it."""

    status: str  # succeeded | failed | pending
    batch_id: str | None
    items: list[dict[str, Any]] | None
    retries: int | None
    request: dict[str, Any] | None = None  # the request the job was given (BatchInput.request)
    error: str | None = None
    cause: str | None = None
    start: float | None = None
    stop: float | None = None

    def detail(self) -> str:
        """Why the job failed, in one line: the error, and from a Batch job description in Cause
        its status reason and the last attempt's exit code or reason."""
        error = self.error or "batch job failed"
        cause = (self.cause or "").strip()
        job = _json_or_none(cause)
        if isinstance(job, dict):
            # Step Functions passes the Batch job description in PascalCase; accept the API's camelCase too.
            job = _pascal_keys(job)
            reason = str(job.get("StatusReason") or "")
            parts = [f"job {job['JobId']}" if job.get("JobId") else "", reason]
            if CANCELLED_BY_QUEUE in reason:
                # the queue's JobStateTimeLimitActions cancelled it while it waited in RUNNABLE
                error = "cancelled while waiting in RUNNABLE"
            attempts = job.get("Attempts")
            last = _pascal_keys(attempts[-1]) if isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict) else {}
            container = _pascal_keys(last["Container"]) if isinstance(last.get("Container"), dict) else {}
            if container.get("Reason") or last.get("StatusReason"):
                parts.append(str(container.get("Reason") or last.get("StatusReason")))
            if container.get("ExitCode") is not None:
                parts.append(f"exit code {container['ExitCode']}")
            if isinstance(attempts, list):
                parts.append(f"{len(attempts)} attempt(s)")
            cause = ", ".join(p for p in parts if p)
        return f"{error}: {cause}"[:300] if cause else error


# Batch's statusReason after a queue's JobStateTimeLimitActions cancelled a job that waited in RUNNABLE:
# "Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY".
CANCELLED_BY_QUEUE = "JobStateTimeLimit"


def _pascal_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {k[:1].upper() + k[1:]: v for k, v in obj.items()}


def _json_or_none(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def _find_key(obj: Any, name: str, depth: int = 0) -> Any:
    """The first value stored under `name` anywhere in a nested JSON value (breadth before depth)."""
    if depth > 6:
        return None
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _find_key(child, name, depth + 1)
        if found is not None:
            return found
    return None


def _caught_error(output: Any) -> dict[str, Any] | None:
    """A Catch that lets the map go on leaves {"Error", "Cause"} in the child's output (at the top,
    or under the Catch's ResultPath)."""
    if not isinstance(output, dict):
        return None
    if output.get("status") == "FAILED":  # the pipeline's "Record failed batch" state
        return {"Error": output.get("error"), "Cause": output.get("cause")}
    if "Error" in output:
        return output
    for value in output.values():
        if isinstance(value, dict) and "Error" in value and "Cause" in value:
            return value
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return value / 1000 if value > 1e11 else float(value)  # epoch milliseconds or seconds
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def parse_entry(entry: Any, group: str) -> BatchOutcome:
    """One ResultWriter entry (ExecutionArn, Input, Output, Status, Error, Cause, StartDate, ...)."""
    if not isinstance(entry, dict):
        raise SummarizeError(f"a ResultWriter {group} entry is not an object")
    raw_input, raw_output, cause = entry.get("Input"), entry.get("Output"), entry.get("Cause")
    child_input, output, cause_json = _json_or_none(raw_input), _json_or_none(raw_output), _json_or_none(cause)
    status_name = str(entry.get("Status") or group).upper()
    error = entry.get("Error")
    if status_name == "SUCCEEDED":
        caught = _caught_error(output)
        if caught:
            status, error, cause = FAILED, str(caught.get("Error")), caught.get("Cause")
            cause_json = _json_or_none(cause)
        else:
            status = SUCCEEDED
    elif status_name in FAILED_CHILD_STATUSES:
        status = FAILED
    else:
        status = "pending"

    batch_id = None
    batch_input = child_input.get("BatchInput") if isinstance(child_input, dict) else None
    if isinstance(batch_input, dict) and isinstance(batch_input.get("batch_id"), str):
        batch_id = batch_input["batch_id"]
    if batch_id is None:
        # The child makes the batch id; it reaches ResultWriter inside the output or, for a failed
        # Batch job, inside the job description in Cause (FFLEET_BATCH_URI in its environment).
        for text in (raw_output, cause, raw_input):
            if isinstance(text, str):
                m = _BATCH_ID_FIELD.search(text) or _BATCH_URI.search(text)
                if m:
                    batch_id = m.group(1)
                    break

    items = child_input.get("Items") if isinstance(child_input, dict) else None
    request = batch_input.get("request") if isinstance(batch_input, dict) else None
    attempts = _find_key(output, "Attempts")
    if not isinstance(attempts, list):
        attempts = _find_key(cause_json, "Attempts")
    retries = max(len(attempts) - 1, 0) if isinstance(attempts, list) and attempts else None
    return BatchOutcome(
        status=status, batch_id=batch_id, items=items if isinstance(items, list) else None, retries=retries,
        request=request if isinstance(request, dict) else None,
        error=str(error) if error else None, cause=str(cause) if cause else None,
        start=_timestamp(entry.get("StartDate")), stop=_timestamp(entry.get("StopDate")),
    )


def read_result_writer(store: Storage, manifest_key: str) -> tuple[dict[str, Any], Iterator[BatchOutcome]]:
    """Read manifest.json; return it and a stream of the entries of every file it lists."""
    try:
        manifest = json.loads(store.read_bytes(manifest_key))
    except json.JSONDecodeError as exc:
        raise SummarizeError(f"{store.uri(manifest_key)}: not JSON ({exc.msg})") from None
    files = manifest.get("ResultFiles") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise SummarizeError(f"{store.uri(manifest_key)}: no 'ResultFiles' object (is this a ResultWriter manifest?)")
    # Result files live in DestinationBucket; locally (a copied run) they sit beside the manifest.
    source = store
    if isinstance(store, S3Storage) and manifest.get("DestinationBucket"):
        source = S3Storage(manifest["DestinationBucket"], store.client)

    def entries() -> Iterator[BatchOutcome]:
        for group, listed in files.items():
            for n, f in enumerate(listed or []):
                key = f.get("Key") if isinstance(f, dict) else None
                if not isinstance(key, str):
                    raise SummarizeError(f"{store.uri(manifest_key)}: ResultFiles.{group}[{n}] has no 'Key'")
                if isinstance(store, LocalStorage):
                    key = posixpath.join(posixpath.dirname(manifest_key), posixpath.basename(key))
                for entry in iter_json_values(source.iter_chunks(key), source.uri(key)):
                    yield parse_entry(entry, group)

    return manifest, entries()


# --- disk-backed bookkeeping ------------------------------------------------------------------
class _Ledger:
    """What must be remembered across the whole run (batch ids, keys of unreported failed batches),
    kept in a temporary SQLite file so memory does not grow with the run."""

    def __init__(self, folder: str):
        self.db = sqlite3.connect(os.path.join(folder, "ledger.sqlite"))
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-2000;"
            "CREATE TABLE batch(id TEXT PRIMARY KEY, status TEXT, detail TEXT, keys TEXT, seen INTEGER DEFAULT 0);"
            "CREATE TABLE loose(key TEXT PRIMARY KEY, status TEXT, detail TEXT);"
        )
        self.loose_count = 0

    def add_batch(self, b: BatchOutcome) -> None:
        # Keys are kept only for batches that did not succeed: those are the ones whose files
        # may never have reported.
        keys = json.dumps(worker_keys(b.items, b.request)) if b.items is not None and b.status != SUCCEEDED else None
        self.db.execute(
            "INSERT OR REPLACE INTO batch(id, status, detail, keys) VALUES (?, ?, ?, ?)",
            (b.batch_id, b.status, b.detail() if b.status != SUCCEEDED else None, keys),
        )

    def add_loose(self, b: BatchOutcome) -> None:
        """Items of a failed batch whose id ResultWriter did not reveal: matched by key instead."""
        detail = b.detail()  # parses the batch's Cause: once per batch, not per item
        rows = [(key, b.status, detail) for key in worker_keys(b.items, b.request)]
        # rowcount counts the rows inserted, not those ignored as already there
        self.loose_count += self.db.executemany("INSERT OR IGNORE INTO loose VALUES (?, ?, ?)", rows).rowcount

    def batch(self, batch_id: str) -> tuple[str, str | None, str | None] | None:
        """A batch's ResultWriter outcome, if any; the batch is marked as having a records file."""
        row = self.db.execute("SELECT status, detail, keys FROM batch WHERE id = ?", (batch_id,)).fetchone()
        if row:
            self.db.execute("UPDATE batch SET seen = 1 WHERE id = ?", (batch_id,))
        else:
            self.db.execute("INSERT INTO batch(id, seen) VALUES (?, 1)", (batch_id,))
        return row

    def known(self, batch_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM batch WHERE id = ?", (batch_id,)).fetchone() is not None

    def claim(self, key: str) -> tuple[str, str] | None:
        """A record for `key` was found: it is not loose any more."""
        if not self.loose_count:
            return None
        row = self.db.execute("SELECT status, detail FROM loose WHERE key = ?", (key,)).fetchone()
        if row:
            self.db.execute("DELETE FROM loose WHERE key = ?", (key,))
            self.loose_count -= 1
        return row

    def unseen(self) -> Iterator[tuple[str, str, str | None, str | None]]:
        cur = self.db.execute("SELECT id, status, detail, keys FROM batch WHERE seen = 0 AND status IS NOT NULL")
        yield from cur

    def loose(self) -> Iterator[tuple[str, str, str]]:
        yield from self.db.execute("SELECT key, status, detail FROM loose")

    def close(self) -> None:
        self.db.close()


@lru_cache(maxsize=16)
def _request_extensions(request_json: str) -> tuple[str, ...] | None:
    """The input extensions a batch's worker filtered by. None (no filter) when the request no longer
    parses: then a file of another extension may be counted, but none is left out."""
    try:
        extensions = parse_request(json.loads(request_json)).input.extensions
    except (RequestError, ValueError):
        return None
    return tuple(extensions) if extensions else None


def worker_keys(items: Any, request: Any) -> list[str]:
    """The keys of a batch's items that its worker processes, and so must report: as
    batch_worker.parse_batch filters them, no folder markers, only the request's extensions, each once."""
    if not isinstance(items, list):
        return []
    extensions = _request_extensions(json.dumps(request, sort_keys=True)) if isinstance(request, dict) else None
    listed = [ListedObject(key) for key in map(item_key, items) if key]
    return [o.key for o in wanted(listed, list(extensions) if extensions else None, dedupe=True)]


def collided(r: ItemResult, holder: str) -> ItemResult:
    """A record whose output key another input's record already named (in another batch)."""
    return ItemResult(
        key=r.key, status=FAILED, output_key=r.output_key, reason="output_collision",
        bytes_in=r.bytes_in, duration_in=r.duration_in, cpu_seconds=r.cpu_seconds,
        detail=f"{holder} is also written to {r.output_key} (by another batch job); the object holds whichever "
               "job finished last. Give the inputs distinct outputs, then re-run both with overwrite",
    )


def unreported(key: str, batch_status: str, detail: str | None, batch_id: str | None) -> ItemResult:
    """The record a file gets when its Batch job ended without reporting it."""
    where = f" [batch {batch_id}]" if batch_id else ""
    if batch_status == FAILED:
        return ItemResult(key=key, status=FAILED, reason="batch_job_failed", detail=(detail or "") + where)
    if batch_status == "pending":
        return ItemResult(key=key, status=NOT_DONE, reason="interrupted",
                          detail="the map run ended before this batch finished" + where)
    if batch_status == UNKNOWN:
        return ItemResult(key=key, status=NOT_DONE, reason="interrupted",
                          detail="no result record, and ResultWriter does not list this batch" + where)
    return ItemResult(key=key, status=FAILED, reason="internal_error",
                      detail="the Batch job succeeded but wrote no result record for this file" + where)


# --- the summary -----------------------------------------------------------------------------
@dataclass
class RunSummary:
    summary: dict[str, Any]
    summary_uri: str | None = None
    failed_files_uri: str | None = None

    def short(self) -> dict[str, Any]:
        """What the execution's output shows: the counts, not the lists."""
        s = self.summary
        out = {
            "files": s["files"],
            "audio_hours": s["audio_hours"],
            "failed_percent": s["failed_percent"],
            "within_tolerance": s["within_tolerance"],
            "failures_by_reason": dict(list(s["failures_by_reason"].items())[:10]),
            "summary": self.summary_uri,
            "failed_files": self.failed_files_uri,
        }
        if "batches" in s:
            out["batches"] = s["batches"]
        out["verdict"] = self.verdict()
        return out

    def verdict(self) -> str:
        """One line for the execution's status: the failed percentage against the tolerance, the map's
        error if it stopped, and where the summary is. The state machine's Fail states show it as Cause."""
        s = self.summary
        files = s["files"]
        bad = files["failed"] + files["not_done"]
        judged = "within" if s["within_tolerance"] else "not within"
        text = (f"{bad} of {files['total']} files failed or were not done ({s['failed_percent']:.2f}%, "
                f"{files['failed']} failed, {files['not_done']} not done): {judged} the tolerated "
                f"{s['tolerated_failure_percent']:g}%")
        map_error = s["run"].get("map_error") if isinstance(s.get("run"), dict) else None
        if map_error:
            text = f"The Distributed Map stopped ({map_error}). " + text
        return f"{text}. Summary: {self.summary_uri or s['run'].get('results', '')}"


class _Aggregation:
    """SummaryBuilder plus the re-drive manifest, written as records stream past."""

    def __init__(self, failed_path: Path, run: str | None = None, manifests: ManifestWriter | None = None):
        self.builder = SummaryBuilder()
        self.failed = open(failed_path, "w", encoding="utf-8")
        self.record_files = 0
        self.run = run
        self.manifests = manifests

    def add(self, r: ItemResult) -> None:
        self.builder.add(r)
        if self.manifests is not None:
            self.manifests.add(r)
        if r.status in (FAILED, NOT_DONE):
            self.failed.write(failed_manifest_line(r, self.run) + "\n")

    def close(self) -> None:
        self.failed.close()


def summarize_cloud(
    results_prefix: str,
    manifest_uri: str | None = None,
    *,
    s3_client=None,
    name: str | None = None,
    execution_name: str | None = None,
    tolerated_failure_percent: float = 0.0,
    write: bool = True,
    inline_outputs: list[Any] | None = None,
    outputs_may_collide: bool = True,
    map_error: str | None = None,
    request: dict[str, Any] | None = None,
    manifests: list[str] | None = None,
    outputs: Storage | None = None,
    output_prefix: str = "",
) -> RunSummary:
    """Summarize a cloud run (or a local copy of one): its ResultWriter output and records/*.jsonl.

    Memory stays bounded: entries and records are streamed; what must be remembered across the
    run lives in a temporary SQLite file; per batch, at most one batch's keys are held.

    outputs_may_collide (a request whose output.extension replaces the input's): two inputs whose
    records name the same output key were converted by different jobs (a job fails such a clash
    within its own batch itself), so the object holds whichever finished last; every such record
    after the first counts as failed, output_collision.

    manifests (formats of ffleet.manifests): written from the same stream of records, to
    <results_prefix>manifests/ and (audiofolder's metadata.jsonl) the root of output_prefix in `outputs`.
    """
    store, prefix = open_location(results_prefix, s3_client)
    if isinstance(store, LocalStorage):
        prefix = ""
    elif prefix and not prefix.endswith("/"):
        prefix += "/"
    with tempfile.TemporaryDirectory(prefix="ffleet-summarize-") as tmp:
        writer = None
        if manifests and write and outputs is not None:
            writer = ManifestWriter(manifests, Path(tmp) / "manifests", output_prefix, local_locator(outputs))
        agg = _Aggregation(Path(tmp) / FAILED_FILE, execution_name or _run_of(prefix), writer)
        ledger = _Ledger(tmp)
        claims = OutputClaims(Path(tmp)) if outputs_may_collide else None
        run: dict[str, Any] = {"name": name, "execution_name": execution_name, "mode": "cloud", "map_error": map_error}
        start = stop = None
        try:
            # 1. ResultWriter: one entry per Batch job. Remember ids and outcomes, not records.
            entries: Iterator[BatchOutcome] = iter(())
            if inline_outputs is not None:
                # a map without ResultWriter returns its children's outputs; each is one job
                entries = (parse_entry({"Status": "SUCCEEDED", "Output": json.dumps(o)}, "SUCCEEDED") for o in inline_outputs)
            elif manifest_uri:
                m_store, m_key = open_location(manifest_uri, s3_client)
                run["result_writer_manifest"] = m_store.uri(m_key)
                try:
                    manifest, entries = read_result_writer(m_store, m_key)
                    run["map_run_arn"] = manifest.get("MapRunArn")
                except NotFound:
                    # ResultWriter failed or was not configured: the records and batch objects
                    # still tell what happened to every file, only the job counts are lost.
                    run["result_writer_missing"] = True
            for b in entries:
                agg.builder.add_batch(b.status, b.retries)
                start = min(filter(None, (start, b.start)), default=None)
                stop = max(filter(None, (stop, b.stop)), default=None)
                if b.batch_id:
                    ledger.add_batch(b)
                elif b.status != SUCCEEDED:
                    ledger.add_loose(b)
            # 2. Every records file, once: aggregate each record; for a batch that did not
            # succeed, the files it was given but never reported are failures too.
            for obj in store.list(prefix + RECORDS_DIR):
                if not obj.key.endswith(".jsonl"):
                    continue
                batch_id = posixpath.basename(obj.key).removesuffix(".jsonl")
                agg.record_files += 1
                # A batch ResultWriter did not list is checked against its batch object too.
                known = ledger.batch(batch_id) or (UNKNOWN, None, None)
                track = known[0] != SUCCEEDED
                seen_keys: set[str] = set()
                for r in iter_records(store, obj.key):
                    ledger.claim(r.key)
                    if claims is not None and r.status in (SUCCEEDED, SKIPPED) and r.output_key:
                        holder = claims.claim(r.output_key, r.key)
                        if holder is not None:
                            r = collided(r, holder)
                    agg.add(r)
                    if track:
                        seen_keys.add(r.key)
                if track:
                    _report_missing(agg, ledger, batch_id, known, store, prefix, seen_keys)
            # 3. Batches ResultWriter reported but that wrote no records file at all.
            for batch_id, status, detail, keys in ledger.unseen():
                _report_missing(agg, ledger, batch_id, (status, detail, keys), store, prefix, set())
            # 3b. Batch objects nothing else mentions (ResultWriter incomplete or missing, as under
            # moto): their files were handed to a job and never reported.
            for obj in store.list(prefix + BATCHES_DIR):
                batch_id = posixpath.basename(obj.key).removesuffix(".json")
                if obj.key.endswith(".json") and not ledger.known(batch_id):
                    _report_missing(agg, ledger, batch_id, (UNKNOWN, None, None), store, prefix, set())
            # 4. Files of failed batches whose id was never revealed, and that no record claimed.
            for key, status, detail in ledger.loose():
                agg.add(unreported(key, status, detail, None))
        finally:
            agg.close()
            ledger.close()
            if writer is not None:
                writer.close()
            if claims is not None:
                claims.close()
        run["results"] = store.uri(prefix)
        run["record_files"] = agg.record_files
        if start and stop:
            run["started_at"] = datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="seconds")
            run["stopped_at"] = datetime.fromtimestamp(stop, timezone.utc).isoformat(timespec="seconds")
        summary = agg.builder.summary(
            wall_seconds=(stop - start) if start and stop else 0.0,
            tolerated_failure_percent=tolerated_failure_percent,
            **{k: v for k, v in run.items() if v is not None},
        )
        if map_error:
            summary["within_tolerance"] = False  # files the map never reached are counted nowhere
        out = RunSummary(summary)
        if write and writer is not None:
            try:
                summary["manifests"] = writer.publish(store, prefix, outputs)
            except StorageError as exc:
                # the summary must still be written: it is what tells the run's outcome
                summary["manifests"] = {"error": str(exc)}
        if write:
            store.write_bytes(prefix + SUMMARY_FILE, summary_text(summary).encode("utf-8"), content_type="application/json")
            store.store(Path(tmp) / FAILED_FILE, prefix + FAILED_FILE, content_type="application/x-ndjson")
            if request:
                # failed-files.jsonl names this run; dropped under manifests/, it re-drives with this request
                store.write_bytes(prefix + REQUEST_FILE, json.dumps(request, ensure_ascii=False).encode("utf-8"),
                                  content_type="application/json")
            # the dataset card as a page, the same one a local run writes
            store.write_bytes(prefix + REPORT_FILE, render_html(summary).encode("utf-8"), content_type="text/html; charset=utf-8")
            out.summary_uri, out.failed_files_uri = store.uri(prefix + SUMMARY_FILE), store.uri(prefix + FAILED_FILE)
        return out


def _run_of(prefix: str) -> str | None:
    """The execution name in a cloud results prefix (runs/<execution-name>/), if it is one."""
    m = re.fullmatch(r"(?:.*/)?runs/([A-Za-z0-9_-]{1,80})/", prefix)
    return m.group(1) if m else None


def _report_missing(agg, ledger, batch_id, known, store, prefix, seen_keys: set[str]) -> None:
    status, detail, keys_json = known
    if keys_json is not None:
        keys = json.loads(keys_json)
    else:
        # Items were not inline in the child's input: read the batch object the child wrote.
        try:
            obj = json.loads(store.read_bytes(f"{prefix}{BATCHES_DIR}{batch_id}.json"))
        except NotFound:
            obj = {}  # nothing says which files it had; the job still counts as failed
        except json.JSONDecodeError as exc:
            raise SummarizeError(f"{store.uri(prefix + BATCHES_DIR + batch_id + '.json')}: not JSON ({exc.msg})") from None
        batch_input = obj.get("BatchInput") if isinstance(obj, dict) else None
        keys = worker_keys(obj.get("Items") if isinstance(obj, dict) else None,
                           batch_input.get("request") if isinstance(batch_input, dict) else None)
    for key in keys:
        if key not in seen_keys:
            seen_keys.add(key)
            claimed = ledger.claim(key)
            if claimed and status == UNKNOWN:
                status_here, detail_here = claimed  # the failed child ResultWriter reported without an id
            else:
                status_here, detail_here = status, detail
            agg.add(unreported(key, status_here, detail_here, batch_id))


def summarize_event(event: SummarizeEvent, s3_client) -> RunSummary:
    """The summarize Lambda's logic: everything but observability."""
    name, tolerance = _request_settings(event.request)
    inline = event.map_result if isinstance(event.map_result, list) else None
    details = event.map_result.result_writer_details if isinstance(event.map_result, MapResult) else None
    manifest_uri = f"s3://{details.bucket}/{details.key}" if details else None
    map_error = None
    if isinstance(event.map_result, MapResult) and event.map_result.error:
        map_error = f"{event.map_result.error}: {event.map_result.cause or ''}".strip(": ")[:500]
        # The Map's Catch replaced ResultWriter's details; ResultWriter may still have written its files.
        if manifest_uri is None:
            manifest_uri = _find_manifest(event.results_prefix, s3_client)
    output = event.request.get("output") if isinstance(event.request.get("output"), dict) else {}
    return summarize_cloud(
        event.results_prefix, manifest_uri, s3_client=s3_client, name=name,
        execution_name=event.execution_name, tolerated_failure_percent=tolerance, inline_outputs=inline,
        # prefix + key + suffix is one output per input; only a replaced extension can share one
        outputs_may_collide=bool(output.get("extension")) if event.request else True,
        map_error=map_error,
        request=event.request or None,
        **_manifest_settings(event.request, s3_client),
    )


def _manifest_settings(request: dict[str, Any], s3_client) -> dict[str, Any]:
    """The request's results.manifests and where its outputs are, read leniently (the start Lambda
    validated the request; an unknown name is left out rather than losing the summary)."""
    results = request.get("results") if isinstance(request.get("results"), dict) else {}
    wanted = results.get("manifests") if isinstance(results.get("manifests"), list) else []
    output = request.get("output") if isinstance(request.get("output"), dict) else {}
    bucket, prefix = output.get("s3_bucket"), output.get("s3_prefix") or ""
    formats = [f for f in MANIFEST_FORMATS if f in wanted]
    if not formats or not isinstance(bucket, str) or not isinstance(prefix, str):
        return {}
    return {"manifests": formats, "outputs": S3Storage(bucket, s3_client), "output_prefix": prefix}


def summarize_local_run(folder: str | Path, tolerated_failure_percent: float | None = None) -> RunSummary:
    """Re-aggregate a local `ffleet run` results folder (records.jsonl, summary.json) without writing."""
    folder = Path(folder)
    store = LocalStorage(folder)
    previous: dict[str, Any] = {}
    if (folder / SUMMARY_FILE).is_file():
        try:
            previous = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SummarizeError(f"{folder / SUMMARY_FILE}: not JSON ({exc.msg})") from None
    builder = SummaryBuilder().add_all(iter_records(store, RECORDS_FILE))
    summary = builder.summary(
        wall_seconds=float(previous.get("wall_seconds") or 0.0),
        tolerated_failure_percent=(
            tolerated_failure_percent if tolerated_failure_percent is not None
            else previous.get("tolerated_failure_percent", 0.0)
        ),
        **(previous.get("run") or {"results": str(folder)}),
    )
    return RunSummary(summary, summary_uri=str(folder / SUMMARY_FILE), failed_files_uri=str(folder / FAILED_FILE))


def summarize_location(location: str, *, s3_client=None, write: bool = False, results_prefix: str | None = None,
                       tolerated_failure_percent: float | None = None) -> RunSummary:
    """What `ffleet summarize` takes: a ResultWriter manifest.json (s3:// or local), a local run's
    results folder, or a cloud results prefix/folder (records/ and <map-run-id>/manifest.json)."""
    if s3_client is None and location.startswith("s3://"):
        s3_client = make_s3_client()  # one client (and one credentials lookup) for every read below
    if location.endswith(MANIFEST_FILE):
        if results_prefix is None:
            # <results_prefix><map-run-id>/manifest.json
            results_prefix = posixpath.dirname(posixpath.dirname(location.rstrip("/"))) + "/"
        manifest_uri: str | None = location
    else:
        if not location.startswith("s3://") and (Path(location) / RECORDS_FILE).is_file():
            return summarize_local_run(location, tolerated_failure_percent)
        results_prefix = results_prefix or location
        manifest_uri = _find_manifest(results_prefix, s3_client)
    if not location.startswith("s3://"):
        folder = Path(results_prefix)
        if not folder.is_dir():
            raise SummarizeError(f"{results_prefix} is not a results folder")
        if manifest_uri is None and not (folder / RECORDS_DIR).is_dir():
            runs = sorted(p.parent.name for p in folder.glob(f"*/{RECORDS_FILE}"))[-5:]
            hint = f"; runs in it: {', '.join(runs)}" if runs else ""
            raise SummarizeError(
                f"{folder} holds no {RECORDS_FILE} (a local run), records/ or */{MANIFEST_FILE} (a cloud run){hint}"
            )
    tolerance = tolerated_failure_percent
    if tolerance is None:
        tolerance = _previous_tolerance(results_prefix, s3_client)
    manifests: dict[str, Any] = {}
    if write and location.startswith("s3://"):
        # a run whose summarizer failed or timed out is summarized again here: its manifests too
        manifests = _manifest_settings(_previous_request(results_prefix, s3_client), s3_client)
    return summarize_cloud(results_prefix, manifest_uri, s3_client=s3_client, write=write,
                           tolerated_failure_percent=tolerance, **manifests)


def _previous_request(results_prefix: str, s3_client) -> dict[str, Any]:
    """The run's request.json (the summarizer keeps it beside the summary), else {}."""
    store, prefix = open_location(results_prefix, s3_client)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    try:
        request = json.loads(store.read_bytes(prefix + REQUEST_FILE))
    except (NotFound, ValueError):
        return {}
    return request if isinstance(request, dict) else {}


def _find_manifest(results_prefix: str, s3_client) -> str | None:
    store, prefix = open_location(results_prefix, s3_client)
    if isinstance(store, LocalStorage):
        prefix = ""
    elif prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        found = [o.key for o in store.list(prefix) if o.key.count("/") == prefix.count("/") + 1
                 and o.key.endswith("/" + MANIFEST_FILE)]
    except StorageError as exc:
        raise SummarizeError(str(exc)) from None
    if len(found) > 1:
        raise SummarizeError(f"{results_prefix} holds {len(found)} ResultWriter manifests; name one: {found[:3]}")
    return store.uri(found[0]) if found else None


def _previous_tolerance(results_prefix: str, s3_client) -> float:
    """The tolerance the run was summarized with before (summary.json), else 0."""
    store, prefix = open_location(results_prefix, s3_client)
    prefix = "" if isinstance(store, LocalStorage) else (prefix if not prefix or prefix.endswith("/") else prefix + "/")
    try:
        return float(json.loads(store.read_bytes(prefix + SUMMARY_FILE)).get("tolerated_failure_percent") or 0.0)
    except (NotFound, ValueError, AttributeError):
        return 0.0


# --- metrics ---------------------------------------------------------------------------------
def publish_metrics(metrics, summary: dict[str, Any]) -> None:
    """Add the run's metrics to a Powertools Metrics object (flushed as EMF by log_metrics), and
    one FilesFailedByReason metric per reason, with a Reason dimension, as its own EMF line."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    files = summary["files"]
    metrics.add_metric(name="FilesSucceeded", unit=MetricUnit.Count, value=files["succeeded"])
    metrics.add_metric(name="FilesFailed", unit=MetricUnit.Count, value=files["failed"] + files["not_done"])
    metrics.add_metric(name="FilesSkipped", unit=MetricUnit.Count, value=files["skipped"])
    metrics.add_metric(name="AudioHoursProcessed", unit=MetricUnit.Count, value=summary["audio_hours"]["output"])
    metrics.add_metric(name="BytesIn", unit=MetricUnit.Bytes, value=summary["bytes"]["input"])
    metrics.add_metric(name="BytesOut", unit=MetricUnit.Bytes, value=summary["bytes"]["output"])
    batches = summary.get("batches") or {}
    metrics.add_metric(name="FailedBatches", unit=MetricUnit.Count, value=batches.get("failed", 0))
    metrics.add_metric(name="BatchJobs", unit=MetricUnit.Count, value=batches.get("jobs", 0))
    dimensions = dict(metrics.default_dimensions)
    if metrics.service:
        dimensions.setdefault("service", metrics.service)
    for reason, count in summary["failures_by_reason"].items():
        with single_metric(name="FilesFailedByReason", unit=MetricUnit.Count, value=count,
                           namespace=metrics.namespace, default_dimensions=dimensions) as m:
            m.add_dimension(name="Reason", value=str(reason)[:250])


# --- CLI -------------------------------------------------------------------------------------
def cmd_summarize(args) -> int:
    import sys

    from ffleet.results import format_summary

    try:
        result = summarize_location(
            args.location, write=args.write, results_prefix=args.results_prefix,
            tolerated_failure_percent=args.tolerated_failure_percent,
        )
    except (SummarizeError, StorageError, ValueError) as exc:
        print(f"ffleet: cannot summarize {args.location}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary, indent=2, ensure_ascii=False) if args.json else format_summary(result.summary))
    return 0 if result.summary["within_tolerance"] else 1
