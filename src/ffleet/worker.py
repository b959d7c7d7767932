"""The worker: one file through fetch -> FFmpeg -> verify -> store, and a batch of files in a pool."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ffleet import sandbox, verify
from ffleet.cpus import usable_cpus
from ffleet.ffmpeg import (
    Binaries, ProcessRegistry, find_binaries, input_guard, last_error_lines, parse_input_info, parse_time, run_process,
)
from ffleet.keys import OutputClaims, output_key, segment_folder, segment_key
from ffleet.policy import option_pairs, refused_output_extension
from ffleet.request import JobRequest
from ffleet.results import FAILED, NOT_DONE, SKIPPED, SUCCEEDED, ItemResult
from ffleet.sandbox import HELPER_EXIT, Confinement, SandboxRequired, SandboxStatus
from ffleet.storage import InvalidKey, ListedObject, NotFound, Storage, StorageError, input_storage, output_storage
from ffleet.verifier import VerifierPool
from ffleet.verify import MediaInfo, read_media

if TYPE_CHECKING:
    from ffleet.audio_quality import OutputTap

# Messages FFmpeg prints when the input itself is unreadable (rather than the options being wrong).
_CORRUPT_PATTERNS = re.compile(
    r"Invalid data found when processing input|moov atom not found|could not find codec parameters|"
    r"Error while decoding stream|Invalid argument.*Input|does not contain any stream|"
    r"Failed to read frame size|Header missing|EBML header parsing failed|Format .* detected only with low score|"
    r"Error opening input|End of file",
    re.I,
)
_NOT_ON_WHITELIST = re.compile(r"^\[(\w+) @ [^\]]+\] Format not on whitelist", re.M)
_NO_SPACE = re.compile(r"No space left on device", re.I)
_SANDBOX_REFUSED = re.compile(r"^ffleet-sandbox: ", re.M)


def _quality():
    from ffleet import audio_quality

    return audio_quality


def _segments():
    from ffleet import segments  # imported by a segmenting request only (it brings the quality analysis)

    return segments


def expected_duration(input_duration: float | None, tokens: dict[str, list[str]]) -> float | None:
    """The output duration -ss/-t/-to imply (options may sit on the input or the output)."""
    if input_duration is None:
        return None
    ss = t = to = None
    for side in ("input", "output"):
        for flag, value in option_pairs(tokens[side]):
            base = flag.split(":")[0]
            if value is None:
                continue
            if base == "-ss":
                ss = (ss or 0) + (parse_time(value) or 0)
            elif base == "-t":
                t = parse_time(value)
            elif base == "-to":
                to = parse_time(value)
    start = ss or 0.0
    end = input_duration
    if to is not None:
        end = min(end, to)
    length = max(0.0, end - start)
    if t is not None:
        length = min(length, t)
    return length


# Audio-only containers (by extension, or -f muxer name). FFmpeg still maps a video stream to some
# of them (FLAC and MP3 take PNG pictures, M4A an H.264 track, Ogg Theora): for a video input that
# means decoding and re-encoding every frame, 160x the CPU of the audio conversion for a 20 s 720p
# clip to FLAC (bench/video_input.py), and the FLAC keeps none of it. An audio file's only picture
# is its cover art, which FFmpeg carries over at the cost of one picture: that is left alone.
AUDIO_ONLY_OUTPUTS = {"flac", "wav", "w64", "mp3", "opus", "ogg", "oga", "m4a", "m4b", "aac", "adts", "ipod",
                      "aif", "aiff", "ac3", "eac3", "wv", "mka"}
# Output options that decide about video or stream selection; with any of them, the user decides.
_VIDEO_DECIDERS = {"-map", "-vn", "-vcodec", "-vf", "-vframes", "-vtag", "-pix_fmt", "-r", "-s", "-aspect"}


def _decides_video(flag: str) -> bool:
    base, _, spec = flag.partition(":")
    return (base in _VIDEO_DECIDERS or spec.startswith(("v", "V"))  # -c:v, -b:v, -filter:v, -frames:v ...
            or (base in ("-c", "-codec") and not spec))  # a codec for every stream, video included


def adds_no_video(output_tokens: list[str], output_ext: str, input_ext: str) -> bool:
    """Whether ffleet adds -vn: an input that may hold video (not an audio-only container by its
    extension), an audio-only output, and options that decide nothing about video.

    To keep a video's picture track in an audio file anyway, say so: `-c:v ...` or `-map`.
    """
    if input_ext.lower().lstrip(".") in AUDIO_ONLY_OUTPUTS:
        return False  # an audio file: its picture, if any, is cover art
    muxer = next((v for flag, v in option_pairs(output_tokens) if flag == "-f" and v), None)
    if (muxer or output_ext.lower().lstrip(".")) not in AUDIO_ONLY_OUTPUTS:
        return False
    return not any(_decides_video(flag) for flag, _ in option_pairs(output_tokens))


def _has_flag(tokens: list[str], name: str) -> bool:
    return any(tok == name for tok in tokens)


@dataclass
class WorkContext:
    """Everything a worker needs to process one file; shared by the threads of one batch."""

    request: JobRequest
    input_store: Storage
    output_store: Storage
    work_dir: Path
    binaries: Binaries = field(default_factory=find_binaries)
    registry: ProcessRegistry = field(default_factory=ProcessRegistry)
    tokens: dict[str, list[str]] = field(init=False)
    guard: list[str] = field(init=False)
    output_guard: list[str] = field(init=False)  # the output is read back with an input's protection
    measuring: bool = field(init=False)  # the converting run measures (never when segmenting)
    segmenting: bool = field(init=False)
    measure_segments: bool = field(init=False)  # each segment is measured after the cut
    # (input, output extension) -> the output options (the user's, -vn added for video into an audio container)
    _outputs: dict[tuple[str, str], list[str]] = field(init=False, default_factory=dict, repr=False)
    # (input, output extension) -> its OutputTap (None: measure the source); ("silence", ...) for segments
    _taps: dict[tuple[str, ...], OutputTap | None] = field(init=False, default_factory=dict, repr=False)
    # measuring: a raised -loglevel, and the second output that analyses the source; the same for every file
    _loglevel: list[str] = field(init=False, default_factory=list, repr=False)
    _source_analysis: list[str] = field(init=False, default_factory=list, repr=False)
    sandbox: SandboxStatus = field(init=False)
    # the sandboxed PyAV verifiers that read outputs back (ffleet.verifier): the work folder only
    verifiers: VerifierPool = field(init=False, repr=False)
    # one permit per FFmpeg that may run at once (run_items sets `workers` of them); None: no limit
    ffmpeg_slots: threading.Semaphore | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        # before any file is touched: a request that requires the sandbox refuses to start without it
        required = self.request.processing.require_sandbox
        required = sandbox.required_by_default() if required is None else required
        self.sandbox = sandbox.require(required)
        # how outputs are read back: a wrong FFLEET_VERIFY is refused here, before any file
        if verify.choice() == verify.IN_PROCESS_PYAV and required:
            raise SandboxRequired(
                "processing.require_sandbox is true, but FFLEET_VERIFY=pyav reads outputs in ffleet's own "
                "process, outside the sandbox (unset FFLEET_VERIFY for the sandboxed verifier)")
        self.verifiers = VerifierPool((str(self.work_dir),), self.registry)
        self.tokens = self.request.option_tokens()
        # a user's input -f (e.g. s16le for raw PCM) is a demuxer they chose: let it through
        user_formats = [v for flag, v in option_pairs(self.tokens["input"]) if flag == "-f" and v is not None]
        self.guard = input_guard(user_formats)
        # a user's output -f names the muxer: reading the output back needs its demuxer (if FFmpeg has one)
        output_formats = [v for flag, v in option_pairs(self.tokens["output"]) if flag == "-f" and v is not None]
        self.output_guard = input_guard(output_formats)
        # the quality analysis (ffleet.audio_quality) and segmenting (ffleet.segments) are imported only
        # by a request that uses them: every `ffleet run` pays for each import before its first FFmpeg
        measuring = self.request.quality.measuring and _quality().measuring(self.request, self.tokens)
        self.segmenting = self.request.output.segment is not None
        # segmenting: the quality of each piece counts, measured from the cut (ffleet.segments)
        self.measuring, self.measure_segments = measuring and not self.segmenting, measuring and self.segmenting
        if self.measuring or self.segmenting:  # both read info lines from FFmpeg's log
            audio_quality = _quality()
            self._loglevel = audio_quality.global_args(self.tokens["global"])
        if self.measuring:
            self._source_analysis = _quality().analysis_args(self.tokens, self.request.quality.true_peak)

    @classmethod
    def for_request(cls, request: JobRequest, work_dir: Path | None = None, client=None) -> "WorkContext":
        in_store, _ = input_storage(request, client)
        out_store = output_storage(request, client)
        wd = Path(work_dir or tempfile.mkdtemp(prefix="ffleet-"))
        wd.mkdir(parents=True, exist_ok=True)
        return cls(request=request, input_store=in_store, output_store=out_store, work_dir=wd)

    def output_key_for(self, key: str) -> str:
        out = self.request.output
        return output_key(key, out.s3_prefix, out.s3_suffix, out.extension)

    def output_options(self, src: Path, dst: Path) -> list[str]:
        """The output options for src written to dst: the user's, and -vn where adds_no_video says."""
        key = (src.suffix.lower(), dst.suffix)
        if key not in self._outputs:  # a race between threads computes the same value twice: harmless
            out = self.tokens["output"]
            self._outputs[key] = [*out, "-vn"] if adds_no_video(out, dst.suffix, src.suffix) else out
        return self._outputs[key]

    def measure_tap(self, src: Path, dst: Path) -> OutputTap | None:
        """How this file's written audio is measured, or None (not measuring, or measuring the source)."""
        q = self.request.quality
        if not self.measuring or q.measure_at != "output":
            return None
        key = (src.suffix.lower(), dst.suffix)
        if key not in self._taps:
            tokens = {**self.tokens, "output": self.output_options(src, dst)}
            self._taps[key] = _quality().output_tap(tokens, dst.suffix, q.true_peak, self.binaries.ffmpeg)
        return self._taps[key]

    def silence_tap(self, src: Path, dst: Path) -> OutputTap | None:
        """Segmenting: the output tap that finds the pauses in the audio as written, or None (the source's)."""
        key = ("silence", src.suffix.lower(), dst.suffix)
        if key not in self._taps:
            tokens = {**self.tokens, "output": self.output_options(src, dst)}
            self._taps[key] = _quality().output_tap(tokens, dst.suffix, ffmpeg=self.binaries.ffmpeg,
                                                    analysis=_segments().silence_filter(self.request.output.segment))
        return self._taps[key]

    def ffmpeg_argv(self, src: Path, dst: Path) -> list[str]:
        t = self.tokens
        head = [self.binaries.ffmpeg, "-hide_banner", "-nostdin", "-nostats", *t["global"]]
        reading = [*t["input"], *self.guard, "-i", str(src)]
        output = self.output_options(src, dst)
        seg = self.request.output.segment
        if seg is not None and seg.at_silence:  # the same run finds the pauses to cut at
            # in the written audio where it can: a 16 kHz mono output has 5.5x fewer samples than
            # a 44.1 kHz stereo source, and silencedetect costs per sample (bench/segment_cost.py)
            tap = self.silence_tap(src, dst)
            if tap is not None:
                return [*head, *self._loglevel, *reading, *tap.args, "-y", str(dst)]
            return [*head, *self._loglevel, *reading, *output, "-y", str(dst), *_segments().silence_args(output, seg)]
        if not self.measuring:
            return [*head, *reading, *output, "-y", str(dst)]
        # measuring: the same run also analyses the audio (see ffleet.audio_quality)
        head += self._loglevel
        tap = self.measure_tap(src, dst)
        if tap is not None:  # the output's audio chain ends in an asplit to the analysis
            return [*head, *reading, *tap.args, "-y", str(dst)]
        return [*head, *reading, *output, "-y", str(dst), *self._source_analysis]  # a second output


def _temp_suffix(out_key: str) -> str:
    """The temp file keeps the output's extension, so FFmpeg picks the same muxer it would for the key
    (none for an extension whose muxer writes other files: FFmpeg then fails the file)."""
    name = out_key.rsplit("/", 1)[-1]
    ext = os.path.splitext(name)[1]
    return ext if re.match(r"^\.[A-Za-z0-9]{1,10}$", ext) and not refused_output_extension(ext) else ""


# a file the run's stop reached before its FFmpeg started
_NOT_STARTED = (NOT_DONE, "interrupted", "stopped before this file started")


def process_item(ctx: WorkContext, item: ListedObject) -> ItemResult:
    """Process one file. Never raises for a problem with the file; returns its result record."""
    started = time.monotonic()
    out_key = ctx.output_key_for(item.key)
    result = ItemResult(key=item.key, status=FAILED, output_key=out_key)
    if ctx.registry.stopping.is_set():
        result.status, result.reason, result.detail = _NOT_STARTED
        return result
    slot = Path(tempfile.mkdtemp(prefix="item-", dir=ctx.work_dir))
    try:
        _process(ctx, item, out_key, slot, result)
    except StorageError as exc:
        result.status = FAILED
        result.reason = "not_found" if isinstance(exc, NotFound) else "invalid_key" if isinstance(exc, InvalidKey) else "storage_error"
        result.detail = str(exc)
    except OSError as exc:
        result.status, result.reason = FAILED, "storage_error"
        result.detail = f"local disk: {exc}" if exc.errno == errno.ENOSPC else f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a bug must fail one file, not the batch
        result.status, result.reason, result.detail = FAILED, "internal_error", f"{type(exc).__name__}: {exc}"
    finally:
        try:
            os.rmdir(slot)  # the usual end: the output was moved out, the input read in place
        except OSError:
            shutil.rmtree(slot, ignore_errors=True)
        result.wall_seconds = round(time.monotonic() - started, 4)
    if result.status == FAILED and ctx.registry.stopping.is_set() and result.reason in ("ffmpeg_error", "timeout", "corrupt_input", "invalid_output"):
        # killed by our own shutdown: not the file's fault, so a retry must pick it up
        result.status, result.reason, result.detail = NOT_DONE, "interrupted", "stopped while processing"
    return result


def _process(ctx: WorkContext, item: ListedObject, out_key: str, slot: Path, result: ItemResult) -> None:
    req = ctx.request
    # 0. Keys that cannot name one distinct file (or object) where they are read or written.
    folder, ext = segment_folder(out_key)
    written = segment_key(folder, 0, ext) if ctx.segmenting else out_key  # a segment set's longest key
    for role, store, key in (("input", ctx.input_store, item.key), ("output", ctx.output_store, written)):
        problem = store.key_problem(key)
        if problem:
            raise InvalidKey(f"{role} key {key!r} {problem}")
    # 1. Skip before any work: re-runs of a 3-million-file job must cost a HEAD per finished file
    # (a segment set: its marker and a listing of its folder).
    if ctx.segmenting and not req.output.overwrite:
        marker = _segments().finished(ctx.output_store, out_key, req)
        if marker is not None:
            result.output_key = folder
            _segments().describe(result, marker)
            result.status, result.reason, result.detail = SKIPPED, None, None
            return
    elif not req.output.overwrite and ctx.output_store.exists(out_key):
        result.status = SKIPPED
        result.reason = None
        return
    # 2. Fetch: an S3 object is staged on disk, a folder's file is read in place (Storage.readable_path).
    staging = slot / ("input" + _temp_suffix(item.key))
    src, result.bytes_in = ctx.input_store.readable_path(item.key, staging)
    if result.bytes_in == 0:
        result.reason, result.detail = "empty_input", "the input object is 0 bytes"
        return
    # 3. FFmpeg into a temp file; it becomes the output only after it probes as valid.
    dst = slot / ("output" + _temp_suffix(out_key))
    with _ffmpeg_slot(ctx):
        if ctx.registry.stopping.is_set():  # stopped while this file waited for its turn
            result.status, result.reason, result.detail = _NOT_STARTED
            return
        run = run_process(
            ctx.ffmpeg_argv(src, dst), timeout=req.processing.timeout_seconds_per_file, registry=ctx.registry,
            stderr_limit=_quality().ANALYSIS_STDERR_LIMIT if ctx.measuring or ctx.segmenting else 64_000,
            # the kernel keeps FFmpeg to its input and this file's own folder, whatever its options say
            confinement=Confinement(read=(str(src),), write=(str(slot),), max_output_bytes=req.processing.max_output_bytes),
        )
    result.cpu_seconds += run.cpu_seconds
    info = parse_input_info(run.stderr)
    if info.parsed:
        result.duration_in = info.duration
    if run.timed_out:
        result.reason = "timeout"
        result.detail = f"FFmpeg ran longer than timeout_seconds_per_file={req.processing.timeout_seconds_per_file}"
        return
    if info.parsed and not info.has_audio and req.processing.require_audio:
        result.reason = "no_audio_stream"
        result.detail = f"input has no audio stream (streams: {', '.join(info.stream_types) or 'none'})"
        return
    if run.returncode == -signal.SIGXFSZ:
        result.reason = "output_too_large"
        result.detail = f"FFmpeg wrote more than processing.max_output_bytes={req.processing.max_output_bytes}"
        return
    if run.returncode == HELPER_EXIT and _SANDBOX_REFUSED.search(run.stderr):
        result.reason, result.detail = "sandbox_error", last_error_lines(run.stderr, 2)
        return
    if run.returncode != 0:
        tail = last_error_lines(run.stderr).replace(str(src), item.key)
        unsupported = _NOT_ON_WHITELIST.search(run.stderr)
        if unsupported:
            result.reason = "unsupported_format"
            result.detail = (
                f"FFmpeg detected the {unsupported.group(1)} format, which ffleet does not read "
                "(it can open other files; see INPUT_FORMATS in ffleet/ffmpeg.py)"
            )
        elif _NO_SPACE.search(run.stderr):
            result.reason = "storage_error"
            result.detail = "local disk full while writing the output: " + tail
        elif not info.parsed or _CORRUPT_PATTERNS.search(tail):
            result.reason = "corrupt_input"
            result.detail = tail or f"ffmpeg exited with {run.returncode}"
        else:
            result.reason, result.detail = "ffmpeg_error", tail or f"ffmpeg exited with {run.returncode}"
        return
    if not info.parsed or info.duration is None:
        # the user's -loglevel hid the input section, or the container has no duration: read the input
        in_read = read_media(src, ctx.guard, ctx.binaries, ctx.registry, ctx.verifiers)
        result.cpu_seconds += in_read.cpu_seconds
        if in_read.info:
            result.duration_in = in_read.info.duration
            if not in_read.info.has_audio and req.processing.require_audio:
                result.reason, result.detail = "no_audio_stream", "input has no audio stream"
                return
    # 4. Verify the output: FFmpeg can exit 0 after writing a header-only file.
    if not dst.is_file() or dst.stat().st_size == 0:
        result.reason, result.detail = "invalid_output", "FFmpeg exited 0 but wrote no output"
        return
    out_read = read_media(dst, ctx.output_guard, ctx.binaries, ctx.registry, ctx.verifiers)
    result.cpu_seconds += out_read.cpu_seconds
    if out_read.fault:  # the verifier crashed or hung on it (invalid_output), or could not start (sandbox_error)
        result.reason, result.detail = out_read.fault, out_read.fault_detail
        return
    problem = _verify_output(ctx, out_read.info, result)
    if problem and not out_read.info:
        unsupported = _NOT_ON_WHITELIST.search(out_read.stderr)
        if unsupported:  # e.g. playlist bytes: read as such, they would name another file
            problem += f" (it reads as {unsupported.group(1)}, a format ffleet does not read; see INPUT_FORMATS)"
    if problem:
        result.reason, result.detail = "invalid_output", problem
        return
    result.bytes_out = dst.stat().st_size
    if ctx.segmenting:  # 5-6. cut, verify, measure and store each piece instead
        with _ffmpeg_slot(ctx):  # the cut is FFmpeg's work too
            _segments().cut_and_store(
                request=req, tokens=ctx.tokens, binaries=ctx.binaries, registry=ctx.registry, guard=ctx.output_guard,
                store=ctx.output_store, slot=slot, dst=dst, out_key=out_key, out=out_read.info, convert_stderr=run.stderr,
                result=result, measuring=ctx.measure_segments, verifiers=ctx.verifiers)
        return
    # 5. Quality: measurements into the record; a file failing a filter ends as rejected.
    result.status = SUCCEEDED
    if ctx.measuring and not _quality().apply_quality(req, run.stderr, result, ctx.measure_tap(src, dst), info):
        return
    # 6. Store: atomic for folders (temp + rename), whole-object for S3.
    ctx.output_store.store(dst, out_key)


def _ffmpeg_slot(ctx: WorkContext):
    """Held while FFmpeg converts or cuts: `workers` FFmpegs at once, while the other threads fetch,
    read back and store (their next FFmpeg starts as soon as one ends, not after its file's bookkeeping)."""
    return ctx.ffmpeg_slots if ctx.ffmpeg_slots is not None else contextlib.nullcontext()


def _verify_output(ctx: WorkContext, out: MediaInfo | None, result: ItemResult) -> str | None:
    req = ctx.request
    if out is None:
        return "the output cannot be read back as media"
    result.duration_out = out.duration
    if out.has_audio:
        result.sample_rate, result.channels, result.codec = out.sample_rate, out.channels, out.codec
    if not out.stream_types:
        return "the output has no streams"
    if req.processing.require_audio and not _has_flag(ctx.tokens["output"], "-an") and not out.has_audio:
        return "the output has no audio stream"
    duration = out.duration
    if duration is None or duration <= 0:
        return "the output has no duration (header only?)"
    if req.processing.verify_duration:
        expected = expected_duration(result.duration_in, ctx.tokens)
        if expected is not None:
            # codecs pad (mp3 ~50 ms, AAC priming); 0.5 s + 2% allows that and still catches truncation
            tolerance = 0.5 + 0.02 * expected
            if abs(duration - expected) > tolerance:
                return f"output lasts {duration:.3f} s, expected {expected:.3f} s (+/- {tolerance:.2f} s)"
    return None




def default_workers(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """One FFmpeg per CPU the process may use."""
    return usable_cpus(cgroup_root)


def output_collision(item: ListedObject, out_key: str, holder: str) -> ItemResult:
    """The record of an input whose output key an earlier input of the run already has."""
    return ItemResult(
        key=item.key, status=FAILED, output_key=out_key, reason="output_collision",
        detail=f"{holder} (listed earlier) is also written to {out_key}; give the inputs distinct outputs "
               "(e.g. filter input.extensions, or run each extension with its own output.s3_suffix or prefix)",
    )


def output_is_input(item: ListedObject, out_key: str) -> ItemResult:
    """The record of an input whose output key names an input of the same run (never written over)."""
    whose = "the input itself" if out_key == item.key else "another input of this run"
    return ItemResult(
        key=item.key, status=FAILED, output_key=out_key, reason="output_collision",
        detail=f"the output {out_key} is {whose}; ffleet never writes over a run's input "
               "(give the outputs their own output.s3_prefix)",
    )


def run_items(
    ctx: WorkContext,
    items: Iterable[ListedObject],
    workers: int | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    on_started: Callable[[], None] | None = None,
) -> Iterator[ItemResult]:
    """Process items with `workers` FFmpeg processes at once; yields results as they finish.

    Threads drive the pool: each one spends its time waiting on an FFmpeg child process, S3 or the
    verifier (the GIL is released), so threads give one FFmpeg per CPU without pickling or forking per
    file. 2 x workers threads, each with its own file, of which `workers` may run FFmpeg at once
    (ctx.ffmpeg_slots): a CPU is not left idle while a thread reads back or stores its file. At most
    2 x workers items are in flight, so memory does not grow with the batch size. After
    ctx.registry.stop_all() every remaining item is yielded as not_done. `on_started()` is called once
    the first files have been handed to the pool, before the first result.
    """
    workers = workers or default_workers()
    # `workers` FFmpegs at once, and as many threads again: while one file is fetched, read back or
    # stored, another thread's FFmpeg holds the CPU (on S3 a fetch or an upload takes longer than many
    # conversions)
    ctx.ffmpeg_slots = threading.BoundedSemaphore(workers)
    iterator = iter(items)
    in_flight: set[Future] = set()
    lock = threading.Lock()
    # only a replaced extension can map two inputs to one output (prefix + key + suffix cannot);
    # only in the inputs' own bucket can an output key be an input's key
    req = ctx.request
    shared = bool(req.input.s3_bucket) and req.input.s3_bucket == req.output.s3_bucket
    claims_dir = Path(tempfile.mkdtemp(prefix="claims-", dir=ctx.work_dir)) if req.output.extension or shared else None
    claims = OutputClaims(claims_dir) if claims_dir else None
    if shared:
        iterator = claims.hold_inputs(iterator)

    def submit_next(pool: ThreadPoolExecutor) -> bool:
        with lock:  # claimed in listing order: the first listed input keeps the output
            item = next(iterator, None)
            out_key = ctx.output_key_for(item.key) if item is not None and claims else None
            overwrites_input = out_key is not None and claims.is_input(out_key)
            holder = claims.claim(out_key, item.key) if out_key is not None and not overwrites_input else None
        if item is None:
            return False
        if overwrites_input:
            in_flight.add(pool.submit(output_is_input, item, out_key))
        elif holder is not None:
            in_flight.add(pool.submit(output_collision, item, out_key, holder))
        else:
            in_flight.add(pool.submit(process_item, ctx, item))
        return True

    try:
        with ThreadPoolExecutor(max_workers=2 * workers, thread_name_prefix="ffleet") as pool:
            while len(in_flight) < 2 * workers and submit_next(pool):
                pass
            if on_started:
                on_started()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    in_flight.discard(fut)
                    res = fut.result()
                    if on_result:
                        on_result(res)
                    yield res
                    submit_next(pool)
    finally:
        ctx.verifiers.close()  # the verifiers end with the batch (a later batch starts new ones)
        if claims is not None:
            claims.close()
            shutil.rmtree(claims_dir, ignore_errors=True)
