"""Segmented outputs (output.segment): the cut plan, the FFmpeg runs that cut and measure, the set's marker."""
from __future__ import annotations

import bisect
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffleet import audio_quality
from ffleet.ffmpeg import Binaries, ProcessRegistry, last_error_lines, parse_input_info, parse_time, run_process
from ffleet.keys import SEGMENT_DIGITS, segment_folder, segment_key
from ffleet.policy import option_pairs
from ffleet.results import FAILED, REJECTED, SUCCEEDED, ItemResult
from ffleet.sandbox import Confinement
from ffleet.storage import NotFound, Storage
from ffleet.verify import IN_PROCESS_PYAV, SANDBOXED_PYAV, MediaInfo, read_media, reader_name

if TYPE_CHECKING:
    from ffleet.request import JobRequest, SegmentSpec

# The set's marker, written after every piece: a re-run trusts a set only when its marker is there
# and names the same settings; a dot name keeps it out of audio-folder loaders' way.
MARKER_NAME = ".ffleet-segments.json"
# Codecs whose pieces are cut from decoded samples and encoded again: the same samples, cut exactly.
# Any other codec is cut without re-encoding (-c copy) at its packet boundaries.
LOSSLESS_CODECS = frozenset({"flac", "alac", "wavpack", "tta"})
# Pieces per cutting FFmpeg: each piece is an open output file; this keeps a run well under the
# usual 1,024 open files whatever the recording's length.
PIECES_PER_RUN = 200
# A piece's duration against its span: lossless pieces are exact (the container may round);
# copied pieces end on a packet boundary and carry the codec's padding (mp3 ~50 ms, AAC priming).
LOSSLESS_TOLERANCE = 0.02
LOSSY_TOLERANCE = 0.15


def is_lossless(codec: str | None) -> bool:
    return bool(codec) and (codec in LOSSLESS_CODECS or codec.startswith("pcm_"))


# ---------------------------------------------------------------------------------------------
# Where to cut


def silence_filter(seg: "SegmentSpec") -> str:
    return f"silencedetect=noise={seg.silence_db:g}dB:duration={seg.min_silence_seconds:g}"


def silence_args(output_tokens: list[str], seg: "SegmentSpec") -> list[str]:
    """Where the output tap cannot be used: the converting run's second output that finds the pauses
    in the decoded input, trimmed as the output is (several times the samples of a downmix/resample)."""
    return audio_quality.source_output(output_tokens, silence_filter(seg))


def parse_silences(stderr: str, output_tokens: list[str], duration: float) -> list[tuple[float, float]]:
    """The pauses silence_args found, as (start, end) on the output's timeline (0 .. duration)."""
    offset = 0.0
    for flag, value in option_pairs(output_tokens):
        if flag == "-ss" and value is not None:
            offset += parse_time(value) or 0.0  # the atrim keeps the input's timestamps
    found, start = [], None
    for kind, value in audio_quality._SILENCE.findall(stderr):
        t = float(value) - offset
        if kind == "start":
            start = t
        elif start is not None:
            found.append((max(0.0, start), min(duration, t)))
            start = None
    if start is not None:  # a pause that runs to the end (older FFmpeg prints no end for it)
        found.append((max(0.0, start), duration))
    return [(a, b) for a, b in found if b > a]


@dataclass
class Plan:
    """Pieces as [start, end) sample positions of the output; `dropped`: spans no piece holds."""

    rate: int
    pieces: list[tuple[int, int]]
    dropped: list[tuple[int, int]]


def plan(total: int, rate: int, silences: list[tuple[float, float]], seg: "SegmentSpec") -> Plan:
    """Cut `total` samples into pieces of at most max_seconds (the rule is documented in the README).

    While more than max_seconds remain, the next cut goes in the middle of the last pause that
    starts within max_seconds (at max_seconds itself if the pause runs past it), skipping pauses
    that would leave a piece shorter than min_seconds on either side. With no such pause, or with
    at_silence false, it goes at max_seconds, or earlier if that would leave less than min_seconds
    after it. A last piece that is still shorter than min_seconds cannot join the piece before it
    (together they would pass max_seconds) and is dropped, as is a whole input shorter than min_seconds.
    """
    max_n, min_n = round(seg.max_seconds * rate), max(1, round(seg.min_seconds * rate))
    pauses = sorted((round(a * rate), round(b * rate)) for a, b in silences) if seg.at_silence else []
    starts = [a for a, _ in pauses]
    pieces: list[tuple[int, int]] = []
    pos = 0
    while total - pos > max_n:
        limit = pos + max_n
        cut = None
        for i in range(bisect.bisect_right(starts, limit) - 1, -1, -1):
            a, b = pauses[i]
            if a <= pos:
                break
            middle = min((a + b) // 2, limit)
            if middle - pos >= min_n and total - middle >= min_n:
                cut = middle
                break
        if cut is None:
            cut = limit if total - limit >= min_n or total - min_n - pos < min_n else total - min_n
        pieces.append((pos, cut))
        pos = cut
    pieces.append((pos, total))
    dropped = []
    if pieces[-1][1] - pieces[-1][0] < min_n:
        dropped.append(pieces.pop())
    return Plan(rate, pieces, dropped)


# ---------------------------------------------------------------------------------------------
# Cutting and measuring


def _groups(n: int) -> list[range]:
    return [range(i, min(n, i + PIECES_PER_RUN)) for i in range(0, n, PIECES_PER_RUN)]


def _split_graph(spans: list[tuple[int, int]], total: int, source: str) -> tuple[str, list[str], list[str]]:
    """asegment of `source` into the contiguous spans: (graph, the spans' labels, labels of the rest).

    The rest: [before the first span] and [after the last]; the caller sinks or maps them."""
    points = ([spans[0][0]] if spans[0][0] > 0 else []) + [end for _, end in spans if end < total]
    labels = [f"[p{i}]" for i in range(len(spans))]
    before = ["[before]"] if spans[0][0] > 0 else []
    after = ["[after]"] if spans[-1][1] < total else []
    if not points:
        return f"{source}anull{labels[0]}", labels, []
    return f"{source}asegment=samples={'|'.join(map(str, points))}{''.join(before + labels + after)}", labels, before + after


def _muxer(output_tokens: list[str]) -> list[str]:
    fmt = next((v for flag, v in option_pairs(output_tokens) if flag == "-f" and v), None)
    return ["-f", fmt] if fmt else []


# Output options that already acted on the audio the whole output holds (filters, timing, stream
# selection, rate and layout), or that name the codec: not given again when a piece is encoded.
_APPLIED = {"-af", "-filter", "-filter_complex", "-lavfi", "-ss", "-t", "-to", "-sseof", "-map", "-frames", "-aframes",
            "-vframes", "-shortest", "-apad", "-async", "-ar", "-ac", "-ch_layout", "-channel_layout", "-c", "-codec",
            "-acodec", "-f"}


def encoder_options(output_tokens: list[str]) -> list[str]:
    """The user's output options a lossless piece is encoded with: the encoder's own (FLAC's
    -compression_level, -sample_fmt, metadata, ...), so a piece is encoded as the whole output was."""
    kept: list[str] = []
    for flag, value in option_pairs(output_tokens):
        if flag.split(":", 1)[0] not in _APPLIED:
            kept += [flag] if value is None else [flag, value]
    return kept


def cut_lossless_argv(ffmpeg: str, guard: list[str], dst: Path, codec: str, output_tokens: list[str],
                      spans: list[tuple[int, int]], total: int, first: int, folder: Path, ext: str) -> list[str]:
    """One FFmpeg that decodes the output once and writes each span as its own file, cut at its exact samples."""
    graph, labels, rest = _split_graph(spans, total, "[0:a]")
    graph += "".join(f";{label}anullsink" for label in rest)
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-nostats", *guard, "-i", str(dst), "-filter_complex", graph]
    encode = [*encoder_options(output_tokens), "-c:a", codec, *_muxer(output_tokens)]
    for i, label in enumerate(labels):
        argv += ["-map", label, *encode, "-y", str(folder / f"{first + i:0{SEGMENT_DIGITS}d}{ext}")]
    return argv


def cut_copy_argv(ffmpeg: str, guard: list[str], dst: Path, muxer: list[str], times: list[float], folder: Path,
                  ext: str) -> list[str]:
    """One FFmpeg that copies the output's packets into pieces, a new piece at the first packet at or after each time."""
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-nostats", *guard, "-i", str(dst), "-map", "0:a:0", "-c", "copy",
            "-f", "segment", "-reset_timestamps", "1", "-segment_list", str(folder / "pieces.csv"),
            "-segment_list_type", "csv"]
    if muxer:
        argv += ["-segment_format", muxer[1]]
    if times:
        argv += ["-segment_times", ",".join(f"{t:.6f}" for t in times)]
    return [*argv, "-y", str(folder / f"%0{SEGMENT_DIGITS}d{ext}")]


def analysis_argv(ffmpeg: str, guard: list[str], dst: Path, spans: list[tuple[int, int]], total: int, first: int,
                  true_peak: bool) -> list[str]:
    """One FFmpeg that measures each span as audio_quality does a file (the first run also finds the
    output's silences, with audio_quality's thresholds, for the per-piece silence share)."""
    with_silence = first == 0
    source = "[whole]" if with_silence else "[0:a]"
    graph, labels, rest = _split_graph(spans, total, source)
    if with_silence:
        graph = (f"[0:a]asplit=2[whole][quiet];[quiet]silencedetect=noise={audio_quality.SILENCE_NOISE_DB:g}dB:"
                 f"duration={audio_quality.SILENCE_MIN_SECONDS:g}[silence];" + graph)
    mapped = "[silence]" if with_silence else "[before]"
    graph += "".join(f";{label}anullsink" for label in rest if label != mapped)
    for i, label in enumerate(labels):
        parts = audio_quality.analysis_filter_parts(true_peak, instance=f"_{first + i}")
        graph += f";{label}aresample,aformat=sample_fmts=s16,{parts['astats']},{parts['ebur128']},anullsink"
    return [ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", *guard, "-i", str(dst),
            "-filter_complex", graph, "-map", mapped, "-f", "null", "-"]


def read_pieces(paths: list[Path], guard: list[str], binaries: Binaries, registry: ProcessRegistry,
                timeout: float, verifiers=None) -> tuple[list[MediaInfo | None], float]:
    """Each piece's streams and duration, and the CPU it took to read them.

    With the verifier (or PyAV), each piece is read as any output is. Otherwise one FFmpeg opens
    every piece as an input, under the input guard, and its log describes them all: ffprobe once
    per piece cost 5 ms of CPU each with the static build and 84 ms with Debian's
    (bench/segment_cost.py). Durations in that log are to 10 ms.
    """
    if verifiers is not None and reader_name() in (IN_PROCESS_PYAV, SANDBOXED_PYAV):
        # the sandboxed verifier (the default) reads a piece for about a millisecond, to the sample
        backs = [read_media(p, guard, binaries, registry, verifiers) for p in paths]
        return [None if b.fault else b.info for b in backs], sum(b.cpu_seconds for b in backs)
    argv = [binaries.ffmpeg, "-hide_banner", "-nostdin"]
    for p in paths:
        argv += [*guard, "-i", str(p)]
    # no output: FFmpeg describes each input as it opens it, then stops ("at least one output ...")
    run = run_process(argv, timeout=timeout, registry=registry,
                      confinement=Confinement(read=tuple(dict.fromkeys(str(p.parent) for p in paths))))
    infos: list[MediaInfo | None] = [None] * len(paths)
    for block in re.split(r"(?m)^(?=Input #\d+, )", run.stderr):
        m = re.match(r"Input #(\d+), ", block)
        if m and int(m.group(1)) < len(paths):
            i = int(m.group(1))
            # as if it were the only input: parse_input_info reads "Input #0" and its "Stream #0:N" lines
            alone = re.sub(r"(?m)^(\s*)Stream #\d+:", r"\1Stream #0:", "Input #0" + block[len(m.group(0)) - 2:])
            info = parse_input_info(alone)
            infos[i] = MediaInfo(stream_types=info.stream_types, duration=info.duration, codec=info.audio_codec,
                                 sample_rate=info.sample_rate, channels=info.channels)
    return infos, run.cpu_seconds


def _overlap(silences: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in silences)


def _copy_spans(folder: Path, rate: int) -> list[tuple[int, int]]:
    """The spans the segment muxer actually cut (its CSV list: name, start, end in seconds)."""
    with open(folder / "pieces.csv", newline="") as f:
        return [(round(float(row[1]) * rate), round(float(row[2]) * rate)) for row in csv.reader(f) if len(row) >= 3]


# ---------------------------------------------------------------------------------------------
# The set in the output store


def settings(request: "JobRequest") -> dict[str, Any]:
    """What a stored set was made with: a set made otherwise is rebuilt, not kept."""
    return {
        "segment": request.output.segment.to_json_dict(),
        "options": [request.global_.options, request.input.file_options, request.output.file_options],
        "quality": request.quality.to_json_dict(),
    }


def _is_piece_name(name: str, ext: str) -> bool:
    return bool(re.fullmatch(rf"\d{{{SEGMENT_DIGITS}}}{re.escape(ext)}", name))


def finished(store: Storage, out_key: str, request: "JobRequest") -> dict[str, Any] | None:
    """The stored set's marker if the set is whole (every piece it names is there, at its size) and
    was made with this request's settings; else None (the set is rebuilt)."""
    folder, _ = segment_folder(out_key)
    try:
        marker = json.loads(store.read_bytes(folder + MARKER_NAME))
    except (NotFound, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("settings") != settings(request):
        return None
    sizes = {o.key: o.size for o in store.list(folder)}
    for piece in marker.get("segments") or []:
        if piece.get("stored") and sizes.get(piece["key"]) != piece.get("bytes_out"):
            return None
    return marker


def _recorded_pieces(store: Storage, folder: str, ext: str) -> list[str]:
    """The piece keys the folder's marker says ffleet stored there: a finished set's stored pieces,
    or every key a rebuild that never finished may have left. Only piece names directly in the
    folder count, whatever a marker (an object anyone with write access could edit) says."""
    try:
        marker = json.loads(store.read_bytes(folder + MARKER_NAME))
    except (NotFound, ValueError):
        return []
    if not isinstance(marker, dict):
        return []
    if marker.get("rebuilding"):
        keys = marker.get("keys") or []
    else:
        keys = [p.get("key") for p in marker.get("segments") or [] if isinstance(p, dict) and p.get("stored")]
    return [k for k in keys if isinstance(k, str) and k.startswith(folder) and _is_piece_name(k[len(folder):], ext)]


def _replace_set(store: Storage, folder: str, ext: str, pieces: list[tuple[Path, str]]) -> None:
    """Store the new pieces and remove the pieces of the set they replace, and only those.

    Why not every piece-named file of the folder: the folder may hold files ffleet did not write
    (a user's 00001.wav, or another input of the same run when outputs share the inputs' bucket).
    Until the new marker is written, a "rebuilding" marker names every key this set and the one
    before it may leave, so a run that dies half-way leaves nothing a later run cannot clean up."""
    earlier = _recorded_pieces(store, folder, ext)
    new = [key for _, key in pieces]
    rebuilding = {"rebuilding": True, "keys": sorted(set(earlier) | set(new))}
    store.write_bytes(folder + MARKER_NAME, json.dumps(rebuilding).encode(), "application/json")
    for path, key in pieces:
        store.store(path, key)
    for key in sorted(set(earlier) - set(new)):
        store.delete(key)


# ---------------------------------------------------------------------------------------------
# One input


def cut_and_store(*, request: "JobRequest", tokens: dict[str, list[str]], binaries: Binaries, registry: ProcessRegistry,
                  guard: list[str], store: Storage, slot: Path, dst: Path, out_key: str, out: MediaInfo,
                  convert_stderr: str, result: ItemResult, measuring: bool, verifiers=None) -> None:
    """Cut the verified full output `dst` into the set of out_key, verify, measure and store it.

    Fills result: status, output_key (the folder), bytes_out and duration_out (the stored pieces'),
    and extra["segments"]."""
    seg = request.output.segment
    folder_key, ext = segment_folder(out_key)
    result.output_key = folder_key
    timeout = request.processing.timeout_seconds_per_file
    rate = out.sample_rate
    if not rate or not out.duration:
        result.status, result.reason = FAILED, "invalid_output"
        result.detail = "the output's sample rate or duration is unknown, so it cannot be cut into segments"
        return
    total = round(out.duration * rate)
    silences = parse_silences(convert_stderr, tokens["output"], out.duration) if seg.at_silence else []
    cut = plan(total, rate, silences, seg)
    if len(cut.pieces) > 10 ** SEGMENT_DIGITS:  # the names have five digits (docs/contracts.md)
        result.status, result.reason = FAILED, "invalid_output"
        result.detail = (f"cutting it at output.segment.max_seconds={seg.max_seconds:g} makes {len(cut.pieces)} "
                         f"segments; at most {10 ** SEGMENT_DIGITS} are named: raise max_seconds")
        return
    pieces_dir = slot / "pieces"
    pieces_dir.mkdir()
    confinement = Confinement(read=(str(dst),), write=(str(pieces_dir),),
                              max_output_bytes=request.processing.max_output_bytes)
    lossless = is_lossless(out.codec)
    spans = cut.pieces
    if cut.pieces:
        if lossless:
            runs = [cut_lossless_argv(binaries.ffmpeg, guard, dst, out.codec, tokens["output"],
                                      spans[g.start:g.stop], total, g.start, pieces_dir, ext) for g in _groups(len(spans))]
        else:
            times = [start / rate for start, _ in spans[1:]] + [d[0] / rate for d in cut.dropped]
            runs = [cut_copy_argv(binaries.ffmpeg, guard, dst, _muxer(tokens["output"]), times, pieces_dir, ext)]
        for argv in runs:
            run = run_process(argv, timeout=timeout, registry=registry, confinement=confinement)
            result.cpu_seconds += run.cpu_seconds
            if run.returncode != 0 or run.timed_out:
                result.status, result.reason = FAILED, "timeout" if run.timed_out else "ffmpeg_error"
                result.detail = "cutting into segments: " + (last_error_lines(run.stderr) or f"ffmpeg exited {run.returncode}")
                return
        if not lossless:  # where the packets fell: the pieces' spans, and the dropped piece's after them
            cut_spans = _copy_spans(pieces_dir, rate)
            spans, cut.dropped = cut_spans[:len(cut.pieces)], cut_spans[len(cut.pieces):] or cut.dropped
    records: list[dict[str, Any]] = []
    problem = _verify_pieces(cut, spans, pieces_dir, ext, guard, binaries, registry, result, records, lossless,
                             out.duration, timeout, verifiers)
    if problem:
        result.status, result.reason, result.detail = FAILED, "invalid_output", problem
        return
    if measuring and spans:
        problem = _measure_pieces(request, binaries, registry, guard, dst, spans, total, rate, confinement, result, records)
        if problem:
            result.status, result.reason, result.detail = FAILED, "ffmpeg_error", problem
            return
    keep_rejected = request.quality.keep_rejected
    to_store = []
    for rec in records:
        rec["key"] = segment_key(folder_key, rec["index"], ext)
        rec["stored"] = not rec.get("rejected_for") or keep_rejected
        if rec["stored"]:
            to_store.append((pieces_dir / f"{rec['index']:0{SEGMENT_DIGITS}d}{ext}", rec["key"]))
    _replace_set(store, folder_key, ext, to_store)
    marker = {"settings": settings(request), "segments": records,
              "dropped": [{"start": round(a / rate, 6), "end": round(b / rate, 6)} for a, b in cut.dropped]}
    store.write_bytes(folder_key + MARKER_NAME, json.dumps(marker).encode(), "application/json")
    describe(result, marker)


def describe(result: ItemResult, marker: dict[str, Any]) -> None:
    """The record's segment fields, from a set's marker (a new set's, or a skipped one's)."""
    pieces = marker.get("segments") or []
    stored = [p for p in pieces if p.get("stored")]
    # a piece that was not stored (rejected) keeps the key it would have had, and no bytes_out
    order = ("index", "key", "start", "end", "duration", "bytes_out", "audio", "rejected_for")
    result.extra["segments"] = [{k: p[k] for k in order if k in p and (p.get("stored") or k != "bytes_out")}
                                for p in pieces]
    if marker.get("dropped"):
        result.extra["segments_dropped"] = marker["dropped"]
    result.bytes_out = sum(p["bytes_out"] for p in stored)
    result.duration_out = round(sum(p["duration"] for p in stored), 4)
    if pieces and any(not p.get("rejected_for") for p in pieces):
        result.status = SUCCEEDED
        return
    # nothing passed: the input counts as rejected, for the first reason of its first piece
    result.status = REJECTED
    reasons = list(dict.fromkeys(r for p in pieces for r in p.get("rejected_for") or [])) or ["too_short"]
    result.reason = reasons[0]
    result.extra["rejected_for"] = reasons
    result.detail = (f"every one of its {len(pieces)} segments was rejected" if pieces
                     else "shorter than output.segment.min_seconds: no segment")


def _verify_pieces(cut: Plan, spans: list[tuple[int, int]], pieces_dir: Path, ext: str, guard: list[str],
                   binaries: Binaries, registry: ProcessRegistry, result: ItemResult, records: list[dict[str, Any]],
                   lossless: bool, duration: float, timeout: float, verifiers=None) -> str | None:
    """Each piece opens, holds audio and lasts its span; together with the dropped spans they last the output."""
    if len(spans) != len(cut.pieces):
        return f"the output was cut into {len(spans)} pieces, {len(cut.pieces)} planned"
    rate = cut.rate
    total = 0.0
    paths = [pieces_dir / f"{index:0{SEGMENT_DIGITS}d}{ext}" for index in range(len(spans))]
    for index, path in enumerate(paths):
        if not path.is_file() or path.stat().st_size == 0:
            return f"segment {index} was not written"
    infos: list[MediaInfo | None] = []
    for g in _groups(len(paths)):  # each piece is an open input: as many at once as a cutting run writes
        # lossy pieces cut at packets carry no length header (an MP3's Xing frame): libav without a
        # decoder estimates their length from the bitrate, 0.2 s off on a 2 s piece; FFmpeg's log is not
        group, cpu = read_pieces(paths[g.start:g.stop], guard, binaries, registry, timeout,
                                 verifiers if lossless else None)
        infos += group
        result.cpu_seconds += cpu
    for index, ((start, end), (p_start, p_end), info, path) in enumerate(zip(spans, cut.pieces, infos, paths)):
        if info is None or not info.has_audio or not info.duration:
            return f"segment {index} does not read back as audio"
        planned = (p_end - p_start) / rate
        tolerance = LOSSLESS_TOLERANCE if lossless else LOSSY_TOLERANCE + 0.01 * planned
        if abs(info.duration - planned) > tolerance:
            return f"segment {index} lasts {info.duration:.3f} s, planned {planned:.3f} s (+/- {tolerance:.2f} s)"
        # a lossless piece holds exactly its span; a copied one lasts what its packets do
        seconds = (end - start) / rate if lossless else info.duration
        total += seconds
        records.append({"index": index, "start": round(start / rate, 6), "end": round(end / rate, 6),
                        "duration": round(seconds, 6), "bytes_out": path.stat().st_size})
    total += sum(b - a for a, b in cut.dropped) / rate
    tolerance = 0.5 + 0.02 * duration
    if spans and abs(total - duration) > tolerance:
        return f"the segments last {total:.3f} s together, the output {duration:.3f} s (+/- {tolerance:.2f} s)"
    return None


def _measure_pieces(request: "JobRequest", binaries: Binaries, registry: ProcessRegistry, guard: list[str], dst: Path,
                    spans: list[tuple[int, int]], total: int, rate: int, confinement: Confinement, result: ItemResult,
                    records: list[dict[str, Any]]) -> str | None:
    """Measure every piece and apply request.quality to it (audio, rejected_for in its record)."""
    tap = audio_quality.OutputTap(args=[], rate=rate, rate_is_input=False)
    silences: list[tuple[float, float]] = []
    for g in _groups(len(spans)):
        argv = analysis_argv(binaries.ffmpeg, guard, dst, spans[g.start:g.stop], total, g.start, request.quality.true_peak)
        run = run_process(argv, timeout=request.processing.timeout_seconds_per_file, registry=registry,
                          stderr_limit=audio_quality.ANALYSIS_STDERR_LIMIT, confinement=confinement)
        result.cpu_seconds += run.cpu_seconds
        if run.returncode != 0 or run.timed_out:
            return "measuring the segments: " + (last_error_lines(run.stderr) or f"ffmpeg exited {run.returncode}")
        info = parse_input_info(run.stderr)
        if g.start == 0:
            silences = parse_silences(run.stderr, [], total / rate)
        for i in g:
            rec = records[i]
            m = audio_quality.parse_measurements(run.stderr, tap, rec["duration"], info, instance=f"_{i}")
            if m is not None:
                span = rec["end"] - rec["start"]
                quiet = _overlap(silences, rec["start"], rec["end"])
                m.silence_seconds = round(quiet, 4)
                m.silence_ratio = round(min(1.0, quiet / span), 4) if span > 0 else None
                rec["audio"] = m.to_dict()
            reasons = audio_quality.quality_reasons(request, m, rec["duration"])
            if reasons:
                rec["rejected_for"] = reasons
    return None
