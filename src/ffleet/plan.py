"""Capacity planning for a cloud run: one Batch job per file vs batched jobs, and calibration on real inputs."""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Documented AWS limits and prices. Prices are us-east-1 list prices; other Regions differ a little.

# AWS Batch service quotas (fixed, cannot be raised):
# https://docs.aws.amazon.com/batch/latest/userguide/service_limits.html
BATCH_SUBMIT_JOB_TPS = 50  # "Maximum number of transactions per second (TPS) for each account for SubmitJob"
BATCH_MAX_SUBMITTED_JOBS = 1_000_000  # "Maximum number of jobs in SUBMITTED state"
BATCH_MAX_JOB_PAYLOAD_BYTES = 30 * 1024  # "Maximum job payload size (for SubmitJob API operations): 30 KiB"

# AWS Batch best practice for short tasks: "binpack ... grouping tasks so the jobs run 3-5 minutes each"
# https://docs.aws.amazon.com/batch/latest/userguide/bestpractice1.html
BATCH_TARGET_JOB_SECONDS = (180.0, 300.0)

# Step Functions Distributed Map: without MaxConcurrency it runs up to 10,000 child workflows at once.
# https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html
DISTRIBUTED_MAP_MAX_CONCURRENCY = 10_000
# Step Functions quota on a state's input/output: https://docs.aws.amazon.com/step-functions/latest/dg/limits-overview.html
SFN_MAX_PAYLOAD_BYTES = 256 * 1024
# Standard workflows cost $0.025 per 1,000 state transitions (the free tier of 4,000 a month is ignored):
# https://aws.amazon.com/step-functions/pricing/ . Child workflows that wait on batch:submitJob.sync
# must be Standard (Express workflows do not support the .sync pattern).
SFN_STANDARD_USD_PER_TRANSITION = 0.025 / 1000

# S3: "at least 3,500 PUT/COPY/POST/DELETE or 5,500 GET/HEAD requests per second per partitioned prefix"
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html
S3_PUT_PER_SECOND_PER_PREFIX = 3_500
S3_GET_PER_SECOND_PER_PREFIX = 5_500
# S3 Standard request prices: https://aws.amazon.com/s3/pricing/
S3_USD_PER_PUT = 0.005 / 1000
S3_USD_PER_GET = 0.0004 / 1000

# ---------------------------------------------------------------------------------------------
# ffleet's own shape (see statemachine/ and docs/contracts.md) and modelling assumptions.

# State transitions per Distributed Map child. One file per job (the original sample) is a single
# "SubmitJob" task. ffleet's child (statemachine/pipeline.asl.json, kept in sync by
# tests/test_plan.py) names the batch, locates its object, writes it to S3, submits the job and
# records the outcome: five states.
TRANSITIONS_PER_CHILD_ONE_FILE = 1
TRANSITIONS_PER_CHILD_BATCHED = 5
# The parent execution: choose compute, use its queue, choose the source, the map, summarize,
# check the map's result, done (a constant, whatever the file count).
TRANSITIONS_PER_EXECUTION = 7
# S3 requests per file: HEAD on the output (skip if done), HEAD + GET of the input (boto3's
# download_file), PUT of the output. Per batched job: PUT + GET of the batch object, PUT of its records.
S3_GET_HEAD_PER_FILE = 3
S3_PUT_PER_FILE = 1
S3_GET_PER_JOB_BATCHED = 1
S3_PUT_PER_JOB_BATCHED = 2

# Assumptions, not AWS facts (override on the command line):
# vCPU-seconds a job holds before and after its files: container start, Python start, result upload.
DEFAULT_JOB_OVERHEAD_SECONDS = 5.0
# Per-file time that is not FFmpeg's CPU: S3 round trips for HEAD/GET/PUT of a few MB.
DEFAULT_FILE_IO_SECONDS = 0.05
# CPU seconds per second of audio when nothing was calibrated: measured by bench/run_bench.py for
# "-ac 1 -ar 48000" to FLAC over 30-60 s clips in wav/mp3/flac/opus/m4a (static ffmpeg 6.0, AMD EPYC):
# plain ffmpeg 0.0036, ffleet's worker with its ffprobe and bookkeeping 0.0042; rounded up.
DEFAULT_CPU_SECONDS_PER_AUDIO_SECOND = 0.0045
DEFAULT_JOB_VCPUS = 4
# A key in a manifest or a Batch parameter, with JSON quoting: to say whether a batch could travel inline.
AVERAGE_KEY_BYTES = 80


class PlanError(ValueError):
    """Inputs a plan cannot be made from; the message names the option."""


@dataclass(frozen=True)
class Workload:
    files: int
    mean_seconds: float  # audio seconds per file
    cpu_seconds_per_audio_second: float = DEFAULT_CPU_SECONDS_PER_AUDIO_SECOND
    file_io_seconds: float = DEFAULT_FILE_IO_SECONDS
    mean_input_bytes: float | None = None
    output_bytes_per_input_byte: float | None = None

    @property
    def file_seconds(self) -> float:
        """vCPU-seconds one file holds a worker slot: FFmpeg's CPU plus its transfers."""
        return self.cpu_seconds_per_audio_second * self.mean_seconds + self.file_io_seconds


@dataclass(frozen=True)
class Fleet:
    vcpus: int  # vCPUs the compute environment may run at once
    job_vcpus: int = DEFAULT_JOB_VCPUS  # vCPUs of one batched job (its FFmpeg processes at once)
    max_concurrency: int = DISTRIBUTED_MAP_MAX_CONCURRENCY  # the map's MaxConcurrency (request.processing)
    job_overhead_seconds: float = DEFAULT_JOB_OVERHEAD_SECONDS


def files_per_job_for(workload: Workload, job_vcpus: int, job_seconds: float, job_overhead: float = DEFAULT_JOB_OVERHEAD_SECONDS) -> int:
    """Files a job of `job_vcpus` processes in `job_seconds`, its fixed overhead included."""
    usable = max(0.0, job_seconds - job_overhead)
    return max(1, int(usable * job_vcpus / workload.file_seconds))


def recommended_files_per_job(workload: Workload, fleet: Fleet) -> dict[str, int]:
    """files_per_job for 3-5 minute jobs (AWS Batch best practice), and the middle of that range."""
    lo, hi = (files_per_job_for(workload, fleet.job_vcpus, s, fleet.job_overhead_seconds) for s in BATCH_TARGET_JOB_SECONDS)
    mid = files_per_job_for(workload, fleet.job_vcpus, sum(BATCH_TARGET_JOB_SECONDS) / 2, fleet.job_overhead_seconds)
    return {"min": lo, "max": hi, "recommended": mid}


def design(workload: Workload, fleet: Fleet, files_per_job: int, job_vcpus: int, transitions_per_child: int) -> dict[str, Any]:
    """Jobs, submission time, transitions, vCPU-hours, wall time and S3 rates of one design.

    Wall time is a lower bound from two ceilings: SubmitJob admits 50 jobs a second, and at most
    `concurrent_jobs` jobs run at once; Batch's queueing latency comes on top.
    """
    if files_per_job < 1:
        raise PlanError("files_per_job must be at least 1")
    n = workload.files
    jobs = math.ceil(n / files_per_job)
    # a job runs its files `job_vcpus` at a time, then pays its fixed overhead once
    job_seconds = fleet.job_overhead_seconds + math.ceil(min(files_per_job, n) / job_vcpus) * workload.file_seconds
    slots = max(1, fleet.vcpus // job_vcpus)
    concurrent = min(slots, fleet.max_concurrency, DISTRIBUTED_MAP_MAX_CONCURRENCY)
    limited_by = "vcpus" if concurrent == slots else "max_concurrency" if concurrent == fleet.max_concurrency else "distributed_map"
    submit_seconds = jobs / BATCH_SUBMIT_JOB_TPS
    compute_seconds = math.ceil(jobs / concurrent) * job_seconds
    wall = max(submit_seconds + job_seconds, compute_seconds)
    bound = "submit_job_rate" if submit_seconds + job_seconds > compute_seconds else "compute"
    transitions = jobs * transitions_per_child + TRANSITIONS_PER_EXECUTION
    batched = files_per_job > 1
    gets = n * S3_GET_HEAD_PER_FILE + (jobs * S3_GET_PER_JOB_BATCHED if batched else 0)
    puts = n * S3_PUT_PER_FILE + (jobs * S3_PUT_PER_JOB_BATCHED if batched else 0)
    # the busiest prefix: the input prefix sees HEAD + GET per file, the output prefix HEAD + PUT
    input_get_rate = n * 2 / wall
    output_put_rate = n * S3_PUT_PER_FILE / wall
    out: dict[str, Any] = {
        "files_per_job": files_per_job,
        "job_vcpus": job_vcpus,
        "batch_jobs": jobs,
        "job_seconds": round(job_seconds, 2),
        "submit_seconds": round(submit_seconds, 1),
        "submit_hours": round(submit_seconds / 3600, 2),
        "exceeds_submitted_queue_if_submitted_at_once": jobs > BATCH_MAX_SUBMITTED_JOBS,
        "concurrent_jobs": concurrent,
        "concurrency_limited_by": limited_by,
        "state_transitions": transitions,
        "state_transitions_usd": round(transitions * SFN_STANDARD_USD_PER_TRANSITION, 2),
        "vcpu_hours": round(jobs * job_seconds * job_vcpus / 3600, 2),
        "ffmpeg_share_of_vcpu_time": round(n * workload.cpu_seconds_per_audio_second * workload.mean_seconds / (jobs * job_seconds * job_vcpus), 4),
        "wall_seconds": round(wall, 1),
        "wall_hours": round(wall / 3600, 2),
        "wall_bound_by": bound,
        "s3_requests": {"get_head": gets, "put": puts, "usd": round(gets * S3_USD_PER_GET + puts * S3_USD_PER_PUT, 2)},
        "s3_input_prefix_get_head_per_second": round(input_get_rate, 1),
        "s3_input_prefix_share_of_limit": round(input_get_rate / S3_GET_PER_SECOND_PER_PREFIX, 4),
        "s3_output_prefix_put_per_second": round(output_put_rate, 1),
        "s3_output_prefix_share_of_limit": round(output_put_rate / S3_PUT_PER_SECOND_PER_PREFIX, 4),
        "s3_prefixes_needed": max(
            1, math.ceil(input_get_rate / S3_GET_PER_SECOND_PER_PREFIX), math.ceil(output_put_rate / S3_PUT_PER_SECOND_PER_PREFIX)
        ),
    }
    if batched:
        # ffleet always passes a batch through S3; this says whether it could have gone inline.
        out["batch_keys_fit_in_submitjob_payload"] = files_per_job * AVERAGE_KEY_BYTES <= BATCH_MAX_JOB_PAYLOAD_BYTES
    return out


def make_plan(workload: Workload, fleet: Fleet, files_per_job: int | None = None) -> dict[str, Any]:
    """Side by side: the original one-job-per-file design and ffleet's batched design."""
    if workload.files < 1:
        raise PlanError("--files must be at least 1")
    if workload.mean_seconds <= 0:
        raise PlanError("--mean-seconds must be greater than 0")
    if fleet.vcpus < 1:
        raise PlanError("--vcpus must be at least 1")
    if fleet.job_vcpus < 1 or fleet.job_vcpus > fleet.vcpus:
        raise PlanError(f"--job-vcpus must be between 1 and --vcpus ({fleet.vcpus})")
    rec = recommended_files_per_job(workload, fleet)
    k = files_per_job or rec["recommended"]
    plan = {
        # One job per file gets the best case: every vCPU busy, up to the Distributed Map's own cap
        # (request.processing.max_concurrency is sized for batched jobs, so it does not apply here).
        "one_job_per_file": design(workload, replace(fleet, max_concurrency=DISTRIBUTED_MAP_MAX_CONCURRENCY), 1, 1,
                                   TRANSITIONS_PER_CHILD_ONE_FILE),
        "batched": design(workload, fleet, k, fleet.job_vcpus, TRANSITIONS_PER_CHILD_BATCHED),
        "files_per_job_for_3_to_5_minute_jobs": rec,
        "inputs": {
            "files": workload.files,
            "mean_seconds": workload.mean_seconds,
            "cpu_seconds_per_audio_second": workload.cpu_seconds_per_audio_second,
            "file_seconds": round(workload.file_seconds, 4),
            "vcpus": fleet.vcpus,
            "job_vcpus": fleet.job_vcpus,
            "max_concurrency": fleet.max_concurrency,
            "job_overhead_seconds": fleet.job_overhead_seconds,
            "file_io_seconds": workload.file_io_seconds,
        },
    }
    one, bat = plan["one_job_per_file"], plan["batched"]
    plan["batched_vs_one_job_per_file"] = {
        "fewer_jobs": round(one["batch_jobs"] / bat["batch_jobs"], 1),
        "faster": round(one["wall_seconds"] / bat["wall_seconds"], 2),
        "fewer_vcpu_hours": round(one["vcpu_hours"] / bat["vcpu_hours"], 2) if bat["vcpu_hours"] else None,
    }
    if workload.mean_input_bytes:
        total_in = workload.mean_input_bytes * workload.files
        plan["inputs"]["input_gb"] = round(total_in / 1e9, 2)
        if workload.output_bytes_per_input_byte is not None:
            plan["inputs"]["output_gb"] = round(total_in * workload.output_bytes_per_input_byte / 1e9, 2)
    return plan


def workload_from(files: int, mean_seconds: float | None, calibration: dict | None, file_io_seconds: float = DEFAULT_FILE_IO_SECONDS) -> Workload:
    """A Workload from command-line figures, taking what calibrate measured where given."""
    cal = calibration or {}
    if cal and not cal.get("cpu_seconds_per_audio_second"):
        raise PlanError("the calibration has no cpu_seconds_per_audio_second (did every sampled file fail?)")
    mean = mean_seconds if mean_seconds is not None else cal.get("mean_seconds")
    if mean is None:
        raise PlanError("give --mean-seconds (mean audio seconds per file) or --calibration FILE")
    return Workload(
        files=files,
        mean_seconds=float(mean),
        cpu_seconds_per_audio_second=float(cal.get("cpu_seconds_per_audio_second") or DEFAULT_CPU_SECONDS_PER_AUDIO_SECOND),
        file_io_seconds=file_io_seconds,
        mean_input_bytes=cal.get("mean_input_bytes"),
        output_bytes_per_input_byte=cal.get("output_bytes_per_input_byte"),
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _times(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def format_plan(plan: dict[str, Any]) -> str:
    one, bat, inp = plan["one_job_per_file"], plan["batched"], plan["inputs"]
    rec = plan["files_per_job_for_3_to_5_minute_jobs"]
    rows = [
        ("files per job", f"{one['files_per_job']:,}", f"{bat['files_per_job']:,}"),
        ("vCPUs per job", f"{one['job_vcpus']}", f"{bat['job_vcpus']}"),
        ("Batch jobs", f"{one['batch_jobs']:,}", f"{bat['batch_jobs']:,}"),
        ("job length", _duration(one["job_seconds"]), _duration(bat["job_seconds"])),
        (f"SubmitJob at {BATCH_SUBMIT_JOB_TPS} TPS", _duration(one["submit_seconds"]), _duration(bat["submit_seconds"])),
        ("jobs at once (limited by)", f"{one['concurrent_jobs']:,} ({one['concurrency_limited_by']})",
         f"{bat['concurrent_jobs']:,} ({bat['concurrency_limited_by']})"),
        ("state transitions", f"{one['state_transitions']:,}", f"{bat['state_transitions']:,}"),
        ("  their cost", f"${one['state_transitions_usd']:,.2f}", f"${bat['state_transitions_usd']:,.2f}"),
        ("vCPU-hours", f"{one['vcpu_hours']:,.1f}", f"{bat['vcpu_hours']:,.1f}"),
        ("  FFmpeg's share of them", f"{one['ffmpeg_share_of_vcpu_time']:.0%}", f"{bat['ffmpeg_share_of_vcpu_time']:.0%}"),
        (f"wall time on {inp['vcpus']:,} vCPUs (at best)", _duration(one["wall_seconds"]), _duration(bat["wall_seconds"])),
        ("  bound by", one["wall_bound_by"], bat["wall_bound_by"]),
        ("S3 GET+HEAD/s on the input prefix", f"{one['s3_input_prefix_get_head_per_second']:,.0f} ({one['s3_input_prefix_share_of_limit']:.0%} of {S3_GET_PER_SECOND_PER_PREFIX:,})",
         f"{bat['s3_input_prefix_get_head_per_second']:,.0f} ({bat['s3_input_prefix_share_of_limit']:.0%} of {S3_GET_PER_SECOND_PER_PREFIX:,})"),
        ("S3 PUT/s on the output prefix", f"{one['s3_output_prefix_put_per_second']:,.0f} ({one['s3_output_prefix_share_of_limit']:.0%} of {S3_PUT_PER_SECOND_PER_PREFIX:,})",
         f"{bat['s3_output_prefix_put_per_second']:,.0f} ({bat['s3_output_prefix_share_of_limit']:.0%} of {S3_PUT_PER_SECOND_PER_PREFIX:,})"),
        ("S3 request cost", f"${one['s3_requests']['usd']:,.2f}", f"${bat['s3_requests']['usd']:,.2f}"),
    ]
    w = max(len(r[0]) for r in rows) + 2
    w1 = max(len(r[1]) for r in rows) + 2
    lines = [
        f"{inp['files']:,} files of {inp['mean_seconds']:g} s, {inp['cpu_seconds_per_audio_second']:g} CPU-s per audio second "
        f"({inp['file_seconds']:.3f} s per file with transfers)",
        "",
        f"{'':{w}}{'one job per file':{w1}}batched",
    ]
    lines += [f"{a:{w}}{b:{w1}}{c}" for a, b, c in rows]
    cmp = plan["batched_vs_one_job_per_file"]
    lines += [
        "",
        f"batched: {_times(cmp['fewer_jobs'])} fewer jobs, {_times(cmp['faster'])} faster, {_times(cmp['fewer_vcpu_hours'])} fewer vCPU-hours",
        f"files_per_job for 3-5 minute jobs on {inp['job_vcpus']} vCPUs: {rec['min']:,}-{rec['max']:,} (recommended {rec['recommended']:,})",
    ]
    if bat["concurrency_limited_by"] == "max_concurrency":
        need = -(-inp["vcpus"] // inp["job_vcpus"])
        lines.append(f"note: processing.max_concurrency={inp['max_concurrency']} leaves vCPUs idle; {min(need, DISTRIBUTED_MAP_MAX_CONCURRENCY):,} would use them all")
    if bat["s3_prefixes_needed"] > 1:
        lines.append(f"note: spread the batched run over {bat['s3_prefixes_needed']} S3 prefixes, or S3 will answer 503 SlowDown")
    if one["exceeds_submitted_queue_if_submitted_at_once"]:
        lines.append(f"note: {one['batch_jobs']:,} jobs exceed the {BATCH_MAX_SUBMITTED_JOBS:,} jobs Batch allows in SUBMITTED at once")
    lines.append("assumptions: job overhead {job_overhead_seconds:g} s, S3 transfers {file_io_seconds:g} s per file; Batch queueing latency is not included".format(**inp))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# calibrate: the request's own transform on a sample of its own inputs

CALIBRATE_SCAN_LIMIT = 10_000  # keys listed to pick the sample from; listing 3 million keys is not needed


def _spread(items: list, n: int) -> list:
    """n items evenly spread over the list (first and last included), so one folder does not dominate."""
    if n >= len(items):
        return list(items)
    if n == 1:
        return [items[0]]
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def calibrate(request, sample: int = 10, client=None, workers: int = 1, scan_limit: int = CALIBRATE_SCAN_LIMIT) -> dict[str, Any]:
    """Run the request's transform on `sample` of its inputs through the core worker, writing to a
    temporary folder (never to the request's output), and measure what it costs.

    One worker by default, so CPU and wall figures are not blurred by the files competing."""
    from ffleet.inventory import list_items
    from ffleet.storage import LocalStorage, input_storage
    from ffleet.worker import WorkContext, run_items

    if sample < 1:
        raise PlanError("--sample must be at least 1")
    listed = []
    for item in list_items(request, client):
        listed.append(item)
        if len(listed) >= scan_limit:
            break
    if not listed:
        raise PlanError("the request's input lists no files to calibrate on")
    chosen = _spread(listed, sample)
    tmp = Path(tempfile.mkdtemp(prefix="ffleet-calibrate-"))
    try:
        in_store, _ = input_storage(request, client)
        (tmp / "items").mkdir()
        # overwrite off would skip nothing here: the temporary output folder starts empty
        ctx = WorkContext(request=request, input_store=in_store, output_store=LocalStorage(tmp / "out"), work_dir=tmp / "items")
        results = list(run_items(ctx, chosen, workers=workers))
        binaries = ctx.binaries
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = [r for r in results if r.status == "succeeded"]
    failed = [r for r in results if r.status != "succeeded"]
    audio = sum(r.duration_in or 0.0 for r in ok)
    cpu = sum(r.cpu_seconds for r in ok)
    b_in = sum(r.bytes_in or 0 for r in ok)
    b_out = sum(r.bytes_out or 0 for r in ok)
    out: dict[str, Any] = {
        "request": request.name,
        "listed": len(listed),
        "listing_truncated": len(listed) >= scan_limit,
        "sampled": len(results),
        "succeeded": len(ok),
        "failed": [{"key": r.key, "reason": r.reason, "detail": (r.detail or "")[:200]} for r in failed],
        "workers": workers,
        "ffmpeg": binaries.ffmpeg,
        "cpu_seconds_per_file": round(cpu / len(ok), 4) if ok else None,
        "cpu_seconds_per_audio_second": round(cpu / audio, 6) if audio else None,
        "wall_seconds_per_file": round(sum(r.wall_seconds for r in ok) / len(ok), 4) if ok else None,
        "mean_seconds": round(audio / len(ok), 3) if ok else None,
        "mean_input_bytes": round(b_in / len(ok)) if ok else None,
        "output_bytes_per_input_byte": round(b_out / b_in, 4) if b_in else None,
    }
    return out


def format_calibration(cal: dict[str, Any]) -> str:
    lines = [f"calibrated {cal['request']} on {cal['succeeded']} of {cal['sampled']} sampled files "
             f"(from {cal['listed']:,} listed{'+' if cal['listing_truncated'] else ''}), {cal['workers']} at a time, {cal['ffmpeg']}"]
    if cal["succeeded"]:
        lines += [
            f"  CPU seconds per file:          {cal['cpu_seconds_per_file']:.3f}",
            f"  CPU seconds per audio second:  {cal['cpu_seconds_per_audio_second']:.5f}",
            f"  wall seconds per file:         {cal['wall_seconds_per_file']:.3f}",
            f"  mean audio seconds per file:   {cal['mean_seconds']:.1f}",
            f"  output bytes per input byte:   {cal['output_bytes_per_input_byte']}",
        ]
    for f in cal["failed"]:
        lines.append(f"  failed: {f['key']}: {f['reason']} {f['detail']}")
    return "\n".join(lines)


def fleet_for(request, vcpus: int, job_vcpus: int = DEFAULT_JOB_VCPUS, job_overhead_seconds: float = DEFAULT_JOB_OVERHEAD_SECONDS) -> Fleet:
    """The fleet a request runs on: its map MaxConcurrency comes from processing.max_concurrency."""
    return Fleet(vcpus=vcpus, job_vcpus=job_vcpus, max_concurrency=request.processing.max_concurrency,
                 job_overhead_seconds=job_overhead_seconds)


__all__ = [
    "Fleet", "PlanError", "Workload", "calibrate", "design", "files_per_job_for", "fleet_for", "format_calibration",
    "format_plan", "make_plan", "recommended_files_per_job", "workload_from",
]
