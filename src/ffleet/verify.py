"""Read a media file's streams and duration back: PyAV in the sandboxed verifier, in-process, or ffprobe."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ffleet import wav_header
from ffleet.ffmpeg import Binaries, ProcessRegistry, probe

# ffprobe, a second process per file, costs 6.6 ms of CPU per output with the static build and
# 84 ms with Debian's; PyAV reads the same in 0.5 ms (bench/verify_cost.py). Importing it costs
# about 63 ms of CPU once per process, so it is imported on the first file, not at start.


@dataclass
class MediaInfo:
    """What the worker checks in an output (or reads from an input its FFmpeg log said nothing about)."""

    stream_types: list[str] = field(default_factory=list)  # "audio", "video", "subtitle", "data", "attachment"
    duration: float | None = None  # the container's, else the first audio stream's
    codec: str | None = None  # of the first audio stream, as ffprobe names codecs ("mp3", not the decoder "mp3float")
    sample_rate: int | None = None
    channels: int | None = None
    format_name: str | None = None  # the demuxer libav chose (PyAV only)

    @property
    def has_audio(self) -> bool:
        return "audio" in self.stream_types


@dataclass
class ReadBack:
    info: MediaInfo | None  # None: the file does not open as media (within the whitelist)
    cpu_seconds: float  # CPU the reading cost (this thread's, and ffprobe's if it ran)
    reader: str  # "verifier" (sandboxed PyAV), "pyav" (in-process), "ffprobe" or "wav_header": which gave the answer
    stderr: str = ""  # why the file did not open, as libav logged it (e.g. "[hls @ ...] Format not on whitelist")
    fault: str | None = None  # the verifier failed on this file: the record's reason (invalid_output, sandbox_error)
    fault_detail: str = ""


_av = None
_av_lock = threading.Lock()

# FFLEET_VERIFY: unset, the sandboxed verifier (ffprobe where PyAV is missing); "pyav": PyAV in
# ffleet's own process, unconfined; "ffprobe": ffprobe in the sandbox, one process per file
VERIFY_CHOICES = ("pyav", "ffprobe")
SANDBOXED_PYAV, IN_PROCESS_PYAV, FFPROBE = "verifier", "pyav", "ffprobe"
WAV_HEADER = "wav_header"  # a plain PCM WAV, read from its header in Python (any reader but ffprobe)


def choice() -> str:
    """How outputs are read back here: SANDBOXED_PYAV, IN_PROCESS_PYAV or FFPROBE.

    Why the sandboxed verifier is the default: PyAV in ffleet's own process parses the output where
    the kernel sandbox does not reach and a Batch job holds AWS credentials; ffprobe costs a second
    process per file (6.6 ms of CPU with the static build, 84 ms with Debian's). The verifier
    (ffleet.verifier) is PyAV in a long-lived process under the sandbox: both, for one start per
    batch. FFLEET_VERIFY=pyav trades the isolation for the last fraction of a millisecond.
    """
    said = os.environ.get("FFLEET_VERIFY") or None
    if said is not None and said not in VERIFY_CHOICES:
        raise ValueError(f"FFLEET_VERIFY={said!r}: use 'pyav' (in-process, unconfined), 'ffprobe', "
                         "or leave it unset (the sandboxed PyAV verifier)")
    if said == "ffprobe":
        return FFPROBE
    if said == "pyav":
        return IN_PROCESS_PYAV if _pyav() is not None else FFPROBE
    from ffleet import verifier

    return SANDBOXED_PYAV if verifier.available() else FFPROBE


def _pyav():
    """The av module, imported on first use in this process; None where it is not installed."""
    global _av
    if _av is None:
        with _av_lock:
            if _av is None:
                try:
                    import av
                except ImportError:
                    av = False
                _av = av
    return _av or None


def reader_name() -> str:
    return choice()


def has_ffprobe(binaries: Binaries) -> bool:
    """An image with a static FFmpeg alone has no ffprobe (FFLEET_FFPROBE may point nowhere)."""
    return bool(binaries.ffprobe) and os.access(binaries.ffprobe, os.X_OK)


def read_media(
    path: Path, guard: list[str], binaries: Binaries, registry: ProcessRegistry | None = None,
    verifiers=None,
) -> ReadBack:
    """Streams and duration of the local file at path, opened with the same protection as an input.

    guard is the input guard (ffmpeg.input_guard): the file protocol alone and the whitelisted
    demuxers. FFmpeg picks a demuxer from the content, not the name, so without it a file whose
    bytes are an HLS or concat playlist would be read as the local files it lists.

    verifiers: the run's ffleet.verifier.VerifierPool, for the sandboxed verifier (by default);
    a file outside the folders it may read (an input read in place) gets a verifier of its own.
    """
    how = choice()
    if how == FFPROBE:
        return _read_with_ffprobe(path, guard, binaries, registry)
    if path.suffix.lower() == ".wav":  # the header says it all: read in Python, no libav (ffleet.wav_header)
        started = time.thread_time()
        fields = wav_header.read(path, _guard_options(guard)["format_whitelist"])
        if fields is not None:
            return ReadBack(MediaInfo(**fields), time.thread_time() - started, WAV_HEADER)
    if how == SANDBOXED_PYAV:
        return _read_with_verifier(path, guard, binaries, registry, verifiers)
    av = _pyav()
    started = time.thread_time()
    info = read_with_pyav(av, path, guard)
    cpu = time.thread_time() - started
    if info is None:
        return _last_word(path, guard, binaries, registry, ReadBack(None, cpu, IN_PROCESS_PYAV))
    return ReadBack(info, cpu, IN_PROCESS_PYAV)


def _last_word(path, guard, binaries, registry, back: ReadBack) -> ReadBack:
    """A file PyAV does not open is rare: ffprobe (in its own process, with the same whitelists),
    where there is one, has the last word and says why, e.g. which demuxer the whitelist refused.
    So the verdict against a file is never stricter than ffprobe's, whichever libav PyAV bundles."""
    if not has_ffprobe(binaries):
        return back  # an image with a static FFmpeg alone: PyAV's verdict stands
    try:
        by_ffprobe = _read_with_ffprobe(path, guard, binaries, registry)
    except OSError:
        return back
    return ReadBack(by_ffprobe.info, back.cpu_seconds + by_ffprobe.cpu_seconds, by_ffprobe.reader,
                    by_ffprobe.stderr or back.stderr)


def _read_with_verifier(path, guard, binaries, registry, verifiers) -> ReadBack:
    from ffleet.verifier import NoAnswer, VerifierPool, VerifierUnavailable

    own = verifiers is None or not verifiers.can_read(path)
    if own and has_ffprobe(binaries):  # one file outside the run's folders: ffprobe starts faster
        return _read_with_ffprobe(path, guard, binaries, registry)
    pool = VerifierPool((str(path),), registry) if own else verifiers
    try:
        answer = pool.ask(path, guard)
    except NoAnswer as exc:
        # it crashed, hung or answered nonsense on this file: a hostile output can do that, a good one cannot
        return ReadBack(None, 0.0, SANDBOXED_PYAV, fault="invalid_output",
                        fault_detail=f"the output could not be read back: {exc}")
    except VerifierUnavailable as exc:
        if has_ffprobe(binaries):
            return _read_with_ffprobe(path, guard, binaries, registry)
        return ReadBack(None, 0.0, SANDBOXED_PYAV, fault="sandbox_error", fault_detail=str(exc))
    finally:
        if own:
            pool.close()
    info = MediaInfo(**answer.info) if answer.info is not None else None
    cpu = pool.cpu_seconds if own else answer.cpu_seconds  # its own verifier: all of its CPU, start included
    back = ReadBack(info, cpu, SANDBOXED_PYAV, answer.stderr)
    return back if info is not None else _last_word(path, guard, binaries, registry, back)


def read_with_pyav(av, path: Path, guard: list[str], errors: list[str] | None = None) -> MediaInfo | None:
    """What libav reads in path with the input whitelists and no decoder; None: it does not open.

    The one PyAV code path, in ffleet's process (FFLEET_VERIFY=pyav) and in the verifier's.
    errors, if given, gets libav's error of the last open that failed (e.g. "Permission denied")."""
    # No decoder runs: libav would open one to fill in parameters the container leaves out (the
    # sample format, mostly), on bytes a user's input may have chosen (-c copy). Refused, libav
    # reports what the container and the parsers say: the same streams, rates, channels and
    # duration (tests/test_verify.py), for no more CPU (bench/verify_cost.py).
    options = {**_guard_options(guard), "codec_whitelist": _NO_DECODER}
    info = None
    if path.suffix.lower() in _PCM_SUFFIXES:
        try:
            info = _open(av, path, {**options, "probesize": str(_SMALL_PROBE)})
        except av.FFmpegError:
            pass
        if info is not None and not _described_by_header(info):
            info = None  # read it again as ffprobe would: a verdict against a file comes from the full read
    if info is None:
        try:
            info = _open(av, path, options)
        except av.FFmpegError as exc:
            if errors is not None:
                errors.append(str(exc))
            info = None
    return info


# PCM in WAV, W64 or AIFF: the header gives the streams, the sample format and the data size, so
# the duration. libav still reads up to `probesize` (5 MB) of samples before it answers: 10 ms of
# CPU for a 10 s 48 kHz mono WAV, more than the rest of ffleet's work on the file. A 4 KiB probe
# answers the same (bench/verify_cost.py checks it); an answer the checks would reject is
# read again in full, so a failure is never the small probe's doing.
_PCM_SUFFIXES = {".wav", ".w64", ".aif", ".aiff"}
_NO_DECODER = "none"  # a codec_whitelist that names no codec
_HEADER_FORMATS = {"wav", "w64", "aiff"}
_SMALL_PROBE = 4096


# As ffprobe's run was bounded: libav checks this between reads, so a file cannot hold a worker thread
_OPEN_TIMEOUT_SECONDS = 60


def _open(av, path: Path, options: dict[str, str]) -> MediaInfo:
    with av.open(str(path), options=options, timeout=_OPEN_TIMEOUT_SECONDS) as container:
        info = _from_container(container)
        info.format_name = container.format.name
    return info


def _described_by_header(info: MediaInfo) -> bool:
    return (info.format_name in _HEADER_FORMATS and info.stream_types == ["audio"] and bool(info.duration)
            and info.duration > 0 and bool(info.codec and info.codec.startswith("pcm_") and info.sample_rate and info.channels))


def _guard_options(guard: list[str]) -> dict[str, str]:
    """['-protocol_whitelist', 'file', '-format_whitelist', 'wav,...'] -> the same as libav options.

    Every pair of the guard goes to libav; without both whitelists this refuses to read at all."""
    if len(guard) % 2 or not all(flag.startswith("-") for flag in guard[::2]):
        raise ValueError(f"the input guard {guard!r} is not a list of -option value pairs")
    options = {flag[1:]: value for flag, value in zip(guard[::2], guard[1::2])}
    if not {"protocol_whitelist", "format_whitelist"} <= set(options):
        raise ValueError(f"the input guard {guard!r} lacks protocol_whitelist or format_whitelist")
    return options


def _from_container(container) -> MediaInfo:
    info = MediaInfo()
    audio = None
    for stream in container.streams:
        info.stream_types.append(stream.type)
        if audio is None and stream.type == "audio":
            audio = stream
    if container.duration is not None:  # AV_TIME_BASE (microseconds)
        info.duration = container.duration / 1_000_000
    if audio is not None:
        if not info.duration and audio.duration is not None and audio.time_base:
            info.duration = float(audio.duration * audio.time_base)
        ctx = audio.codec_context
        info.codec = ctx.codec.canonical_name if ctx.codec else None
        info.sample_rate = ctx.sample_rate or None
        info.channels = ctx.channels or None
    return info


def _read_with_ffprobe(path: Path, guard: list[str], binaries: Binaries, registry: ProcessRegistry | None) -> ReadBack:
    # ffmpeg.probe reads with the input guard (untrusted=True: as a user's input), which holds the
    # whitelists `guard` holds but for a user's own -f additions
    data, run = probe(path, binaries, registry=registry, untrusted=True)
    if not data:
        return ReadBack(None, run.cpu_seconds, "ffprobe", run.stderr)
    streams = data.get("streams") or []
    audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
    info = MediaInfo(
        stream_types=[s.get("codec_type") for s in streams],
        duration=_float((data.get("format") or {}).get("duration")) or _float(audio.get("duration")),
        codec=audio.get("codec_name"),
        sample_rate=int(audio["sample_rate"]) if audio.get("sample_rate") else None,
        channels=audio.get("channels"),
    )
    return ReadBack(info, run.cpu_seconds, "ffprobe", run.stderr)


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
