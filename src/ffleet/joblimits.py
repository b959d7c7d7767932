"""How long a cloud Batch job may run, and how long the pipeline waits for it, from the request and the stack."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ffleet.request import JobRequest

# Per attempt, beyond FFmpeg's own time: pulling the image, starting the container, and fetching and
# uploading files between conversions.
ATTEMPT_OVERHEAD_SECONDS = 900
# Batch's smallest attemptDurationSeconds.
MIN_ATTEMPT_SECONDS = 60
# Blocked-queue reasons that do not heal by waiting get Batch's minimum maxTimeSeconds (template.yaml).
MISCONFIGURATION_WAIT_SECONDS = 600
GPU_COMPUTE = ("nvidia",)


@dataclass(frozen=True)
class StackLimits:
    """The template parameters the timing depends on (the start function's environment)."""

    job_vcpus: int = 4
    job_attempts: int = 3
    capacity_wait_seconds: int = 3600
    cpu_max_vcpus: int = 256
    gpu_max_vcpus: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StackLimits":
        env = os.environ if env is None else env
        names = {"job_vcpus": "JOB_VCPUS", "job_attempts": "JOB_ATTEMPTS", "capacity_wait_seconds": "CAPACITY_WAIT_SECONDS",
                 "cpu_max_vcpus": "CPU_MAX_VCPUS", "gpu_max_vcpus": "GPU_MAX_VCPUS"}
        values: dict[str, int] = {}
        for field, var in names.items():
            raw = env.get(var, "")
            if raw:
                try:
                    values[field] = int(raw)
                except ValueError:
                    raise ValueError(f"environment variable {var}={raw!r} is not a whole number (see template.yaml)") from None
                if values[field] < 1:
                    raise ValueError(f"environment variable {var}={raw!r} must be at least 1 (see template.yaml)")
        return cls(**values)


def job_timing(request: JobRequest, limits: StackLimits) -> dict[str, Any]:
    """attempt_seconds: the Batch job's attemptDurationSeconds. The worker runs one FFmpeg per vCPU, each
    killed after timeout_seconds_per_file, so a batch takes at most ceil(files / vCPUs) such rounds.

    task_timeout_seconds: how long the map child waits for the job (the .sync task's timeout). It covers
    the time the job may wait in RUNNABLE before the queue cancels it, every attempt, and the jobs ahead
    of it when max_concurrency is more than the compute environment runs at once: each wave of those
    may take every attempt too. Finite, so no execution stays open forever; generous, so a healthy job
    is never abandoned.
    """
    p = request.processing
    rounds = math.ceil(p.files_per_job / max(limits.job_vcpus, 1))
    attempt = max(MIN_ATTEMPT_SECONDS, rounds * p.timeout_seconds_per_file + ATTEMPT_OVERHEAD_SECONDS)
    max_vcpus = limits.gpu_max_vcpus if request.compute in GPU_COMPUTE else limits.cpu_max_vcpus
    at_once = max(max_vcpus // max(limits.job_vcpus, 1), 1)
    waves = math.ceil(p.max_concurrency / at_once)
    blocked = max(limits.capacity_wait_seconds, MISCONFIGURATION_WAIT_SECONDS)
    return {
        "attempt_seconds": attempt,
        "task_timeout_seconds": blocked + waves * limits.job_attempts * attempt,
    }
