"""The `ffleet` command line: validate and run job requests on this machine."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ffleet import __version__
from ffleet.request import RequestError, load_request
from ffleet.results import EXIT_FAILURES, EXIT_INVALID, EXIT_OK, EXIT_SIGINT
from ffleet.terminal import print_stdout as _print
from ffleet.terminal import silence_stdout as _silence_stdout
from ffleet.terminal import terminal_safe


def _print_request_error(path: str, exc: RequestError) -> None:
    print(f"ffleet: invalid request {path}:", file=sys.stderr)
    for field, message in exc.problems:
        print(f"  {field}: {message}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    request = _request_or_none(args.request)
    if request is None:
        return EXIT_INVALID
    _print(json.dumps(request.to_json_dict(), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ffleet.results import format_summary
    from ffleet.runner import ResultsNotSaved, run_request
    from ffleet.storage import StorageError

    request = _request_or_none(args.request)
    if request is None:
        return EXIT_INVALID
    progress, close = _progress_bar(enabled=not args.no_progress)
    try:
        try:
            outcome = run_request(request, workers=args.workers, progress=progress,
                                  notice=lambda message: print(f"ffleet: {message}", file=sys.stderr))
        finally:
            close()
    except ResultsNotSaved as exc:
        print(f"ffleet: {args.request} ran, but its results could not be saved: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except (StorageError, ValueError) as exc:
        print(f"ffleet: cannot run {args.request}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    text = json.dumps(outcome.summary, indent=2, ensure_ascii=False) if args.json else format_summary(outcome.summary)
    _print(terminal_safe(text, is_json=args.json))
    return outcome.exit_code


def _progress_bar(enabled: bool):
    """A rich progress bar on stderr, made on the first call (rich is imported then); returns (callback, close)."""
    if not enabled:
        return None, lambda: None
    state: dict = {}

    def callback(total, result):
        if "task" not in state:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            state["bar"] = bar = Progress(
                TextColumn("[bold]ffleet"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            bar.start()
            state["task"] = bar.add_task("files", total=total, failed=0)
            state["failed"] = 0
        if result is not None:
            if result.status in ("failed", "not_done"):
                state["failed"] += 1
            state["bar"].update(state["task"], advance=1, failed=state["failed"])

    def close():
        if "task" in state:
            state["bar"].stop()

    return callback, close


def _request_or_none(path: str):
    """The request at `path`, or None after printing what is wrong with it."""
    try:
        return load_request(path)
    except RequestError as exc:
        _print_request_error(path, exc)
        return None


def cmd_plan(args: argparse.Namespace) -> int:
    from ffleet.plan import PlanError, fleet_for, format_plan, make_plan, workload_from

    request = _request_or_none(args.request)
    if request is None:
        return EXIT_INVALID
    try:
        calibration = json.loads(Path(args.calibration).read_text()) if args.calibration else None
        workload = workload_from(args.files, args.mean_seconds, calibration, args.file_io_seconds)
        fleet = fleet_for(request, args.vcpus, args.job_vcpus, args.job_overhead_seconds)
        plan = make_plan(workload, fleet, args.files_per_job)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"ffleet: cannot read --calibration {args.calibration}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except PlanError as exc:
        print(f"ffleet plan: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ffleet.plan import PlanError, calibrate, format_calibration
    from ffleet.storage import StorageError

    request = _request_or_none(args.request)
    if request is None:
        return EXIT_INVALID
    try:
        cal = calibrate(request, sample=args.sample, workers=args.workers)
    except (PlanError, StorageError, ValueError) as exc:
        print(f"ffleet calibrate: cannot calibrate {args.request}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _print(json.dumps(cal, indent=2) if args.json else format_calibration(cal))
    return EXIT_OK if cal["succeeded"] else EXIT_FAILURES


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """ffleet's command line. Given the subcommand about to run, only that one's parser is built:
    `ffleet run` then neither builds the ten others nor imports ffleet.plan for their defaults (3-5 ms
    of its start, issue 15). Without one (--help, a misspelt command) it has them all."""
    parser = argparse.ArgumentParser(prog="ffleet", description="Process many media files with FFmpeg.")
    parser.add_argument("--version", action="version", version=f"ffleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add in _SUBCOMMANDS.items():
        if command not in _SUBCOMMANDS or command == name:
            add(sub, name)
    return parser


def _add_validate(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="check a job request and print it normalised")
    p.add_argument("request", help="path of the job request (JSON)")
    p.set_defaults(func=cmd_validate)


def _add_run(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="run a job request on this machine")
    p.add_argument("request", help="path of the job request (JSON)")
    p.add_argument("--workers", type=int, default=None, help="FFmpeg processes at once (default: one per usable CPU, capped by a container's CPU quota)")
    p.add_argument("--json", action="store_true", help="print the summary object as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_run)


def _add_calibrate(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="time the request's transform on a sample of its inputs (writes nothing to its output)")
    p.add_argument("request", help="path of the job request (JSON)")
    p.add_argument("--sample", type=int, default=10, help="files to try, spread over the listing (default 10)")
    p.add_argument("--workers", type=int, default=1, help="files at once (default 1: clean per-file figures)")
    p.add_argument("--json", action="store_true", help="print JSON (what `ffleet plan --calibration` reads)")
    p.set_defaults(func=cmd_calibrate)


def _add_plan(sub: Any, name: str) -> None:
    from ffleet import plan as plan_defaults  # standard library only, but 2 ms: only for this command

    p = sub.add_parser(name, help="jobs, time and cost of a cloud run: one Batch job per file vs batched")
    p.add_argument("request", help="path of the job request (JSON)")
    p.add_argument("--files", type=int, required=True, help="number of input files")
    p.add_argument("--mean-seconds", type=float, help="mean audio seconds per file (or from --calibration)")
    p.add_argument("--calibration", help="JSON written by `ffleet calibrate --json`")
    p.add_argument("--vcpus", type=int, default=256, help="vCPUs the compute environment may use at once (default 256)")
    p.add_argument("--job-vcpus", type=int, default=plan_defaults.DEFAULT_JOB_VCPUS, help="vCPUs of one batched job (default %(default)s)")
    p.add_argument("--files-per-job", type=int, help="files per batched job (default: the one giving ~4 minute jobs)")
    p.add_argument("--job-overhead-seconds", type=float, default=plan_defaults.DEFAULT_JOB_OVERHEAD_SECONDS,
                   help="vCPU-seconds a job spends outside its files: container and Python start (assumed %(default)s)")
    p.add_argument("--file-io-seconds", type=float, default=plan_defaults.DEFAULT_FILE_IO_SECONDS,
                   help="S3 transfer seconds per file (assumed %(default)s)")
    p.add_argument("--json", action="store_true", help='print {"one_job_per_file": {...}, "batched": {...}, ...}')
    p.set_defaults(func=cmd_plan)


def cmd_worker(args: argparse.Namespace) -> int:  # imported on use: the other commands need none of it
    from ffleet.batch_worker import cmd_worker as run_worker

    return run_worker(args)


def _add_worker(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, help="AWS Batch entrypoint: run one batch (reads FFLEET_BATCH_URI or FFLEET_BATCH_JSON)",
        description="Run one batch of files as an AWS Batch job does. The batch comes from FFLEET_BATCH_URI "
        "(s3:// URI of the batch object) or FFLEET_BATCH_JSON (the object inline); FFLEET_WORKERS sets the "
        "FFmpeg processes at once (default: the job's vCPUs). Exit 0: every file ended; 1: storage fault; "
        "2: invalid batch, or an output bucket that is missing or refuses writes; 143: stopped by SIGTERM.",
    )
    p.set_defaults(func=cmd_worker)


def cmd_summarize(args: argparse.Namespace) -> int:  # imported on use, as above (sqlite3, the report)
    from ffleet.summarize import cmd_summarize as run_summarize

    return run_summarize(args)


def _add_summarize(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, help="print the summary of a finished run (ResultWriter manifest.json or a results folder)"
    )
    p.add_argument("location", help="s3://…/manifest.json, a local run's results folder, or a cloud results prefix")
    p.add_argument("--json", action="store_true", help="print the summary object as JSON on stdout")
    p.add_argument("--write", action="store_true",
                   help="also write summary.json and failed-files.jsonl beside the results (cloud layout)")
    p.add_argument("--results-prefix", default=None,
                   help="where records/ and batches/ are, if not two levels above manifest.json")
    p.add_argument("--tolerated-failure-percent", type=float, default=None,
                   help="judge the run against this tolerance (default: the one in summary.json, else 0)")
    p.set_defaults(func=cmd_summarize)


def cmd_submit(args: argparse.Namespace) -> int:  # imported on use, as above
    from ffleet.submit import cmd_submit as run_submit

    return run_submit(args)


def _add_submit(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="upload a job request or a manifest to a deployed stack's trigger bucket (starts a cloud run)")
    p.add_argument("request", help="path of the job request (JSON), or of a manifest (.csv, .jsonl, .ndjson) to run with the stack's DefaultRequest")
    p.add_argument("--stack", required=True, help="name of the deployed ffleet stack (sam deploy's stack_name)")
    _follow_flags(p)
    p.set_defaults(func=cmd_submit)


def cmd_follow(args: argparse.Namespace) -> int:  # imported on use, as above
    from ffleet import follow

    return getattr(follow, f"cmd_{args.command}")(args)


_STACK_HELP = "the ffleet stack (default: $FFLEET_STACK); needed unless RUN is an execution ARN"
_RUN_HELP = "execution name or ARN, or the request's key (s3://TRIGGER/jobs/....json or jobs/....json)"


def _add_status(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="state and progress of a cloud run (--wait: follow it to the end); --list: recent runs",
                       description="Exit codes as `ffleet run` once the run has ended: 0 within tolerance, 1 not "
                       "within tolerance, failed, timed out or aborted, 2 invalid request; 0 while it runs.")
    p.add_argument("run", nargs="?", help=_RUN_HELP)
    p.add_argument("--stack", default=os.environ.get("FFLEET_STACK"), help=_STACK_HELP)
    p.add_argument("--list", action="store_true", help="the stack's recent runs: name, state, files done/failed, started, duration")
    p.add_argument("--limit", type=int, default=20, help="runs --list shows (default 20)")
    _follow_flags(p)
    p.set_defaults(func=cmd_follow)


def _add_cancel(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="stop a cloud run (StopExecution) and report what had finished")
    p.add_argument("run", help=_RUN_HELP)
    p.add_argument("--stack", default=os.environ.get("FFLEET_STACK"), help=_STACK_HELP)
    p.add_argument("--json", action="store_true", help="print the summary object as JSON on stdout")
    p.set_defaults(func=cmd_follow)


def _add_redrive(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="submit a finished cloud run's failed-files.jsonl as a new request (same options)")
    p.add_argument("run", help=_RUN_HELP)
    p.add_argument("--stack", default=os.environ.get("FFLEET_STACK"), help="the ffleet stack (default: $FFLEET_STACK)")
    _follow_flags(p)
    p.set_defaults(func=cmd_follow)


def cmd_doctor(args: argparse.Namespace) -> int:  # imported on use, as above
    from ffleet.doctor import cmd_doctor as run_doctor

    return run_doctor(args)


def _add_doctor(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="what ffleet finds here (FFmpeg, sandbox, CPUs, S3) and whether a run could start",
                       description="Exit 0 when a run could start here, 1 with the reasons.")
    p.add_argument("request", nargs="?", help="also check that this FFmpeg has the encoders and filters the request uses")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    p.set_defaults(func=cmd_doctor)


# in the order `ffleet --help` lists them
_SUBCOMMANDS = {
    "validate": _add_validate, "run": _add_run, "calibrate": _add_calibrate, "plan": _add_plan,
    "worker": _add_worker, "summarize": _add_summarize, "submit": _add_submit, "status": _add_status,
    "cancel": _add_cancel, "redrive": _add_redrive, "doctor": _add_doctor,
}


def _follow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the run to its end (progress on stderr) and exit as `ffleet run` does")
    p.add_argument("--json", action="store_true", help="print the summary object as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines on stderr")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone away shows here, not as a traceback at exit
        return code
    except KeyboardInterrupt:
        # Ctrl-C outside the processing (which stops cleanly and reports not_done itself), e.g.
        # while listing millions of keys: nothing was processed, so there is nothing to report
        print("\nffleet: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except BrokenPipeError:  # a command that printed without _print
        _silence_stdout()
        return EXIT_FAILURES


if __name__ == "__main__":
    sys.exit(main())
