"""CPU of a segmented conversion (output.segment) against the plain conversion of the same long files.

Runs the worker (ffleet.worker.process_item: FFmpeg, the cut, ffprobe on every output, the store) on
each file several ways, interleaved in rotating order so machine load hits all alike, and prints
the CPU-time ratios to the plain conversion (CPU from wait4 of every FFmpeg/ffprobe a file ran):
  plain conversion; segmented at pauses; segmented at fixed length;
  and, with measurements, plain + quality.measure against segmented + quality.measure.
The inputs are speech-like: tone bursts of 2-9 s with pauses of 0.4-1.2 s between them, 44.1 kHz
stereo WAV. Usage:
    python bench/segment_cost.py [--files 4] [--seconds 300] [--rounds 2] [--options "-ac 1 -ar 16000"]
                                 [--ext .flac] [--max-seconds 30]
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ffleet.ffmpeg import find_binaries, run_process  # noqa: E402
from ffleet.request import parse_request  # noqa: E402
from ffleet.sandbox import Confinement  # noqa: E402
from ffleet.storage import ListedObject  # noqa: E402
from ffleet.worker import WorkContext, process_item  # noqa: E402

# name, label, output.segment (None: plain), quality.measure
VARIANTS = [
    ("plain", "plain conversion", None, False),
    ("pauses", "segmented at pauses", {"at_silence": True}, False),
    ("fixed", "segmented, fixed length", {"at_silence": False}, False),
    ("plain_measured", "plain + quality.measure", None, True),
    ("pauses_measured", "segmented at pauses + quality.measure", {"at_silence": True}, True),
]


def talk_expression(seconds: float, seed: int) -> str:
    """An aevalsrc expression: tone bursts ("utterances") of 2-9 s separated by pauses of 0.4-1.2 s."""
    rng = random.Random(seed)
    t, pauses = 0.0, []
    while t < seconds:
        t += rng.uniform(2, 9)
        gap = rng.uniform(0.4, 1.2)
        pauses.append(f"between(t,{t:.3f},{t + gap:.3f})")
        t += gap
    # sum of pauses in groups, as one long sum overflows FFmpeg's expression parser depth
    gate = "*".join(f"not({'+'.join(pauses[i:i + 20])})" for i in range(0, len(pauses), 20))
    return f"0.3*sin(2*PI*{200 + seed * 37}*t)*(0.6+0.4*sin(2*PI*3*t))*{gate}+0.002*(random(0)-0.5)"


def make_inputs(folder: Path, files: int, seconds: float) -> list[Path]:
    ff = find_binaries().ffmpeg
    paths = []
    for i in range(files):
        p = folder / f"talk{i}.wav"
        expr = talk_expression(seconds, i)
        run = run_process([ff, "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                           f"aevalsrc='{expr}|{expr}':s=44100:d={seconds}", "-c:a", "pcm_s16le", "-y", str(p)],
                          timeout=600, confinement=Confinement(write=(str(folder),)))
        if run.returncode != 0:
            sys.exit(f"could not generate {p}: {run.stderr[-500:]}")
        paths.append(p)
    return paths


def context(folder: Path, name: str, options: str, ext: str, segment: dict | None, measure: bool,
            max_seconds: float) -> WorkContext:
    output = {"path": str(folder / f"out-{name}"), "file_options": options, "extension": ext, "overwrite": True}
    if segment is not None:
        output["segment"] = {"max_seconds": max_seconds, **segment}
    req = parse_request({"name": "bench", "input": {"path": str(folder / "in")}, "output": output,
                         "quality": {"measure": measure}})
    return WorkContext.for_request(req, work_dir=folder / f"work-{name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--options", default="-ac 1 -ar 16000")
    ap.add_argument("--ext", default=".flac")
    ap.add_argument("--max-seconds", type=float, default=30)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ffleet-bench-segments-"))
    try:
        (folder / "in").mkdir()
        inputs = make_inputs(folder / "in", args.files, args.seconds)
        ways = [(name, context(folder, name, args.options, args.ext, segment, measure, args.max_seconds))
                for name, _, segment, measure in VARIANTS]
        cpu = {name: 0.0 for name, _ in ways}
        pieces = {name: 0 for name, _ in ways}
        for r in range(args.rounds):
            for i, src in enumerate(inputs):
                shift = (r * len(inputs) + i) % len(ways)
                for name, ctx in ways[shift:] + ways[:shift]:
                    res = process_item(ctx, ListedObject(key=src.name))
                    if res.status != "succeeded":
                        sys.exit(f"{name}: {src.name} {res.status} {res.reason} {res.detail}")
                    cpu[name] += res.cpu_seconds
                    pieces[name] += len(res.extra.get("segments") or [])
        audio = args.files * args.seconds * args.rounds
        labels = {name: label for name, label, *_ in VARIANTS}
        print(f"{args.files} files x {args.seconds:g} s, {args.rounds} rounds; options {args.options!r} -> {args.ext}; "
              f"max_seconds {args.max_seconds:g}; FFmpeg {find_binaries().ffmpeg}")
        print(f"{'way':40} {'CPU s':>8} {'ms CPU per audio min':>21} {'pieces/file':>12} {'vs plain':>9}")
        for name, _ in ways:
            base = cpu["plain_measured" if name.endswith("_measured") else "plain"]
            print(f"{labels[name]:40} {cpu[name]:8.2f} {1000 * cpu[name] / (audio / 60):21.1f} "
                  f"{pieces[name] / (args.files * args.rounds):12.1f} {cpu[name] / base:8.2f}x")
    finally:
        for _, ctx in ways if "ways" in locals() else []:
            ctx.registry.stop_all()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
