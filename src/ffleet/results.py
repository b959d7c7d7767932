"""Per-file result records and the streaming aggregation that turns them into a run summary."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Iterator

SUCCEEDED, FAILED, SKIPPED, REJECTED, NOT_DONE = "succeeded", "failed", "skipped", "rejected", "not_done"

# Failure reason classes. A reason says whose fault it is: the file's (retrying will not help)
# or the infrastructure's (a retry may).
FILE_REASONS = (
    "empty_input", "corrupt_input", "unsupported_format", "no_audio_stream", "timeout", "ffmpeg_error", "invalid_output",
    "not_found", "output_collision", "output_too_large", "invalid_key",
)
INFRA_REASONS = ("storage_error", "interrupted", "batch_job_failed", "internal_error", "sandbox_error")

# The files every run writes beside its results, locally and in the cloud (docs/contracts.md).
RECORDS_FILE = "records.jsonl"  # a local run's per-file records
RECORDS_DIR = "records/"  # a cloud run's: records/<batch_id>.jsonl under the run's results prefix
SUMMARY_FILE = "summary.json"
FAILED_FILE = "failed-files.jsonl"
REQUEST_FILE = "request.json"  # a cloud run's request, beside failed-files.jsonl: a re-drive reads its options

# Exit codes of every command that ends a run (`ffleet run`, `ffleet submit --wait`, `ffleet status`):
# 0 within tolerance; 1 failures over tolerance, or the run failed, timed out or was stopped; 2 invalid request.
EXIT_OK, EXIT_FAILURES, EXIT_INVALID = 0, 1, 2
EXIT_SIGINT = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C ended

SUMMARY_FAILURE_LIST_LIMIT = 100  # the summary lists this many; failed-files.jsonl has them all


@dataclass
class ItemResult:
    key: str
    status: str
    output_key: str | None = None
    reason: str | None = None
    detail: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    duration_in: float | None = None
    duration_out: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    codec: str | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # the fields read as they are (dataclasses.asdict deep-copies every value first: a tenth of
        # the Python time a file costs); `extra` holds plain JSON values only
        d = {name: getattr(self, name) for name in _RECORD_FIELDS}
        if "segments" in self.extra:  # a segmented input's pieces: a top-level field (docs/contracts.md)
            extra = dict(self.extra)
            d["segments"] = extra.pop("segments")
            d["extra"] = extra
        if not d["extra"]:
            d.pop("extra")
        return json.dumps({k: v for k, v in d.items() if v is not None}, ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ItemResult":
        known = cls.__dataclass_fields__.keys()
        if "extra" not in d and d.keys() <= known:
            return cls(**d)  # the common case; summarizing millions of records spends its time here
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        return cls(**{k: v for k, v in d.items() if k in known and k != "extra"}, extra=extra)


_RECORD_FIELDS = tuple(f.name for f in fields(ItemResult))


def summary_text(summary: dict[str, Any]) -> str:
    """summary.json as ffleet writes it, locally and in the cloud."""
    return json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


def read_records(lines: Iterable[str | bytes]) -> Iterator[ItemResult]:
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        if line.strip():
            yield ItemResult.from_dict(json.loads(line))


class SummaryBuilder:
    """Aggregates result records one at a time; memory stays bounded whatever the run's size."""

    def __init__(self, failure_list_limit: int = SUMMARY_FAILURE_LIST_LIMIT, dataset: bool | None = True):
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.seconds_in = 0.0
        self.seconds_out = 0.0
        self.cpu_seconds = 0.0
        self.failures: list[dict[str, Any]] = []
        self.failure_list_limit = failure_list_limit
        # AWS Batch jobs (Distributed Map children) by outcome; cloud runs only, so a local
        # summary keeps its schema and a cloud summary is a superset of it.
        self.jobs: Counter[str] = Counter()
        self.job_retries = 0
        self.jobs_with_known_attempts = 0
        # the dataset card (ffleet.dataset); dataset=False (or None) leaves it out
        from ffleet.dataset import DatasetCardBuilder

        self.dataset = DatasetCardBuilder() if dataset else None

    def add(self, r: ItemResult) -> None:
        self.counts[r.status] += 1
        if r.status in (FAILED, NOT_DONE, REJECTED):
            self.reasons[r.reason or "unknown"] += 1
            if r.status != REJECTED and len(self.failures) < self.failure_list_limit:
                self.failures.append({"key": r.key, "reason": r.reason, "detail": (r.detail or "")[:500]})
        if r.status == SUCCEEDED:
            self.bytes_out += r.bytes_out or 0
            self.seconds_out += r.duration_out or 0.0
        if r.status in (SUCCEEDED, FAILED, REJECTED):
            self.bytes_in += r.bytes_in or 0
            self.seconds_in += r.duration_in or 0.0
        self.cpu_seconds += r.cpu_seconds or 0.0
        if self.dataset is not None:
            self.dataset.add(r)

    def add_batch(self, outcome: str, retries: int | None = None) -> None:
        """Count one AWS Batch job: outcome is succeeded, failed or pending; retries if known."""
        self.jobs[outcome] += 1
        if retries is not None:
            self.job_retries += retries
            self.jobs_with_known_attempts += 1

    def add_all(self, records: Iterable[ItemResult]) -> "SummaryBuilder":
        for r in records:
            self.add(r)
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed_count(self) -> int:
        return self.counts[FAILED] + self.counts[NOT_DONE]

    def failed_percent(self) -> float:
        return 100.0 * self.failed_count / self.total if self.total else 0.0

    def summary(self, *, wall_seconds: float, tolerated_failure_percent: float = 0.0, **run: Any) -> dict[str, Any]:
        failed_percent = self.failed_percent()
        dataset = {"dataset": self.dataset.card()} if self.dataset is not None else {}
        summary = {
            "run": run,
            "files": {
                "total": self.total,
                "succeeded": self.counts[SUCCEEDED],
                "failed": self.counts[FAILED],
                "skipped": self.counts[SKIPPED],
                "rejected": self.counts[REJECTED],
                "not_done": self.counts[NOT_DONE],
            },
            "bytes": {"input": self.bytes_in, "output": self.bytes_out},
            "audio_seconds": {"input": round(self.seconds_in, 3), "output": round(self.seconds_out, 3)},
            "audio_hours": {"input": round(self.seconds_in / 3600, 4), "output": round(self.seconds_out / 3600, 4)},
            "wall_seconds": round(wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "failed_percent": round(failed_percent, 4),
            "tolerated_failure_percent": tolerated_failure_percent,
            "within_tolerance": failed_percent <= tolerated_failure_percent and self.counts[NOT_DONE] == 0,
            "failures_by_reason": dict(self.reasons.most_common()),
            "failures": self.failures,
            "failures_truncated": self.failed_count > len(self.failures),
            **dataset,
        }
        if self.jobs:
            jobs = sum(self.jobs.values())
            summary["batches"] = {
                "jobs": jobs,
                "succeeded": self.jobs[SUCCEEDED],
                "failed": self.jobs[FAILED],
                "pending": self.jobs["pending"],
                "failed_percent": round(100.0 * self.jobs[FAILED] / jobs, 4),
                "retries": self.job_retries if self.jobs_with_known_attempts else None,
                "jobs_with_known_attempts": self.jobs_with_known_attempts,
            }
        return summary


def failed_manifest_line(r: ItemResult, run: str | None = None) -> str:
    """One line of failed-files.jsonl, in the format input.manifest reads back.

    A cloud run names itself in `run`, so the file, copied as is under the trigger bucket's
    manifests/, re-drives with that run's request."""
    line = {"key": r.key, "reason": r.reason, "detail": (r.detail or "")[:300]}
    if run:
        line["run"] = run
    return json.dumps(line, ensure_ascii=False)


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable summary the CLI prints."""
    f, b, a = summary["files"], summary["bytes"], summary["audio_seconds"]
    lines = [
        f"files      {f['total']} total: {f['succeeded']} succeeded, {f['failed']} failed, "
        f"{f['skipped']} skipped" + (f", {f['rejected']} rejected" if f.get("rejected") else "")
        + (f", {f['not_done']} not done" if f.get("not_done") else ""),
        f"audio      {a['input'] / 3600:.3f} h in, {a['output'] / 3600:.3f} h out",
        f"bytes      {_human(b['input'])} in, {_human(b['output'])} out",
        f"time       {summary['wall_seconds']:.1f} s wall, {summary['cpu_seconds']:.1f} s FFmpeg CPU",
        f"failed     {summary['failed_percent']:.2f}% (tolerated {summary['tolerated_failure_percent']}%)"
        + ("" if summary["within_tolerance"] else "  -> OVER TOLERANCE"),
    ]
    if summary.get("batches"):
        bj = summary["batches"]
        lines.append(
            f"batch jobs {bj['jobs']} total: {bj['succeeded']} succeeded, {bj['failed']} failed"
            + (f", {bj['pending']} pending" if bj.get("pending") else "")
            + (f"; {bj['retries']} retries" if bj.get("retries") is not None else "; retries unknown")
        )
    if summary["failures_by_reason"]:
        lines.append("reasons    " + ", ".join(f"{k}: {v}" for k, v in summary["failures_by_reason"].items()))
    for fail in summary["failures"][:10]:
        detail = (fail.get("detail") or "").splitlines()
        lines.append(f"  x {fail['key']}  [{fail['reason']}] {detail[-1] if detail else ''}"[:200])
    if len(summary["failures"]) > 10 or summary.get("failures_truncated"):
        lines.append("  ... (see failed-files.jsonl in the results location)")
    card = summary.get("dataset")
    if card and card["files"]["measured"]:
        flagged = card["flagged"]
        lines.append(
            f"dataset    {card['files']['measured']} measured, {card['files']['rejected']} rejected, "
            f"{flagged['clipped']} clipped, {flagged['dc_offset']} with DC offset (report.html)"
        )
    manifests = summary.get("manifests") or {}
    if manifests.get("error"):
        lines.append(f"manifests  not written: {manifests['error']}"[:200])
    elif manifests:
        lines.append("manifests  " + ", ".join(f"{name} {m['rows']} rows" for name, m in manifests.items())
                     + (f" (metadata.jsonl: {manifests['audiofolder']['files'][0]})" if "audiofolder" in manifests else ""))
        unusable = (manifests.get("audiofolder") or {}).get("earlier_unusable_rows")
        if unusable:
            lines.append(f"           {unusable} rows of the earlier metadata.jsonl no loader could use were moved to "
                         f"{manifests['audiofolder']['files'][-1]}")
    run = summary.get("run") or {}
    if run.get("results"):
        lines.append(f"results    {run['results']}")
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
