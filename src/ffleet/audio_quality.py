"""Per-file audio measurements taken by the converting FFmpeg run itself, and the quality filters.

Where the measurement is taken (quality.measure_at):

"output" (the default): the audio as it is written. ffleet extends the output's own audio filter
(-af, or adds one): the user's chain, then the -ar/-ac conversion FFmpeg would do for the encoder,
then an asplit; one branch goes to the encoder, the other through the analysis filters into a null
sink:

    ffmpeg ... -i input <the user's output options> \
        -af "<user chain>,aformat@ffleet_format=sample_fmts=s16|s32:sample_rates=16000:channel_layouts=mono,
             asplit=2[ffleet_out][ffleet_measure];
             [ffleet_measure]aresample,aformat=s16,astats@ffleet_astats=...,ebur128@ffleet_ebur128=...,silencedetect=...,anullsink" \
        output.flac

  The graph's one open output feeds the encoder, so no -map is added: FFmpeg picks the streams it
  would have (the default audio stream, cover art, video). The converted audio is bit-identical to
  the unmeasured command's (a test decodes both and compares MD5s), and the analysis sees the
  samples the encoder gets: for a resample to 16 kHz mono that is 5.5x fewer samples than a
  44.1 kHz stereo source (bench/analysis_overhead.py). It is also what a training set is made of:
  clipping added by the conversion counts, and loudness is that of the file that is trained on.

  This is only done where it provably changes nothing else; output_tap() lists the cases (output
  -ss/-t/-to and frame limits, which act after the filters; a -map that could select several audio
  streams; a layout the rewrite does not spell; -c copy; an encoder it cannot look up, ...). Those
  fall back to "source".

"source": the decoded input stream, as a second output of the same run:

    ffmpeg ... -i input <user's output options> output.flac \
           -vn -sn -dn -af [atrim=<the user's output -ss/-t/-to>,]astats@...,ebur128@...,silencedetect=... -f null -

  (-vn -sn -dn and no -map: FFmpeg picks the audio stream by the rule it picked the converted one by;
  a user's -map 0:a:N is followed instead.)

  It judges the recording before any -af (a user normalising with loudnorm may want the filters to
  see the source), at the source's sample rate and channel count, so it costs several times more
  on a downmix/downsample conversion.

Either way FFmpeg decodes each input once; the analysis costs its filters, not a second decode.
Measurements record where they were taken ("measured_at"). Input codec, sample rate and channels
are the source's (FFmpeg's input listing); the record's own duration_out, sample_rate, channels and
codec describe the output (ffprobe).

ffmpeg's option policy forbids users to name outputs or use the null muxer; this module is ffleet
itself adding a sink that writes nothing.
"""
from __future__ import annotations

import functools
import math
import re
import subprocess
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ffleet import sandbox
from ffleet.ffmpeg import InputInfo, parse_input_info, parse_time
from ffleet.policy import option_pairs

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


def analysis_filter_parts(true_peak: bool = True, instance: str = "") -> dict[str, str]:
    """The analysis filters by name, in chain order (bench/analysis_overhead.py --breakdown times each).

    Named instances (name@id) make their log lines ours to parse; `instance` tells apart the chains
    of one run (one per segment: ffleet.segments).
    """
    return {
        # astats first, on the decoder's own sample format: integer full scale is then exact
        "astats": f"astats@ffleet_astats{instance}=metadata=0:measure_perchannel=none:"
                  "measure_overall=DC_offset+Peak_level+Peak_count+Number_of_samples",
        # framelog=verbose keeps ebur128's 10-lines-a-second log out of the info log
        "ebur128": f"ebur128@ffleet_ebur128{instance}=peak={'true' if true_peak else 'sample'}:framelog=verbose",
        # silencedetect logs under its class name, not the instance name: a silencedetect in the
        # user's own -af would be counted too (documented)
        "silencedetect": f"silencedetect=noise={SILENCE_NOISE_DB:g}dB:duration={SILENCE_MIN_SECONDS:g}",
    }


def analysis_filters(true_peak: bool = True) -> str:
    """The analysis chain: every part of analysis_filter_parts, in order."""
    return ",".join(analysis_filter_parts(true_peak).values())


def measuring(request: "JobRequest", tokens: dict[str, list[str]]) -> bool:
    """Whether this request's FFmpeg runs carry the analysis output.

    On when the request asks (quality.measure, or any quality filter). Off when the job is not about audio
    (require_audio false: a file without audio would make the extra output fail) or drops audio (-an).
    """
    q = request.quality
    return bool(q.measuring and request.processing.require_audio and "-an" not in tokens["output"])


def _audio_selection(output_tokens: list[str]) -> list[str]:
    """Which stream the source analysis reads: the audio stream the user maps, else FFmpeg's own pick.

    With no -map, the analysis output selects by the same rule that picked the converted output's
    audio stream (the default one, then the one with most channels); -vn/-sn/-dn keep it to audio.
    """
    maps = [value for flag, value in option_pairs(output_tokens) if flag == "-map" and value]
    for value in maps:
        m = re.match(r"^0:a(?::(\d+))?\??$", value)
        if m:
            return ["-map", f"0:a:{m.group(1) or 0}"]
    return ["-map", "0:a:0"] if maps else ["-vn", "-sn", "-dn"]


def _trim_filter(output_tokens: list[str]) -> str:
    """The user's output-side -ss/-t/-to as an atrim, so the measured span is the span that is written.

    Not as output options: FFmpeg applies those after the output's filters, at frame granularity,
    so the analysis filters would see up to a frame (~0.1 s) more than is written.
    """
    names = {"-ss": "start", "-t": "duration", "-to": "end"}
    opts = []
    for flag, value in option_pairs(output_tokens):
        seconds = parse_time(value) if flag in names and value is not None else None
        if seconds is not None:  # in seconds: a ':' would need escaping at two levels of filter syntax
            opts.append(f"{names[flag]}=" + f"{seconds:.6f}".rstrip("0").rstrip("."))
    return f"atrim@ffleet_trim={':'.join(opts)}," if opts else ""


def global_args(global_tokens: list[str]) -> list[str]:
    """`-loglevel info` when the user's -loglevel would hide the measurements (they are info lines)."""
    level = None
    for flag, value in option_pairs(global_tokens):
        if flag in ("-loglevel", "-v") and value is not None:
            level = value
    if level is None:
        return []
    # "repeat+level+warning" -> "warning"; "level" would prefix each line and break the parsers
    parts = [p.lstrip("+-") for p in level.split("+") if p]
    word = parts[-1] if parts else ""
    value = _LEVELS.get(word, int(word) if word.lstrip("-").isdigit() else 0)
    if value >= 32 and "level" not in parts:
        return []
    return ["-loglevel", "-level+info" if "level" in parts else "info"]


# Output options whose effect would differ once the analysis hangs off the audio chain: timing and
# frame limits act after the filters, at frame granularity, so the analysis would see more than is
# written; a layout the rewrite does not spell, or a complex graph, cannot be reproduced in it.
# (-frames:v too: with FFmpeg 6.0 here, a video stream reaching its limit ended the output, audio included.)
_TAP_BLOCKERS = {"-ss", "-t", "-to", "-sseof", "-frames", "-aframes", "-vframes", "-shortest", "-apad", "-async",
                 "-ch_layout", "-channel_layout", "-filter_complex", "-lavfi"}
_TAP_LAYOUTS = {"1": "mono", "2": "stereo"}
# The encoder FFmpeg picks when the user names none: the muxer's default audio codec, as FFmpeg
# resolves it (libopus, not the experimental native opus). Containers not listed fall back to source.
_DEFAULT_ENCODERS = {"flac": "flac", "wav": "pcm_s16le", "w64": "pcm_s16le", "mp3": "libmp3lame", "opus": "libopus",
                     "ogg": "libvorbis", "oga": "libvorbis", "m4a": "aac", "m4b": "aac", "aac": "aac", "adts": "aac",
                     "ipod": "aac", "aif": "pcm_s16be", "aiff": "pcm_s16be", "mp4": "aac", "mov": "aac"}
_CODEC_FLAGS = {"-c", "-c:a", "-codec", "-codec:a", "-acodec", "-c:a:0", "-codec:a:0"}
_AUDIO_FILTER_FLAGS = ("-af", "-filter:a", "-filter:a:0")
# -map values that select one audio stream, and those that select only video (cover art included)
_ONE_AUDIO_MAP = re.compile(r"^0:a:\d+\??$")
_VIDEO_ONLY_MAP = re.compile(r"^0:[vV](?::\d+)?\??$")


@functools.lru_cache(maxsize=64)
def encoder_formats(ffmpeg: str, encoder: str) -> dict[str, str] | None:
    """The sample formats, rates and layouts an encoder accepts, as `ffmpeg -h encoder=` lists them.

    {"sample_fmts": "s16|s32", ...} with only the constraints the encoder has; None if FFmpeg does
    not know the encoder. Cached: asked once per encoder and binary.
    """
    try:
        res = subprocess.run([*sandbox.prefix(sandbox.Confinement()), ffmpeg, "-hide_banner", "-nostdin", "-h", f"encoder={encoder}"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=sandbox.child_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    # for a codec name, FFmpeg lists each encoder; the first is the one it uses
    block = re.search(r"^Encoder .*?(?=^Encoder |\Z)", res.stdout, re.M | re.S)
    if block is None:
        return None
    first = block.group(0)
    found = {}
    for key, label in (("sample_fmts", "sample formats"), ("sample_rates", "sample rates"),
                       ("channel_layouts", "channel layouts")):
        m = re.search(rf"^\s*Supported {label}:\s*(.+)$", first, re.M)
        if m:
            found[key] = "|".join(m.group(1).split())
    return found


@dataclass
class OutputTap:
    """The output options that measure the written audio: the user's, with the analysis in their -af."""

    args: list[str]  # the user's output options, the -af extended (or added)
    rate: int | None  # sample rate of the measured audio: -ar, or None when it is not known from the options
    rate_is_input: bool  # no -ar and no user chain: the measured rate is the input stream's


def output_tap(tokens: dict[str, list[str]], output_ext: str, true_peak: bool = True,
               ffmpeg: str = "ffmpeg", analysis: str | None = None) -> OutputTap | None:
    """The output-side analysis for these options, or None where it could change the output or measure
    anything but the one audio stream written (the caller then measures the source).

    analysis: the filters the tapped audio goes through (default: analysis_filters; ffleet.segments
    taps it for silencedetect alone).

    The analysis joins the output's own simple filtergraph (-af): the user's chain, then the same
    aformat FFmpeg appends for the output (the encoder's sample formats, rates and layouts, or the
    user's -sample_fmt/-ar/-ac), then an asplit whose second branch runs the analysis into a null
    sink. The graph's one open output feeds the encoder as before, so format negotiation, and with
    it every written sample, is the same as without the analysis; and since no -map is added,
    FFmpeg picks the streams it would have (the best audio stream, cover art, video).
    """
    out = tokens["output"]
    if any(t in ("-filter_complex", "-lavfi") for t in tokens["global"]):
        return None
    chain, rate, layout, muxer, encoder, sample_fmt = None, None, None, None, None, None
    audio_maps = video_maps = 0
    for flag, value in option_pairs(out):
        name = flag.split(":", 1)[0]
        if name in _TAP_BLOCKERS:
            return None
        if flag in _AUDIO_FILTER_FLAGS:
            if chain is not None or value is None or "[" in value or ";" in value:  # labels or a second -af
                return None
            chain = value
        elif name == "-filter" and not flag.startswith("-filter:v"):
            return None  # a filter for every stream, or per audio stream: not one chain we can extend
        elif flag == "-map":
            if _ONE_AUDIO_MAP.match(value or ""):
                audio_maps += 1
            elif _VIDEO_ONLY_MAP.match(value or ""):
                video_maps += 1
            else:
                return None  # could select several audio streams (0:a, 0), each with its own analysis
        elif name in ("-ar", "-ac") and flag not in ("-ar", "-ar:a", "-ac", "-ac:a"):
            return None  # a per-stream form we do not follow
        elif name == "-ar":
            if not (value or "").isdigit():
                return None
            rate = int(value)
        elif name == "-ac":
            layout = _TAP_LAYOUTS.get(value or "")
            if layout is None:
                return None
        elif flag == "-f":
            muxer = value
        elif flag in _CODEC_FLAGS:
            encoder = value
        elif flag in ("-sample_fmt", "-sample_fmt:a"):
            sample_fmt = value
        elif name in ("-c", "-codec", "-acodec", "-sample_fmt") and not flag.startswith(("-c:v", "-codec:v")):
            return None  # a per-stream form we do not follow
    if audio_maps > 1 or (video_maps and not audio_maps):  # several audio streams, or none
        return None
    encoder = encoder or _DEFAULT_ENCODERS.get(muxer or output_ext.lower().lstrip("."))
    if not encoder or encoder == "copy":  # stream copy decodes nothing; an unknown container: no table entry
        return None
    accepts = encoder_formats(ffmpeg, encoder)
    if accepts is None:
        return None
    # what FFmpeg's own output aformat would say (ffmpeg_filter.c: configure_output_audio_filter)
    constraints = {**accepts}
    if sample_fmt:
        constraints["sample_fmts"] = sample_fmt
    if rate:
        constraints["sample_rates"] = str(rate)
    if layout:
        constraints["channel_layouts"] = layout
    convert = ":".join(f"{k}={constraints[k]}" for k in ("sample_fmts", "sample_rates", "channel_layouts")
                       if k in constraints)
    steps = [s for s in (chain, f"aformat@ffleet_format={convert}" if convert else "",
                         "asplit=2[ffleet_out][ffleet_measure]") if s]
    # The branch carries whatever sample format FFmpeg negotiated (often float, before the encoder's
    # own conversion). Rendering it as 16-bit makes "at full scale" exact: a sample the conversion
    # pushed past full scale saturates there, as it does in a 16-bit output file.
    graph = (",".join(steps) + ";[ffleet_measure]aresample@ffleet_convert,aformat@ffleet_s16=sample_fmts=s16,"
             f"{analysis or analysis_filters(true_peak)},anullsink")
    if chain is None:
        args = [*out, "-af", graph]
    else:
        args, replaced = [], False
        for flag, value in option_pairs(out):
            if flag in _AUDIO_FILTER_FLAGS and not replaced:
                args += [flag, graph]
                replaced = True
            else:
                args += [flag] if value is None else [flag, value]
    # the measured rate is known from the options when -ar is given, or when nothing may resample
    return OutputTap(args=args, rate=rate, rate_is_input=rate is None and not chain and "sample_rates" not in constraints)


def analysis_args(tokens: dict[str, list[str]], true_peak: bool = True) -> list[str]:
    """The second output that measures the audio (appended after the converted output's path)."""
    return source_output(tokens["output"], analysis_filters(true_peak))


def source_output(output_tokens: list[str], filters: str) -> list[str]:
    """A second output that runs `filters` on the decoded input audio, trimmed as the output is.

    The atrim keeps the input's timestamps: times the filters log are on the input's timeline."""
    return [*_audio_selection(output_tokens), "-af", _trim_filter(output_tokens) + filters, "-f", "null", "-"]


# ---------------------------------------------------------------------------------------------
# Parsing FFmpeg's log

_NUM = r"(-?(?:inf|nan|\d+(?:\.\d+)?(?:e[-+]?\d+)?))"


@functools.lru_cache(maxsize=512)
def _instance_patterns(instance: str) -> tuple[re.Pattern, re.Pattern]:
    # FFmpeg 6 names the log context by the instance id ("ffleet_astats"), 5.x by "astats@ffleet_astats"
    astats = re.compile(rf"^\[(?:astats@)?ffleet_astats{instance} @ [^\]]+\] ([A-Za-z ]+): " + _NUM + r"\s*$", re.M | re.I)
    ebur = re.compile(rf"^\[(?:ebur128@)?ffleet_ebur128{instance} @ [^\]]+\] Summary:(.*?)(?=^\[|\Z)", re.M | re.S)
    return astats, ebur


_INTEGRATED = re.compile(r"Integrated loudness:\s*I:\s*" + _NUM + r" LUFS", re.I)
_TRUE_PEAK = re.compile(r"True peak:\s*Peak:\s*" + _NUM + r" dBFS", re.I)
_SILENCE = re.compile(r"^\[silencedetect @ [^\]]+\] silence_(start|end): " + _NUM, re.M)


def _num(text: str) -> float:
    return float(text)  # float() reads "inf", "-inf", "nan"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class AudioMeasurements:
    """What one file's analysis branch measured. None where FFmpeg printed nothing usable."""

    measured_at: str | None = None  # "output" (the audio as written) or "source" (the decoded input)
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


def parse_measurements(stderr: str, tap: OutputTap | None = None, duration_hint: float | None = None,
                       info: InputInfo | None = None, instance: str = "") -> AudioMeasurements | None:
    """Read the analysis branch's results from FFmpeg's log; None if none of them are there.

    tap: the OutputTap the run used (None: the source was measured). duration_hint: the output's
    duration, used for the silence share when the measured sample rate is unknown. info: the
    log's input section, if the caller has parsed it already. instance: the chain's name suffix
    (analysis_filter_parts); the silence figures then come from the caller, not from this log.
    """
    astats, ebur = _instance_patterns(instance)
    stats = {name.strip().lower(): _num(v) for name, v in astats.findall(stderr)}
    summary = ebur.findall(stderr)
    if not stats and not summary:
        return None
    m = AudioMeasurements(measured_at="output" if tap else "source")
    info = info or parse_input_info(stderr)
    m.codec, m.sample_rate, m.channels = info.audio_codec, info.sample_rate, info.channels
    rate = m.sample_rate if tap is None or tap.rate_is_input else tap.rate
    n = stats.get("number of samples")  # per channel
    if n is not None and rate:
        m.duration = round(n / rate, 4)
    elif duration_hint is not None:
        m.duration = round(duration_hint, 4)
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
    if not instance:
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


def apply_quality(request: "JobRequest", stderr: str, result: "ItemResult", tap: OutputTap | None = None,
                  info: InputInfo | None = None) -> bool:
    """Attach the measurements to result.extra['audio'] and judge the file against request.quality.

    Sets result.status to rejected (reason: the first failed filter; extra['rejected_for']: all of
    them) when a filter fails. Returns whether the output should be stored.
    """
    from ffleet.results import REJECTED

    m = parse_measurements(stderr, tap, result.duration_out, info)
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
