"""Helpers shared by the fault tests: start `ffleet run` in the background, wait for progress, probe outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

from ffleet.ffmpeg import find_binaries


def start_cli(*args: str, env: dict | None = None, tmpdir: Path | None = None) -> subprocess.Popen:
    """`ffleet ARGS` in the background. tmpdir becomes its TMPDIR, so its work folder is known."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        full_env["TMPDIR"] = str(tmpdir)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "ffleet.cli", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen | None = None, limit: float = 120, what: str = "condition"):
    """Poll until condition() is truthy. The limit only stops a broken test from hanging CI."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ffleet exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def record_lines(results_root: Path) -> list[str]:
    """Lines of every records.jsonl under a local results folder (one per run)."""
    return [line for f in sorted(results_root.rglob("records.jsonl")) for line in f.read_text().splitlines()]


def probe_duration(path: Path) -> float | None:
    """ffprobe's duration of a file, or None if it is not a readable media file."""
    b = find_binaries()
    p = subprocess.run([b.ffprobe, "-v", "error", "-print_format", "json", "-show_entries", "format=duration", str(path)],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return None
    dur = json.loads(p.stdout or "{}").get("format", {}).get("duration")
    return float(dur) if dur not in (None, "N/A") else None


def verifiers_of(src: str) -> list[int]:
    """PIDs of live sandboxed verifiers (ffleet.verifier) running the ffleet in `src` (their PYTHONPATH)."""
    pids = []
    for pid in processes_using("ffleet.verifier"):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"PYTHONPATH={src}".encode() in environ.split(b"\0"):
            pids.append(pid)
    return pids


def processes_using(fragment: str) -> list[int]:
    """PIDs of live processes whose command line contains `fragment` (e.g. a test's work folder)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
            except OSError:
                continue
            if fragment in cmd and "zombie" not in state:
                pids.append(int(d.name))
    return pids
