"""Helpers for the tests that run the real worker image (prepared by scripts/image-test): Docker, the images, a moto server the containers reach."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

DOCKER = os.environ.get("FFLEET_DOCKER", "/usr/bin/docker")
IMAGES = {"cpu": os.environ.get("FFLEET_IMAGE_CPU", ""), "nvidia": os.environ.get("FFLEET_IMAGE_NVIDIA", ""),
          # the arm64 cpu image, run under QEMU: FFLEET_IMAGE_TEST_ARM64=1 scripts/image-test builds it
          "cpu-arm64": os.environ.get("FFLEET_IMAGE_CPU_ARM64", "")}
LAMBDA_BASE = os.environ.get("FFLEET_LAMBDA_BASE", "")
BRIDGE = os.environ.get("FFLEET_DOCKER_BRIDGE", "")
NO_IMAGE = "no worker image or Lambda base stand-in: scripts/image-test builds them (root, Docker) and runs these tests"
# for an arm64 image under QEMU's user-mode emulation, which gives its guest no seccomp: no sandbox
UNDER_QEMU = {"FFLEET_REQUIRE_SANDBOX": "0", "FFLEET_SANDBOX_HELPER": "/nonexistent"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def need_image(target: str = "cpu") -> str:
    """The image tag scripts/image-test built for `target`; skip (saying how to run it) when there is none."""
    if not IMAGES[target]:
        pytest.skip("no arm64 image: FFLEET_IMAGE_TEST_ARM64=1 scripts/image-test builds it under QEMU"
                    if target == "cpu-arm64" else NO_IMAGE)
    return IMAGES[target]


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def report(line: str) -> None:
    """A figure for the log: printed, and kept for scripts/image-test to print after pytest (pytest
    shows a passing test's output only with -s)."""
    print(f"\nimage-test: {line}")
    path = os.environ.get("FFLEET_IMAGE_TEST_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"image-test: {line}\n")


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6


def image_pull_mb(tag: str) -> float:
    """About what a host pulls: the image's layers gzip-compressed (level 6), as a registry stores them."""
    import zlib

    pack = zlib.compressobj(6, zlib.DEFLATED, 31)
    total = 0
    with subprocess.Popen([DOCKER, "save", tag], stdout=subprocess.PIPE) as save:
        while chunk := save.stdout.read(1 << 20):
            total += len(pack.compress(chunk))
    assert save.returncode == 0, f"docker save {tag} exited {save.returncode}"
    return (total + len(pack.flush())) / 1e6


def worker_argv(image: str, endpoint: str, batch_uri: str, *, detach: bool = False, name: str | None = None,
                env: dict[str, str] | None = None) -> list[str]:
    """`docker run` of the image's own command (`ffleet worker`) as Batch runs it, on the host network
    so that 127.0.0.1 is the moto server."""
    argv = [DOCKER, "run", "--network", "host"]
    argv += ["-d"] if detach else ["--rm"]
    if name:
        argv += ["--name", name]
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "FFLEET_BATCH_URI": batch_uri, **(env or {})}.items():
        argv += ["-e", f"{key}={value}"]
    return argv + [image]


def run_worker(image: str, endpoint: str, batch_uri: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(worker_argv(image, endpoint, batch_uri, **kw), capture_output=True, text=True, timeout=600)


def log_lines(stdout: str) -> list[dict]:
    """The worker's JSON log lines (one object per line)."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_moto_server(host: str = "127.0.0.1"):
    """A moto server in this process: inside mock_aws it serves the same backends, so a container
    reaches what the test made. Returns (server, url)."""
    from moto.server import ThreadedMotoServer

    port = free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    return server, f"http://{host}:{port}"


def boot_seconds() -> float:
    """Now, on the clock /proc/PID/stat's start times count from (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def container_id(name: str) -> str:
    return docker("inspect", "-f", "{{.Id}}", name).stdout.strip()


def _in_container(pid: str, container: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            return container in f.read()
    except OSError:
        return False


def _process_start(pid: str, program: str) -> float | None:
    """When process `pid` started (boot seconds), if it runs `program` now; else None. Under QEMU's
    binfmt_misc the program is the second or third argument, after the interpreter."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if program.encode() not in f.read().split(b"\0")[:3]:
                return None
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def first_process_start(container: str, program: str = "/opt/ffmpeg/ffmpeg", tries: int = 60000) -> float:
    """When the first process running `program` in the container started (boot seconds, to 10 ms):
    read from the host's /proc while it runs, so the figure does not depend on how often this looks.
    (A process's start is its fork: for FFmpeg, when ffleet started the sandbox helper that execs it.)
    Fails if the container ends first."""
    init = docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    outside: set[str] = set()
    for n in range(tries):
        if init == "0" or not os.path.exists(f"/proc/{init}"):
            raise AssertionError(f"container {container[:12]} ended before any {program} started")
        if n % 200 == 199:
            outside.clear()  # PIDs are reused
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit() and pid not in outside]
        starts = []
        for pid in pids:
            if not _in_container(pid, container):
                outside.add(pid)
            elif (start := _process_start(pid, program)) is not None:
                starts.append(start)
        if starts:
            return min(starts)
        time.sleep(0.005)
    raise AssertionError(f"no {program} started in container {container[:12]}")


def wait_for(predicate, what: str, tries: int = 3000, pause: float = 0.02):
    """Poll until predicate() is truthy (bounded by tries, not by a clock) and return its value."""
    for _ in range(tries):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"gave up waiting for {what}")
