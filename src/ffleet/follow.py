"""Follow a cloud run from the terminal: `submit --wait`, `status`, `cancel`, `redrive`, with the feel and exit codes of `ffleet run`."""
from __future__ import annotations

import copy
import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from ffleet.results import EXIT_FAILURES, EXIT_INVALID, EXIT_OK, EXIT_SIGINT, FAILED_FILE, SUMMARY_FILE, format_summary
from ffleet.run_watch import (
    TERMINAL, FollowError, GaveUp, Pace, Rejected, RunWatch, Snapshot, as_utc, await_start, await_start_by_trigger,
    error_code, exit_code, follow, resolve_run, stack_output,
)
from ffleet.storage import split_s3_uri
from ffleet.terminal import print_stdout, terminal_safe

EXIT_INTERRUPTED = EXIT_SIGINT  # Ctrl-C: following stopped, the run did not


def _show_summary(summary: dict[str, Any], as_json: bool) -> None:
    """As `ffleet run` prints it; the keys in it are the users' (control characters escaped)."""
    text = json.dumps(summary, indent=2, ensure_ascii=False) if as_json else format_summary(summary)
    print_stdout(terminal_safe(text, is_json=as_json))


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
    """Rich progress bars on stderr when it is a terminal (one for files, one for batches); otherwise
    a line per change (CI logs)."""

    def __init__(self, enabled: bool = True, stream=None, now: Callable[[], datetime] | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._bar = None
        self._tasks: dict[str, Any] = {}
        self._last = ""
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description:<8}"), BarColumn(bar_width=20),
                TextColumn("{task.completed}/{task.fields[total_text]}"), TextColumn("{task.fields[detail]}"),
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
        rows = {
            "files": (snap.files_done + snap.files_failed, snap.files_total,
                      f"{snap.files_failed} failed · {snap.status} · {_clock_text(snap.elapsed(now))} elapsed, "
                      f"eta {_clock_text(snap.eta(now))}"),
            "batches": (snap.batches_succeeded + snap.batches_failed, snap.batches_total or None,
                        f"{snap.batches_running} running · {snap.batches_failed} failed · {snap.batches_pending} pending"),
        }
        if not self._tasks:
            self._bar.start()
        for row, (completed, total, detail) in rows.items():
            fields = {"total_text": total if total is not None else "?", "detail": detail}
            if row not in self._tasks:
                self._tasks[row] = self._bar.add_task(row, total=total, completed=completed, **fields)
            else:
                self._bar.update(self._tasks[row], completed=completed, total=total, **fields)

    def close(self) -> None:
        if self._bar is not None and self._tasks:
            self._bar.stop()


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
        print(terminal_safe(f"  {e.get('field', '?')}: {e.get('message', '')}"), file=sys.stderr)


def finish(watch: RunWatch, snap: Snapshot, args) -> int:
    """Print the run's summary (human or --json) as `ffleet run` does; return its exit code."""
    summary, source = watch.summary()
    took = _clock_text(snap.elapsed(snap.stopped or datetime.now(timezone.utc)))
    print(f"ffleet: {snap.name} {snap.status} after {took}; summary: {source}", file=sys.stderr)
    if snap.status != "SUCCEEDED" and (snap.error or snap.cause):
        print(terminal_safe(f"  {snap.error or ''}: {(snap.cause or '')[:500]}"), file=sys.stderr)
    if summary is None:
        print("ffleet: the run has no summary and no records to summarize", file=sys.stderr)
    else:
        _show_summary(summary, getattr(args, "json", False))
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
            if sent.get("execution_name"):
                arn = await_start(clients.sfn, clients.s3, state_machine_arn=sent["state_machine_arn"],
                                  name=sent["execution_name"], bucket=bucket, key=key, pace=pace)
            else:  # a manifest: the stack picks the request, and so the name
                arn = await_start_by_trigger(clients.sfn, clients.s3, state_machine_arn=sent["state_machine_arn"],
                                             bucket=bucket, key=key, pace=pace)
        except GaveUp:
            raise
        except FollowError as exc:  # the request was uploaded but no run started
            print(f"ffleet: {exc}", file=sys.stderr)
            return EXIT_FAILURES
        except KeyboardInterrupt:
            print(f"\nffleet: stopped waiting; resume with: {resume_hint(sent.get('execution_name') or sent['uri'], args.stack)}",
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
        if not error_code(exc):
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
        snap = watch.poll()  # records are read (one look) only while the run goes on
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
            return finish(watch, watch.poll(read_records=False), args)
        pace.call("StopExecution", clients.sfn.stop_execution, executionArn=watch.arn,
                  error="ffleet.Cancelled", cause="stopped by `ffleet cancel`")
        snap = watch.poll(read_records=False)
        # The summarizer never runs for a stopped execution: summarize the records written so far
        # here, and write summary.json and failed-files.jsonl so `ffleet redrive` can pick the run up.
        summary = watch.summarize(write=True)
        print(f"ffleet: stopped {watch.name} ({snap.status}); files never handed to a Batch job are not "
              "counted below: submit the request again to process them (existing outputs are skipped)",
              file=sys.stderr)
        if summary is not None:
            _show_summary(summary, args.json)
        return EXIT_FAILURES

    return _guard(cancel)


def redrive_request(request: dict[str, Any], manifest_uri: str) -> dict[str, Any]:
    """The run's own request, reading only the files in `manifest_uri` (same options otherwise)."""
    new = copy.deepcopy(request)
    results = new.pop("results", None)  # the stack decides where a run's results go
    if isinstance(results, dict) and results.get("manifests"):
        new["results"] = {"manifests": results["manifests"]}  # a re-drive's rows join the run's metadata.jsonl
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
            if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
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
    sm = stack_output(outputs, "StateMachineArn")
    listed = pace.call("ListExecutions", clients.sfn.list_executions, stateMachineArn=sm,
                       maxResults=args.limit).get("executions") or []
    rows = []
    now = datetime.now(timezone.utc)
    for e in listed:
        watch = RunWatch(clients.sfn, clients.s3, e["executionArn"], pace)
        snap = Snapshot(name=watch.name, status=e["status"], started=as_utc(e.get("startDate")),
                        stopped=as_utc(e.get("stopDate")))
        if e["status"] in TERMINAL:
            # where the start Lambda puts every run's results (trigger.execution_input)
            watch.input = {"results": {"bucket": outputs.get("ResultsBucketName", ""), "key_prefix": f"runs/{watch.name}/"}}
            summary = None
            if watch.results_bucket:
                try:
                    summary = json.loads(pace.call("GetObject", clients.s3.get_object, Bucket=watch.results_bucket,
                                                   Key=watch.results_prefix + SUMMARY_FILE)["Body"].read())
                except Exception as exc:
                    if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                        raise
            if summary:
                f = summary["files"]
                snap.files_total = f["total"]
                snap.files_done = f["succeeded"] + f["skipped"]
                snap.files_failed = f["failed"] + f["not_done"]
        else:
            snap = watch.poll(read_records=False)  # the Map Run's counts suffice for a list
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
