"""The local runner behind `ffleet run`: list, process in a pool, write results, summarize."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ffleet.inventory import list_items
from ffleet.request import JobRequest
from ffleet.results import (
    FAILED, FAILED_FILE, NOT_DONE, RECORDS_FILE, SUMMARY_FILE, ItemResult, SummaryBuilder, failed_manifest_line, summary_text,
)
from ffleet.storage import ListedObject, LocalStorage, StorageError, results_storage
from ffleet.worker import WorkContext, default_workers, run_items



class ResultsNotSaved(StorageError):
    """The files were processed, but the records and summary could not be written to the results location."""


WORK_DIR_PREFIX = "ffleet-run-"
_LOCK_FILE = "run.lock"  # flock'ed for the life of the run: the kernel releases it when the run dies
_RUN_FILE = "run.json"  # written once the lock is held: which run this is, where its results go


def kept_results_dir(run_id: str) -> Path:
    """Where a run's records go when they cannot reach their results location."""
    return Path(tempfile.gettempdir()) / f"ffleet-results-{run_id}"


def _claim_work_dir(run_id: str, results_uri: str) -> tuple[Path, int]:
    """A new work folder, locked for this run; returns (folder, the lock's file descriptor)."""
    wd = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
    fd = os.open(wd / _LOCK_FILE, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    (wd / _RUN_FILE).write_text(json.dumps({"run_id": run_id, "pid": os.getpid(), "results": results_uri}))
    return wd, fd


def clean_stale_work_dirs(tmp: Path | None = None) -> list[str]:
    """Remove the work folders of runs that died (SIGKILL, power loss); returns what was done, one
    line per folder.

    A folder is stale when nobody holds its lock: flock is released by the kernel when its holder
    dies, so neither a pid that was reused nor a clock matters. A folder without the run file (a
    run still starting, or an older ffleet's) is left alone. Records staged for an S3 results
    location that were never uploaded are moved to kept_results_dir first: they may be the only
    record of which files the run finished.
    """
    done = []
    for wd in sorted(Path(tmp or tempfile.gettempdir()).glob(WORK_DIR_PREFIX + "*")):
        try:
            if not (wd / _RUN_FILE).is_file():
                continue
            fd = os.open(wd / _LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live run
                raise
            try:
                run = json.loads((wd / _RUN_FILE).read_text())
            except (OSError, ValueError):
                run = {}
            run_id = str(run.get("run_id") or wd.name)
            line = f"removed {wd}, the work folder of run {run_id}, which was killed"
            staged = wd / "results"
            if (staged / RECORDS_FILE).is_file() and (staged / RECORDS_FILE).stat().st_size:
                kept = kept_results_dir(run_id)
                shutil.copytree(staged, kept, dirs_exist_ok=True)
                line += f"; its records, never uploaded to {run.get('results') or 'its results location'}, are kept in {kept}"
            shutil.rmtree(wd, ignore_errors=True)
            done.append(line)
        except OSError as exc:
            done.append(f"cannot clean up {wd}: {exc}")
        finally:
            os.close(fd)
    return done


def new_run_id() -> str:
    # time and os, not datetime and uuid: those two imports (uuid brings platform) cost ~3 ms of every start
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()


@dataclass
class RunOutcome:
    summary: dict
    results_uri: str

    @property
    def exit_code(self) -> int:
        return 0 if self.summary["within_tolerance"] else 1


@contextmanager
def stop_on_signals(ctx: WorkContext):
    """SIGTERM/SIGINT stop the run cleanly: running FFmpegs are killed, the rest reported not_done.

    A second SIGINT raises KeyboardInterrupt (the CLI exits 130): the clean stop still lists every
    remaining input to report it, and a listing that blocks (a manifest on a stalled mount or pipe)
    would otherwise ignore Ctrl-C for good.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if signum == signal.SIGINT and ctx.registry.stopping.is_set():
            raise KeyboardInterrupt
        ctx.registry.stop_all()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _spool(items: Iterator[ListedObject], path: Path) -> tuple[Iterator[ListedObject], int]:
    """Write items to path as they come, then return (items read back from it, how many)."""
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for obj in items:
            f.write(json.dumps([obj.key, obj.size]) + "\n")
            total += 1

    def read_back() -> Iterator[ListedObject]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, size = json.loads(line)
                yield ListedObject(key=key, size=size)

    return read_back(), total


def _to_stderr(message: str) -> None:
    print(f"ffleet: {message}", file=sys.stderr)


def run_request(
    request: JobRequest,
    workers: int | None = None,
    client=None,
    progress: Callable[[int, ItemResult | None], None] | None = None,
    work_dir: Path | None = None,
    notice: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run a request on this machine. `progress(total, result)` is called once with the total
    (result None) and then after each file; `notice(message)` with what the user should know
    (stale work folders of killed runs removed)."""
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())  # datetime's isoformat, seconds, UTC
    run_id = new_run_id()
    store, prefix = results_storage(request, client)
    run_prefix = f"{prefix}{run_id}/"
    own_work_dir = work_dir is None
    lock_fd = None
    if own_work_dir:
        for line in clean_stale_work_dirs():
            if notice:
                notice(line)
        wd, lock_fd = _claim_work_dir(run_id, store.uri(run_prefix))
    else:
        wd = Path(work_dir)
    try:
        return _run(request, workers, client, progress, wd, run_id, store, run_prefix, started, started_at, notice)
    finally:
        if own_work_dir:
            shutil.rmtree(wd, ignore_errors=True)
            os.close(lock_fd)  # after the removal: a folder is never seen unlocked while it goes


def _run(request, workers, client, progress, wd: Path, run_id: str, store, run_prefix: str, started: float,
         started_at: str, notice: Callable[[str], None] | None = None) -> RunOutcome:
    ctx = WorkContext.for_request(request, work_dir=wd / "items", client=client)
    if not ctx.sandbox.available:  # once per run; a request that requires it has been refused above
        (notice or _to_stderr)(f"warning: {ctx.sandbox.describe()}")
    try:
        # Before listing and converting: a missing bucket or unwritable folder was found only
        # after every file had been converted.
        ctx.output_store.check_writable(request.output.s3_prefix)
    except StorageError as exc:
        raise StorageError(f"the output location cannot be written: {exc}") from None
    builder = SummaryBuilder()
    # Records are appended and flushed as each file ends, so a killed run still leaves a record of
    # everything it finished. For S3 results they are staged locally and uploaded at the end.
    if isinstance(store, LocalStorage):
        run_dir = Path(store.root) / run_id
    else:
        run_dir = wd / "results"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Items stream from the listing into the pool: a list of 3 million listed objects would hold
    # ~1 GB (measured 364 bytes per file). The progress bar needs the total first, so the
    # listing is spooled to a file as it is counted and read back from there: one pass over S3
    # (3 million keys are 3,000 LIST calls) or the manifest, not two.
    manifests = None
    if request.manifest_formats:
        from ffleet.manifests import ManifestWriter, local_locator  # only a run that writes them pays for the import

        manifests = ManifestWriter(request.manifest_formats, wd / "manifests", request.output.s3_prefix,
                                   local_locator(ctx.output_store))
    items, total = list_items(request, client), 0
    if progress:
        items, total = _spool(items, wd / "listing.jsonl")

    def show_total() -> None:
        # called once the first files are in the pool: drawing the bar (importing rich, ~75 ms of
        # CPU) then runs beside the first FFmpegs, not before them
        progress(total, None)
    with stop_on_signals(ctx), open(run_dir / RECORDS_FILE, "w", encoding="utf-8") as records, open(
        run_dir / FAILED_FILE, "w", encoding="utf-8"
    ) as failed:
        for res in run_items(ctx, items, workers=workers or default_workers(), on_started=show_total if progress else None):
            records.write(res.to_json() + "\n")
            records.flush()
            if res.status in (FAILED, NOT_DONE):
                failed.write(failed_manifest_line(res) + "\n")
            builder.add(res)
            if manifests is not None:
                manifests.add(res)
            if progress:
                progress(total, res)
    summary = builder.summary(
        wall_seconds=time.monotonic() - started,
        tolerated_failure_percent=request.processing.tolerated_failure_percent,
        name=request.name,
        run_id=run_id,
        started_at=started_at,
        mode="local",
        workers=workers or default_workers(),
        results=store.uri(run_prefix),
    )
    summary["sandbox"] = ctx.sandbox.to_dict()
    if manifests is not None:
        try:
            summary["manifests"] = manifests.publish(store, run_prefix, ctx.output_store)
        except StorageError as exc:
            # the records say what each file became; the manifests can be written again from them
            summary["manifests"] = {"error": str(exc)}
            (notice or _to_stderr)(f"the manifests were not written: {exc}")
    (run_dir / SUMMARY_FILE).write_text(summary_text(summary), encoding="utf-8")
    from ffleet.report import REPORT_FILE, render_html  # at the end: nothing before the first FFmpeg needs it

    (run_dir / REPORT_FILE).write_text(render_html(summary), encoding="utf-8")
    if not isinstance(store, LocalStorage):
        try:
            for name in (RECORDS_FILE, FAILED_FILE, SUMMARY_FILE):
                store.store(run_dir / name, run_prefix + name, content_type="application/json")
            store.store(run_dir / REPORT_FILE, run_prefix + REPORT_FILE, content_type="text/html; charset=utf-8")
        except StorageError as exc:
            # the outputs are written; losing the only record of what happened to each file
            # would force a blind re-run, so keep the results where the user can find them
            kept = kept_results_dir(run_id)
            shutil.copytree(run_dir, kept, dirs_exist_ok=True)
            raise ResultsNotSaved(f"{exc}; the run's records and summary are kept in {kept}") from exc
    return RunOutcome(summary=summary, results_uri=store.uri(run_prefix))

