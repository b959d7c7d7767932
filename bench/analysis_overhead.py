"""Extra CPU of the audio measurements (ffleet.audio_quality): the same conversions with and without them.

Runs each conversion five ways, interleaved in rotating order so machine load hits all alike, and
prints the CPU-time ratios (FFmpeg's own CPU time from wait4):
  no analysis;
  measure_at output (the default), true_peak false and true;
  measure_at source, true_peak false and true.
With --worker it times the whole worker per file instead (ffleet.worker.process_item: FFmpeg plus
the ffprobe that verifies the output), which is what a Batch job pays per file. --source mp3 makes
the inputs 128 kb/s MP3 (a compressed source costs more to decode) instead of 16-bit WAV.
With --breakdown it times the output tap's parts instead: the tap with no filter (split, convert,
null sink), each analysis filter alone on the tap, and the whole chain. Usage:
    python bench/analysis_overhead.py [--files 8] [--seconds 60] [--rounds 3] [--options "-ac 1 -ar 16000"]
                                      [--ext .flac] [--source wav|mp3] [--worker | --breakdown]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ffleet.audio_quality import analysis_filter_parts, analysis_filters  # noqa: E402
from ffleet.demo import FORMATS  # noqa: E402
from ffleet.ffmpeg import find_binaries, run_process  # noqa: E402
from ffleet.sandbox import Confinement  # noqa: E402
from ffleet.request import parse_request  # noqa: E402
from ffleet.storage import ListedObject  # noqa: E402
from ffleet.worker import WorkContext, process_item  # noqa: E402

# name, label, quality.measure, quality.true_peak, quality.measure_at
VARIANTS = [
    ("plain", "no analysis", False, True, "output"),
    ("output_sample_peak", "output, true_peak false", True, False, "output"),
    ("output_true_peak", "output, true_peak (default)", True, True, "output"),
    ("source_sample_peak", "source, true_peak false", True, False, "source"),
    ("source_true_peak", "source, true_peak", True, True, "source"),
]


def make_inputs(folder: Path, files: int, seconds: float, source: str = "wav") -> list[Path]:
    """Speech-like test audio: a tone with noise, 44.1 kHz stereo, as s16 WAV or 128 kb/s MP3."""
    ff = find_binaries().ffmpeg
    paths = []
    for i in range(files):
        p = folder / f"in{i}.{source}"
        expr = f"0.3*sin(2*PI*{200 + 37 * i}*t)*(0.5+0.5*sin(2*PI*0.7*t))+0.05*(random(0)-0.5)"
        run_process([ff, "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                     f"aevalsrc='{expr}|{expr}':s=44100:d={seconds}",
                     *FORMATS["." + source],
                     "-y", str(p)], timeout=300, confinement=Confinement(write=(str(folder),)))
        paths.append(p)
    return paths


def context(folder: Path, options: str, ext: str, measure: bool, true_peak: bool = True, at: str = "output"
            ) -> WorkContext:
    out = folder / f"out-{measure}-{true_peak}-{at}"
    req = parse_request({"name": "bench", "input": {"path": str(folder / "in")},
                         "output": {"path": str(out), "file_options": options, "extension": ext, "overwrite": True},
                         "quality": {"measure": measure, "true_peak": true_peak, "measure_at": at}})
    return WorkContext.for_request(req, work_dir=folder)


def breakdown_chains() -> list[tuple[str, str, str]]:
    """(name, label, analysis chain) for --breakdown: each filter alone on the tap, then the whole chain."""
    sample, true = analysis_filter_parts(true_peak=False), analysis_filter_parts(true_peak=True)
    return [
        ("tap_only", "tap, no filter", ""),
        ("astats", "tap + astats", sample["astats"]),
        ("ebur128_sample_peak", "tap + ebur128, sample peak", sample["ebur128"]),
        ("ebur128_true_peak", "tap + ebur128, true peak", true["ebur128"]),
        ("silencedetect", "tap + silencedetect", sample["silencedetect"]),
        ("all_sample_peak", "tap + all, sample peak", analysis_filters(true_peak=False)),
        # the floor for any analyser outside FFmpeg: the tapped audio written out as raw PCM
        ("pcm_output", "tap as a raw PCM output", PCM_OUTPUT),
    ]


PCM_OUTPUT = "<pcm output>"


def with_chain(argv: list[str], chain: str) -> list[str]:
    """The measuring argv with its analysis chain replaced by `chain` ("" leaves the tap's null sink
    alone; PCM_OUTPUT sends the tapped audio to a second output, raw 16-bit PCM into /dev/null)."""
    full = analysis_filters(true_peak=False)
    i = next((n for n, arg in enumerate(argv) if full + ",anullsink" in arg), None)
    if i is None:
        sys.exit("--breakdown: no argument holds the analysis chain; audio_quality has changed")
    if chain == PCM_OUTPUT:  # a graph with two open outputs: a -filter_complex (the bench's inputs have one audio stream)
        graph = "[0:a:0]" + argv[i].replace(full + ",anullsink", "anull[ffleet_pcm]")
        return [*argv[:i - 1], "-filter_complex", graph, "-map", "[ffleet_out]", *argv[i + 1:],
                "-map", "[ffleet_pcm]", "-c:a", "pcm_s16le", "-f", "s16le", "-y", os.devnull]
    return [*argv[:i], argv[i].replace(full + ",", chain + "," if chain else ""), *argv[i + 1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--options", default="-ac 1 -ar 16000")
    ap.add_argument("--ext", default=".flac")
    ap.add_argument("--source", choices=["wav", "mp3"], default="wav")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--worker", action="store_true", help="time process_item (FFmpeg + ffprobe) per file")
    how.add_argument("--breakdown", action="store_true", help="time each analysis filter alone on the output tap")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ffleet-bench-"))
    try:
        (folder / "in").mkdir()
        inputs = make_inputs(folder / "in", args.files, args.seconds, args.source)
        ways = [(name, context(folder, args.options, args.ext, measure, true_peak, at))
                for name, _, measure, true_peak, at in VARIANTS]
        for name, ctx in ways[1:3]:
            if ctx.measure_tap(inputs[0], folder / f"x{args.ext}") is None:
                sys.exit(f"{name}: these options fall back to measuring the source; nothing to compare")
        labels = {name: label for name, label, *_ in VARIANTS}
        chains: dict[str, str] = {}
        if args.breakdown:  # the plain conversion, then the sample-peak tap's argv with other chains
            chains = {name: chain for name, _, chain in breakdown_chains()}
            labels.update({name: label for name, label, _ in breakdown_chains()})
            ways = [ways[0]] + [(name, ways[1][1]) for name in chains]
        cpu = {name: 0.0 for name, _ in ways}
        for r in range(args.rounds):
            for i, src in enumerate(inputs):
                shift = (r * len(inputs) + i) % len(ways)
                for name, ctx in ways[shift:] + ways[:shift]:
                    if args.worker:
                        res = process_item(ctx, ListedObject(key=src.name))
                        if res.status != "succeeded":
                            sys.exit(f"worker failed ({name}): {res.reason} {res.detail}")
                    else:
                        argv = ctx.ffmpeg_argv(src, folder / f"out-{name}{args.ext}")
                        if name in chains:
                            argv = with_chain(argv, chains[name])
                        res = run_process(argv, timeout=600, confinement=Confinement(read=(str(src),), write=(str(folder),)))
                        if res.returncode != 0:
                            sys.exit(f"ffmpeg failed ({name}): {res.stderr[-500:]}")
                    cpu[name] += res.cpu_seconds
        audio_s = args.files * args.seconds * args.rounds
        what = "whole worker per file (FFmpeg + ffprobe)" if args.worker else "FFmpeg only"
        print(f"conversion: {args.source} 44.1 kHz stereo, {args.options!r} -> {args.ext}, "
              f"{args.files} files x {args.seconds:g} s x {args.rounds} rounds; {what}")
        for name, _ in ways:
            line = f"{labels[name]:28s} CPU {cpu[name]:7.2f} s  ({cpu[name] / audio_s * 3600:6.1f} s per audio hour)"
            if name != "plain":
                ratio = cpu[name] / cpu["plain"]
                line += f"  ratio {ratio:.3f} (extra CPU {100 * (ratio - 1):+.1f}%)"
            print(line)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
