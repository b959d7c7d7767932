"""Runs from manifests dropped under manifests/ in the trigger bucket, and a .rejected.json for any drop that cannot run."""
from __future__ import annotations

import codecs
import itertools
import json
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string  # a JSON string literal, non-ASCII kept
from typing import IO, Any, Iterable, Iterator

from ffleet.inventory import (ManifestError, ManifestLineError, csv_manifest_keys, json_lines_rows,
                             looks_like_json_lines)
from ffleet.joblimits import StackLimits
from ffleet.request import MAX_REQUEST_BYTES, JobRequest, RequestError, parse_request
from ffleet.results import REQUEST_FILE
from ffleet.trigger import (
    MANIFEST_TYPES, REJECTED_SUFFIX, StartOutcome, check_cloud_request, check_stack_buckets, execution_input,
    execution_name, handle_s3_event, s3_records, start_execution,
)

JOBS_PREFIX = "jobs/"
MANIFESTS_PREFIX = "manifests/"
DEFAULT_REQUEST_PARAMETER = "DefaultRequest"
# The start function writes a manifest's keys, checked and as JSON Lines, into the run's own prefix:
# the state machine reads them from there (it may not read the trigger bucket), and the run keeps
# the exact list it was started with even if the dropped file is replaced.
RUN_KEYS_FILE = "input-keys.jsonl"
# The start function holds each distinct key once (the duplicate check): about 170 MB per million keys
# of 50 characters, measured; the template gives it 2048 MB. A longer list goes in a request's input.manifest.
MAX_MANIFEST_KEYS = 5_000_000
MAX_KEY_BYTES = 1024  # S3's limit: a longer "key" means the file is not a list of keys
# Where a failed-files.jsonl line names its run (results.failed_manifest_line).
RUN_FIELD = "run"
_RUN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# Input fields a manifest run fills in itself; the default request may only set the others.
_SOURCE_FIELDS = ("s3_bucket", "s3_prefix", "manifest", "path")
_CHUNK = 1 << 20
# JSON allows these raw in a string, but line-splitting readers (str.splitlines, perhaps Step Functions'
# JSONL reader) end a line at them: escape them in the run's keys file.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
MANIFEST_FORMATS = (
    ".csv (a header row with a 'key' column, or one key per line without a header), "
    '.jsonl or .ndjson (one {"key": "..."} object per line)'
)


class Rejected(ValueError):
    """A dropped object that starts no run. `problems` are (field, message) pairs, as in RequestError."""

    def __init__(self, problems: list[tuple[str, str]], hint: str):
        self.problems = problems
        self.hint = hint
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass
class ManifestKeys:
    """What reading a manifest found: how many keys it wrote, and the runs its lines name."""

    count: int = 0
    duplicates: int = 0
    runs: set[str | None] = field(default_factory=set)


# --- reading a manifest ----------------------------------------------------------------------
def manifest_kind(key: str) -> str | None:
    """csv or jsonl, from the object's extension (any case); None for anything else."""
    lower = key.lower()
    return next((kind for ext, kind in MANIFEST_TYPES.items() if lower.endswith(ext)), None)


def text_lines(body, source: str) -> Iterator[str]:
    """The lines of a stream (read(n)) as text, line ends kept, a UTF-8 byte order mark dropped."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset, rest, total = 0, "", 0
    while True:
        chunk = body.read(_CHUNK)
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk or b"", final=not chunk)
        except UnicodeDecodeError as exc:
            at = max(0, offset - pending + exc.start)
            raise Rejected([("(file)", f"{source} is not UTF-8 text (byte {at}: {exc.reason})")],
                           "save the file as UTF-8 and upload it again") from None
        offset += len(chunk or b"")
        total += len(chunk or b"")
        *lines, rest = (rest + text).split("\n")
        for line in lines:
            yield line + "\n"
        if not chunk:
            break
    if total == 0:
        raise Rejected([("(file)", f"{source} is empty")], "upload the file again with its content")
    if rest:
        yield rest


def csv_keys(lines: Iterable[str], source: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, key, None) for each key of a CSV manifest, by the rules `ffleet run` reads one with
    (inventory.csv_manifest_keys: a header row with a 'key' column in any case, or one key per line)."""
    try:
        for n, key in csv_manifest_keys(lines, source):
            yield n, key, None
    except ManifestError as exc:
        raise _line_problem(source, exc.line or 0, exc.reason) from None


def jsonl_keys(lines: Iterable[str], source: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, key, run) for each line of a JSON Lines manifest; run is set on failed-files.jsonl lines."""
    try:
        for n, row, key in json_lines_rows(lines):
            run = row.get(RUN_FIELD)
            yield n, key, run if isinstance(run, str) else None
    except ManifestLineError as exc:
        raise _line_problem(source, exc.line, exc.problem) from None


def _line_problem(source: str, line: int, message: str) -> Rejected:
    return Rejected([(f"line {line}", message)], f"fix {source} and upload it again; a manifest is {MANIFEST_FORMATS}")


def write_run_keys(body, kind: str, source: str, out: IO[bytes]) -> ManifestKeys:
    """Read a manifest and write its keys to `out` as {"key": ...} lines, each key once.

    Keys are taken exactly as the file spells them (S3 URL-encodes only the event's key, never the
    file's content). Memory grows with the number of distinct keys, for the duplicate check.
    """
    text = text_lines(body, source)
    head: list[str] = []
    for line in text:
        head.append(line)
        if line.strip():
            break
    if kind == "csv" and head and looks_like_json_lines(head[-1]):
        kind = "jsonl"  # as `ffleet run` reads it (inventory.parse_manifest): JSON Lines, whatever the name
    parse = csv_keys if kind == "csv" else jsonl_keys
    found = ManifestKeys()
    seen: set[str] = set()
    lines: list[str] = []
    for n, key, run in parse(itertools.chain(head, text), source):
        # a UTF-8 character takes at most 4 bytes: only a long key needs encoding to be measured
        if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise _line_problem(source, n, f"names a key longer than S3's {MAX_KEY_BYTES} bytes")
        found.runs.add(run)
        if key in seen:
            found.duplicates += 1  # a key twice would be converted twice, by jobs racing for one output
            continue
        seen.add(key)
        if len(seen) > MAX_MANIFEST_KEYS:
            raise Rejected([("(file)", f"{source} names more than {MAX_MANIFEST_KEYS:,} keys")],
                           f"split it into several manifests, or put it in the input bucket and drop a request under "
                           f'{JOBS_PREFIX} whose input is {{"s3_bucket": "<input bucket>", "manifest": "s3://<input bucket>/<key>"}}')
        literal = _json_string(key)
        lines.append('{"key": ' + (literal if literal.isascii() else literal.translate(_LINE_BREAKS)) + "}\n")
        if len(lines) >= 10_000:
            out.write("".join(lines).encode("utf-8"))
            lines.clear()
    out.write("".join(lines).encode("utf-8"))
    found.count = len(seen)
    if not found.count:
        raise Rejected([("(file)", f"{source} names no keys")], f"a manifest is {MANIFEST_FORMATS}")
    return found


# --- the request a manifest runs with ---------------------------------------------------------
def _without_help() -> str:
    return (
        f"this stack has no default request for manifests. Either set the stack parameter "
        f"{DEFAULT_REQUEST_PARAMETER} to a request without input (one line of JSON, e.g. "
        '{"name": "nightly", "compute": "arm", "output": {"s3_bucket": "<output bucket>", '
        '"s3_prefix": "mono/", "file_options": "-ac 1"}}) with `sam deploy --parameter-overrides`, '
        f"or drop a request under {JOBS_PREFIX} whose input names the manifest: "
        '"input": {"s3_bucket": "<input bucket>", "manifest": "s3://<bucket>/<key of the manifest>"} '
        f"(the manifest then lives in the input bucket, not under {MANIFESTS_PREFIX})"
    )


def default_request_dict(text: str) -> dict[str, Any]:
    """The stack's default request (a request without its source), decoded."""
    if not text.strip():
        raise Rejected([(DEFAULT_REQUEST_PARAMETER, f"is not set; a manifest under {MANIFESTS_PREFIX} runs with it")], _without_help())
    where = f"the stack parameter {DEFAULT_REQUEST_PARAMETER}"
    fix = f"fix {where} (sam deploy --parameter-overrides), then upload the manifest again"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected([(DEFAULT_REQUEST_PARAMETER, f"is not valid JSON ({exc.msg}, column {exc.colno})")], fix) from None
    if not isinstance(data, dict):
        raise Rejected([(DEFAULT_REQUEST_PARAMETER, "must be a JSON object (a request without input)")], fix)
    inp = data.get("input")
    if inp is not None and not isinstance(inp, dict):
        raise Rejected([(f"{DEFAULT_REQUEST_PARAMETER}.input", "must be an object (or left out)")], fix)
    set_here = [f for f in _SOURCE_FIELDS if (inp or {}).get(f) not in (None, "", "null")]
    if set_here:
        raise Rejected(
            [(f"{DEFAULT_REQUEST_PARAMETER}.input.{f}", "leave it out: a manifest names the keys, and they are "
              "read from the stack's input bucket (InputBucketName)") for f in set_here], fix)
    return data


def recorded_request_dict(s3, results_bucket: str, run: str, source: str) -> dict[str, Any]:
    """The request a finished run recorded beside its failed-files.jsonl (runs/<run>/request.json)."""
    uri = f"s3://{results_bucket}/runs/{run}/{REQUEST_FILE}"
    hint = (f"re-drive with a request instead: drop one under {JOBS_PREFIX} whose input is "
            f'{{"s3_bucket": "<input bucket>", "manifest": "s3://{results_bucket}/runs/{run}/failed-files.jsonl"}}')
    if not _RUN_NAME.match(run):
        raise Rejected([(RUN_FIELD, f"{run!r} in {source} is not a run (execution) name")], hint)
    try:
        body = s3.get_object(Bucket=results_bucket, Key=f"runs/{run}/{REQUEST_FILE}")["Body"].read()
    except Exception as exc:  # NoSuchKey, or AccessDenied (S3's answer for a missing key without ListBucket)
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        raise Rejected([(RUN_FIELD, f"the lines name run {run}, but its request {uri} cannot be read ({code}); "
                         "runs summarized before request.json was recorded have none")], hint) from None
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        raise Rejected([(RUN_FIELD, f"{uri} is not a request (a JSON object)")], hint)
    return data


def manifest_request(base: dict[str, Any], bucket: str, manifest_uri: str, *, input_bucket: str = "",
                     output_bucket: str = "", results_bucket: str = "") -> JobRequest:
    """base with its source replaced: the keys of manifest_uri, in bucket. Other input options stay.
    Held to the stack's buckets as a request under jobs/ is (manifest_uri lives in the results bucket)."""
    data = dict(base)
    inp = {k: v for k, v in (data.get("input") or {}).items() if k not in _SOURCE_FIELDS}
    data["input"] = {**inp, "s3_bucket": bucket, "manifest": manifest_uri}
    results = data.pop("results", None)  # a run's results always live in the stack's results bucket
    if isinstance(results, dict) and results.get("manifests"):
        data["results"] = {"manifests": results["manifests"]}
    request = parse_request(data)
    check_cloud_request(request)
    check_stack_buckets(request, input_bucket=input_bucket, output_bucket=output_bucket, results_bucket=results_bucket)
    return request


# --- the start function's S3 events -----------------------------------------------------------
def _reject(s3, outcome: StartOutcome, bucket: str, key: str, kind: str, exc: Rejected, hint: str, log=None) -> None:
    uri = f"s3://{bucket}/{key}"
    doc = {"valid": False, "errors": [{"field": f, "message": m} for f, m in exc.problems], kind: uri, "hint": hint}
    s3.put_object(Bucket=bucket, Key=key + REJECTED_SUFFIX, Body=json.dumps(doc, indent=2, ensure_ascii=False).encode(),
                  ContentType="application/json")
    outcome.rejected.append({kind: uri, "errors": doc["errors"]})
    if log:
        log.warning(f"rejected {kind}", extra={kind: uri, "errors": doc["errors"]})


def _misplaced(key: str) -> Rejected | None:
    """Why an object under jobs/ or manifests/ cannot be what its place says, if it cannot."""
    name = posixpath.basename(key)
    if key.startswith(JOBS_PREFIX) and not key.endswith(".json"):
        where = f"; a list of keys belongs under {MANIFESTS_PREFIX}" if manifest_kind(key) else ""
        return Rejected([("(file)", f"{name!r} is not a request: requests under {JOBS_PREFIX} end with .json{where}")],
                        "rename it, or move it, and upload it again")
    if key.startswith(MANIFESTS_PREFIX) and manifest_kind(key) is None:
        where = f"; a request belongs under {JOBS_PREFIX}" if key.lower().endswith(".json") else ""
        return Rejected([("(file)", f"{name!r} is not a manifest: a manifest is {MANIFEST_FORMATS}{where}")],
                        "rename it, or move it, and upload it again")
    return None


def handle_trigger_event(event: dict[str, Any], *, s3, sfn, state_machine_arn: str, results_bucket: str,
                         input_bucket: str = "", output_bucket: str = "", limits: StackLimits | None = None,
                         default_request: str = "", log=None) -> StartOutcome:
    """Every record of an S3 ObjectCreated event on the trigger bucket: a request under jobs/, a
    manifest under manifests/, or something that gets a .rejected.json saying why it starts nothing."""
    outcome = StartOutcome()
    raw_records = event.get("Records") or []
    for raw, rec in zip(raw_records, s3_records(event)):
        bucket, key = rec["bucket"], rec["key"]
        uri = f"s3://{bucket}/{key}"
        if key.endswith(REJECTED_SUFFIX) or key.endswith("/") or not key.startswith((JOBS_PREFIX, MANIFESTS_PREFIX)):
            # our own notes (S3 filters cannot exclude a suffix), console folder markers, other prefixes
            outcome.ignored.append(uri)
            continue
        kind = "request" if key.startswith(JOBS_PREFIX) else "manifest"
        size = ((raw.get("s3") or {}).get("object") or {}).get("size")
        problem = _misplaced(key)
        if problem is None and size == 0:
            problem = Rejected([("(file)", f"{uri} is empty")], "upload the file again with its content")
        # trigger.handle_s3_event refuses an oversized request too, after reading its first bytes; the
        # event's size answers before any download, and says where a long list of keys belongs
        if problem is None and kind == "request" and isinstance(size, int) and size > MAX_REQUEST_BYTES:
            problem = Rejected([("(file)", f"{uri} is {size} bytes; a request may be at most {MAX_REQUEST_BYTES} "
                                 "(Step Functions' input limit). A long list of keys belongs in a manifest")],
                               f"put the keys in a manifest under {MANIFESTS_PREFIX}, or in one named by input.manifest")
        if problem is not None:
            _reject(s3, outcome, bucket, key, kind, problem, problem.hint, log)
            continue
        if kind == "request":
            done = handle_s3_event({"Records": [raw]}, s3=s3, sfn=sfn, state_machine_arn=state_machine_arn,
                                   results_bucket=results_bucket, log=log, input_bucket=input_bucket,
                                   output_bucket=output_bucket, limits=limits)
            for name in ("started", "already_running", "rejected", "ignored"):
                getattr(outcome, name).extend(getattr(done, name))
            continue
        try:
            start_manifest_run(rec, s3=s3, sfn=sfn, state_machine_arn=state_machine_arn, results_bucket=results_bucket,
                               input_bucket=input_bucket, output_bucket=output_bucket, limits=limits,
                               default_request=default_request, outcome=outcome, log=log)
        except Rejected as exc:
            _reject(s3, outcome, bucket, key, "manifest", exc, exc.hint, log)
    return outcome


def start_manifest_run(rec: dict[str, str], *, s3, sfn, state_machine_arn: str, results_bucket: str, input_bucket: str,
                       default_request: str, outcome: StartOutcome, output_bucket: str = "",
                       limits: StackLimits | None = None, log=None) -> None:
    """One manifest: check it, write its keys into the run's prefix, start the run (once per version)."""
    bucket, key = rec["bucket"], rec["key"]
    uri = f"s3://{bucket}/{key}"
    get = {"Bucket": bucket, "Key": key}
    if rec["version"]:
        get["VersionId"] = rec["version"]
    body = s3.get_object(**get)["Body"]
    with tempfile.TemporaryFile() as keys_file:
        found = write_run_keys(body, manifest_kind(key) or "", uri, keys_file)
        runs = found.runs - {None}
        if len(found.runs) > 1:
            listed = ", ".join(sorted(r or "(none)" for r in found.runs))
            raise Rejected([(RUN_FIELD, f"the lines name more than one run ({listed})")],
                           "drop each run's failed-files.jsonl on its own, as it was written")
        if runs:
            (run,) = runs
            base = recorded_request_dict(s3, results_bucket, run, uri)
            source_bucket = (base.get("input") or {}).get("s3_bucket") or input_bucket
            label, origin = f"{base.get('name')}-redrive", f"runs/{run}/{REQUEST_FILE}"
            fix = (f"that run's request no longer passes the checks; drop a corrected request under {JOBS_PREFIX} whose "
                   f'input is {{"s3_bucket": "<input bucket>", "manifest": "s3://{results_bucket}/runs/{run}/failed-files.jsonl"}}')
        else:
            if not input_bucket:
                raise Rejected([("INPUT_BUCKET", "the start function's environment names no input bucket")],
                               "deploy the stack's current template (it sets INPUT_BUCKET from InputBucketName)")
            base = default_request_dict(default_request)
            source_bucket, label, origin = input_bucket, str(base.get("name")), DEFAULT_REQUEST_PARAMETER
            fix = f"fix the stack parameter {DEFAULT_REQUEST_PARAMETER} (sam deploy --parameter-overrides), then upload the manifest again"
        name = execution_name(label, bucket, key, rec["version"] or rec["etag"])
        keys_key = f"runs/{name}/{RUN_KEYS_FILE}"
        try:
            request = manifest_request(base, source_bucket, f"s3://{results_bucket}/{keys_key}", input_bucket=input_bucket,
                                       output_bucket=output_bucket, results_bucket=results_bucket)
        except RequestError as exc:
            raise Rejected([(f"{origin}: {f}", m) for f, m in exc.problems], fix) from None
        keys_file.seek(0)
        # A duplicate event writes the same keys to the same object again: harmless, and it covers an
        # invocation that wrote them and then died before StartExecution.
        s3.put_object(Bucket=results_bucket, Key=keys_key, Body=keys_file, ContentType="application/x-ndjson")
    trigger = {"type": "s3-manifest", "bucket": bucket, "key": key, "version": rec["version"], "etag": rec["etag"],
               "keys": found.count, "duplicate_keys": found.duplicates, "redrive_of": next(iter(runs), "")}
    arn, fresh = start_execution(sfn, state_machine_arn, name, execution_input(request, name, results_bucket, trigger, limits))
    entry = {"manifest": uri, "execution_arn": arn, "keys": found.count}
    (outcome.started if fresh else outcome.already_running).append(entry)
    if log:
        log.info("started run" if fresh else "run already started", extra=entry)
