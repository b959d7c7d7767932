"""The `ffleet` command line: validate and run job requests on this machine."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ffleet import __version__
from ffleet.request import RequestError, load_request

EXIT_OK, EXIT_FAILURES, EXIT_INVALID = 0, 1, 2


def _print_request_error(path: str, exc: RequestError) -> None:
    print(f"ffleet: invalid request {path}:", file=sys.stderr)
    for field, message in exc.problems:
        print(f"  {field}: {message}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        request = load_request(args.request)
    except RequestError as exc:
        _print_request_error(args.request, exc)
        return EXIT_INVALID
    print(json.dumps(request.to_json_dict(), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ffleet.results import format_summary
    from ffleet.runner import ResultsNotSaved, run_request
    from ffleet.storage import StorageError

    try:
        request = load_request(args.request)
    except RequestError as exc:
        _print_request_error(args.request, exc)
        return EXIT_INVALID
    progress, close = _progress_bar(enabled=not args.no_progress)
    try:
        outcome = run_request(request, workers=args.workers, progress=progress)
    except ResultsNotSaved as exc:
        close()
        print(f"ffleet: {args.request} ran, but its results could not be saved: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except (StorageError, ValueError) as exc:
        close()
        print(f"ffleet: cannot run {args.request}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    close()
    if args.json:
        print(json.dumps(outcome.summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(outcome.summary))
    return outcome.exit_code


def _progress_bar(enabled: bool):
    """A rich progress bar on stderr; returns (callback, close)."""
    if not enabled:
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]ffleet"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    )
    state: dict = {}

    def callback(total, result):
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task("files", total=total, failed=0)
            state["failed"] = 0
        if result is not None:
            if result.status in ("failed", "not_done"):
                state["failed"] += 1
            bar.update(state["task"], advance=1, failed=state["failed"])

    def close():
        if "task" in state:
            bar.stop()

    return callback, close


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffleet", description="Process many media files with FFmpeg.")
    parser.add_argument("--version", action="version", version=f"ffleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a job request and print it normalised")
    p.add_argument("request", help="path of the job request (JSON)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a job request on this machine")
    p.add_argument("request", help="path of the job request (JSON)")
    p.add_argument("--workers", type=int, default=None, help="FFmpeg processes at once (default: one per CPU)")
    p.add_argument("--json", action="store_true", help="print the summary object as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_run)

    def cmd_worker(args: argparse.Namespace) -> int:  # imported on use: the other commands need none of it
        from ffleet.batch_worker import cmd_worker as run_worker

        return run_worker(args)

    p = sub.add_parser(
        "worker", help="AWS Batch entrypoint: run one batch (reads FFLEET_BATCH_URI or FFLEET_BATCH_JSON)",
        description="Run one batch of files as an AWS Batch job does. The batch comes from FFLEET_BATCH_URI "
        "(s3:// URI of the batch object) or FFLEET_BATCH_JSON (the object inline); FFLEET_WORKERS sets the "
        "FFmpeg processes at once (default: the job's vCPUs). Exit 0: every file ended; 1: storage fault; "
        "2: invalid batch; 143: stopped by SIGTERM.",
    )
    p.set_defaults(func=cmd_worker)

    from ffleet.summarize import add_cli as add_summarize

    add_summarize(sub)

    from ffleet.submit import cmd_submit

    p = sub.add_parser("submit", help="upload a job request to a deployed stack's trigger bucket (starts a cloud run)")
    p.add_argument("request", help="path of the job request (JSON)")
    p.add_argument("--stack", required=True, help="name of the deployed ffleet stack (sam deploy's stack_name)")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
