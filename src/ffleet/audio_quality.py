"""Per-file audio measurements taken by the converting FFmpeg run itself, and the quality filters.

How the measurement is attached. ffleet appends a second output to the FFmpeg command it already
runs for the file:

    ffmpeg ... -i input <user's output options> output.flac \
           -map 0:a:0 \
           -af [atrim=<the user's output -ss/-t/-to>,]astats@ffleet_astats=...,ebur128@ffleet_ebur128=peak=true:framelog=verbose,silencedetect=... \
           -f null -

FFmpeg decodes each input stream once and hands the decoded frames to every output that uses it,
so the analysis costs its filters, not a second decode (bench/analysis_overhead.py measures it).

What is measured: the decoded source audio (the first audio stream, or the one the user's -map
names), over the same time span as the output, before the user's -af/-filter_complex and before
the output's resampling and encoding. Why the input rather than the output:
  * it composes with any user options: a second output cannot conflict with the user's -af,
    -filter_complex, -map or -vn, while tapping the output stream would mean rewriting the user's
    filter graph (and -ar/-ac/encoding happen after any graph, so even that would miss them);
  * measuring what the encoder produced exactly would need a second decode of the output file;
  * the quality filters are about the recording (is it clipped, silent, too short), which the
    conversion does not repair; a user who normalises loudness with -af loudnorm wants the
    filters to judge the source, not the value loudnorm forced.
The record's duration_out, sample_rate, channels and codec still describe the output (ffprobe).

ffmpeg's option policy forbids users to name outputs or use the null muxer; this module is ffleet
itself adding an output that writes nothing (`-f null -`, stdout is /dev/null).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ffleet.ffmpeg import parse_time

if TYPE_CHECKING:
    from ffleet.request import JobRequest
    from ffleet.results import ItemResult

# Thresholds, documented in docs/readme-issue8.md.
SILENCE_NOISE_DB = -60.0  # below this level counts as silence (room tone in speech is ~-50..-40 dBFS)
SILENCE_MIN_SECONDS = 0.5  # shorter gaps are pauses, not silence
FULL_SCALE_DB = -0.01  # a peak at or above this is at digital full scale
CLIPPED_MIN_SAMPLES = 3  # one or two full-scale samples are a normalised peak, not clipping
DC_OFFSET_LIMIT = 0.01  # |mean| above 1% of full scale (-40 dBFS) is flagged
# The log can hold one silencedetect line pair per pause; keep enough of it (the summaries come last).
ANALYSIS_STDERR_LIMIT = 1_000_000

_LEVELS = {"quiet": -8, "panic": 0, "fatal": 8, "error": 16, "warning": 24, "info": 32, "verbose": 40, "debug": 48, "trace": 56}


def analysis_filters(true_peak: bool = True) -> str:
    """The analysis chain. Named instances (name@id) make their log lines ours to parse."""
    return (
        # astats first, on the decoder's own sample format: integer full scale is then exact
        "astats@ffleet_astats=metadata=0:measure_perchannel=none:"
        "measure_overall=DC_offset+Peak_level+Peak_count+Number_of_samples,"
        # framelog=verbose keeps ebur128's 10-lines-a-second log out of the info log
        f"ebur128@ffleet_ebur128=peak={'true' if true_peak else 'sample'}:framelog=verbose,"
        # silencedetect logs under its class name, not the instance name: a silencedetect in the
        # user's own -af would be counted too (documented)
        f"silencedetect=noise={SILENCE_NOISE_DB:g}dB:duration={SILENCE_MIN_SECONDS:g}"
    )



def measuring(request: "JobRequest", tokens: dict[str, list[str]]) -> bool:
    """Whether this request's FFmpeg runs carry the analysis output.

    On when the request asks (quality.measure, or any quality filter). Off when the job is not about audio
    (require_audio false: a file without audio would make the extra output fail) or drops audio (-an).
    """
    q = request.quality
    return bool(q.measuring and request.processing.require_audio and "-an" not in tokens["output"])


def _audio_map(output_tokens: list[str]) -> str:
    """Measure the audio stream the user maps to the output, else the first audio stream."""
    for i, tok in enumerate(output_tokens[:-1]):
        if tok == "-map":
            value = output_tokens[i + 1]
            m = re.match(r"^0:a(?::(\d+))?\??$", value)
            if m:
                return f"0:a:{m.group(1) or 0}"
    return "0:a:0"


def _trim_filter(output_tokens: list[str]) -> str:
    """The user's output-side -ss/-t/-to as an atrim, so the measured span is the span that is written.

    Not as output options: FFmpeg applies those after the output's filters, at frame granularity,
    so the analysis filters would see up to a frame (~0.1 s) more than is written.
    """
    names = {"-ss": "start", "-t": "duration", "-to": "end"}
    opts = []
    for i, tok in enumerate(output_tokens[:-1]):
        seconds = parse_time(output_tokens[i + 1]) if tok in names else None
        if seconds is not None:  # in seconds: a ':' would need escaping at two levels of filter syntax
            opts.append(f"{names[tok]}=" + f"{seconds:.6f}".rstrip("0").rstrip("."))
    return f"atrim@ffleet_trim={':'.join(opts)}," if opts else ""


def global_args(global_tokens: list[str]) -> list[str]:
    """`-loglevel info` when the user's -loglevel would hide the measurements (they are info lines)."""
    level = None
    for i, tok in enumerate(global_tokens[:-1]):
        if tok in ("-loglevel", "-v"):
            level = global_tokens[i + 1]
    if level is None:
        return []
    # "repeat+level+warning" -> "warning"; "level" would prefix each line and break the parsers
    parts = [p.lstrip("+-") for p in level.split("+") if p]
    word = parts[-1] if parts else ""
    value = _LEVELS.get(word, int(word) if word.lstrip("-").isdigit() else 0)
    if value >= 32 and "level" not in parts:
        return []
    return ["-loglevel", "-level+info" if "level" in parts else "info"]


def analysis_args(tokens: dict[str, list[str]], true_peak: bool = True) -> list[str]:
    """The second output that measures the audio (appended after the converted output's path)."""
    out = tokens["output"]
    return ["-map", _audio_map(out), "-af", _trim_filter(out) + analysis_filters(true_peak), "-f", "null", "-"]


# ---------------------------------------------------------------------------------------------
# Parsing FFmpeg's log

_NUM = r"(-?(?:inf|nan|\d+(?:\.\d+)?(?:e[-+]?\d+)?))"
# FFmpeg 6 names the log context by the instance id ("ffleet_astats"), 5.x by "astats@ffleet_astats"
_ASTATS = re.compile(r"^\[(?:astats@)?ffleet_astats @ [^\]]+\] ([A-Za-z ]+): " + _NUM + r"\s*$", re.M | re.I)
_EBUR_SUMMARY = re.compile(r"^\[(?:ebur128@)?ffleet_ebur128 @ [^\]]+\] Summary:(.*?)(?=^\[|\Z)", re.M | re.S)
_INTEGRATED = re.compile(r"Integrated loudness:\s*I:\s*" + _NUM + r" LUFS", re.I)
_TRUE_PEAK = re.compile(r"True peak:\s*Peak:\s*" + _NUM + r" dBFS", re.I)
_SILENCE = re.compile(r"^\[silencedetect @ [^\]]+\] silence_(start|end): " + _NUM, re.M)
_INPUT_AUDIO = re.compile(
    r"^\s*Stream #0:\d+(?:\[[^\]]*\])?(?:\([^)]*\))?: Audio: ([^\s,]+)[^,]*, (\d+) Hz, ([^,]+)", re.M
)
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 4, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}


def _num(text: str) -> float:
    return float(text)  # float() reads "inf", "-inf", "nan"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class AudioMeasurements:
    """What one file's analysis branch measured. None where FFmpeg printed nothing usable."""

    duration: float | None = None  # seconds measured (after -ss/-t/-to)
    sample_rate: int | None = None  # of the decoded input stream
    channels: int | None = None
    codec: str | None = None
    lufs: float | None = None  # integrated loudness; -70 is ebur128's floor (digital silence)
    true_peak_db: float | None = None  # dBTP (4x oversampled); None for digital silence (-inf)
    peak_db: float | None = None  # sample peak, dBFS
    silence_seconds: float | None = None
    silence_ratio: float | None = None
    clipped_samples: int | None = None  # samples at digital full scale
    clipped: bool | None = None
    dc_offset: float | None = None  # mean of the signal, as a fraction of full scale
    dc_offset_flag: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _input_stream(stderr: str) -> tuple[str | None, int | None, int | None]:
    start = stderr.find("Input #0")
    if start < 0:
        return None, None, None
    end = stderr.find("Output #0", start)
    m = _INPUT_AUDIO.search(stderr[start: end if end > 0 else None])
    if not m:
        return None, None, None
    layout = m.group(3).strip()
    channels = _LAYOUT_CHANNELS.get(layout.split("(")[0])
    cm = re.match(r"^(\d+) channels", layout)
    if cm:
        channels = int(cm.group(1))
    return m.group(1), int(m.group(2)), channels


def parse_measurements(stderr: str) -> AudioMeasurements | None:
    """Read the analysis branch's results from FFmpeg's log; None if none of them are there."""
    stats = {name.strip().lower(): _num(v) for name, v in _ASTATS.findall(stderr)}
    summary = _EBUR_SUMMARY.findall(stderr)
    if not stats and not summary:
        return None
    m = AudioMeasurements()
    m.codec, m.sample_rate, m.channels = _input_stream(stderr)
    n = stats.get("number of samples")  # per channel
    if n is not None and m.sample_rate:
        m.duration = round(n / m.sample_rate, 4)
    peak = stats.get("peak level db")
    if peak is not None:
        m.peak_db = round(peak, 3) if math.isfinite(peak) else None
        at_full_scale = math.isfinite(peak) and peak >= FULL_SCALE_DB
        # "Peak count" counts the samples that reach the minimum or the maximum level; at full
        # scale those are the clipped ones
        m.clipped_samples = int(stats.get("peak count", 0)) if at_full_scale else 0
        m.clipped = m.clipped_samples >= CLIPPED_MIN_SAMPLES
    dc = stats.get("dc offset")
    if dc is not None and math.isfinite(dc):
        m.dc_offset = round(dc, 6)
        m.dc_offset_flag = abs(dc) > DC_OFFSET_LIMIT
    if summary:
        block = summary[-1]
        i = _INTEGRATED.search(block)
        tp = _TRUE_PEAK.search(block)
        m.lufs = _finite(_num(i.group(1))) if i else None
        m.true_peak_db = _finite(_num(tp.group(1))) if tp else None
    m.silence_seconds, m.silence_ratio = _silence(stderr, m.duration)
    return m


def _silence(stderr: str, duration: float | None) -> tuple[float | None, float | None]:
    total, start = 0.0, None
    for kind, value in _SILENCE.findall(stderr):
        t = _num(value)
        if kind == "start":
            start = t
        elif start is not None:
            total += max(0.0, t - start)
            start = None
        # an end without its start: the log's head was cut off; count what is visible
    if start is not None and duration is not None:
        total += max(0.0, duration - start)  # older FFmpeg prints no end for silence at EOF
    if duration is None or duration <= 0:
        return round(total, 4), None
    total = min(total, duration)
    return round(total, 4), round(total / duration, 4)


# ---------------------------------------------------------------------------------------------
# Quality filters

def quality_reasons(request: "JobRequest", m: AudioMeasurements | None, duration_out: float | None) -> list[str]:
    """Every filter of request.quality this file fails (empty: it passes)."""
    q = request.quality
    checks = []
    duration = duration_out if duration_out is not None else (m.duration if m else None)
    if q.min_seconds is not None:
        checks.append(("too_short", duration, lambda d: d < q.min_seconds))
    if q.max_seconds is not None:
        checks.append(("too_long", duration, lambda d: d > q.max_seconds))
    if q.max_silence_ratio is not None:
        checks.append(("too_silent", m.silence_ratio if m else None, lambda s: s > q.max_silence_ratio))
    if q.min_lufs is not None:
        checks.append(("too_quiet", m.lufs if m else None, lambda v: v < q.min_lufs))
    if q.max_lufs is not None:
        checks.append(("too_loud", m.lufs if m else None, lambda v: v > q.max_lufs))
    if q.reject_clipped:
        checks.append(("clipped", m.clipped if m else None, bool))
    reasons: list[str] = []
    for reason, value, fails in checks:
        if value is None:
            # a filter that cannot be checked must not let the file through unseen
            if "not_measured" not in reasons:
                reasons.append("not_measured")
        elif fails(value):
            reasons.append(reason)
    return reasons


def _describe(reason: str, request: "JobRequest", m: AudioMeasurements | None, duration: float | None) -> str:
    q = request.quality
    m = m or AudioMeasurements()
    return {
        "too_short": f"lasts {duration} s < min_seconds {q.min_seconds}",
        "too_long": f"lasts {duration} s > max_seconds {q.max_seconds}",
        "too_silent": f"silence ratio {m.silence_ratio} > max_silence_ratio {q.max_silence_ratio}",
        "too_quiet": f"loudness {m.lufs} LUFS < min_lufs {q.min_lufs}",
        "too_loud": f"loudness {m.lufs} LUFS > max_lufs {q.max_lufs}",
        "clipped": f"{m.clipped_samples} samples at full scale",
        "not_measured": "a quality filter is set but FFmpeg's log had no measurement for it",
    }[reason]


def apply_quality(request: "JobRequest", stderr: str, result: "ItemResult") -> bool:
    """Attach the measurements to result.extra['audio'] and judge the file against request.quality.

    Sets result.status to rejected (reason: the first failed filter; extra['rejected_for']: all of
    them) when a filter fails. Returns whether the output should be stored.
    """
    from ffleet.results import REJECTED

    m = parse_measurements(stderr)
    if m is not None:
        result.extra["audio"] = m.to_dict()
    reasons = quality_reasons(request, m, result.duration_out)
    if not reasons:
        return True
    result.status = REJECTED
    result.reason = reasons[0]
    result.extra["rejected_for"] = reasons
    duration = result.duration_out if result.duration_out is not None else m.duration if m else None
    result.detail = "; ".join(_describe(r, request, m, duration) for r in reasons)
    if not request.quality.keep_rejected:
        result.bytes_out = None  # nothing was stored
    return request.quality.keep_rejected
