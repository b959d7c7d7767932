"""What a video input costs when the output is audio-only: FFmpeg as given, and as ffleet runs it.

FFmpeg maps a video stream to FLAC, MP3 and M4A outputs too (a PNG picture, an H.264 track), so
without -vn it decodes and re-encodes every frame of a video input; ffleet adds -vn when a video
file goes to an audio-only container and the options decide nothing about video
(ffleet.worker.adds_no_video). This times
both side by side, interleaved, on a generated H.264 + AAC clip, and prints FFmpeg's CPU time and
the ratio. Usage:
    python bench/video_input.py [--seconds 20] [--size 1280x720] [--rounds 2] [--options "-ac 1 -ar 16000"] [--ext .flac]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ffleet.ffmpeg import find_binaries, run_process  # noqa: E402
from ffleet.sandbox import Confinement  # noqa: E402
from ffleet.request import parse_request  # noqa: E402
from ffleet.worker import WorkContext  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--options", default="-ac 1 -ar 16000")
    ap.add_argument("--ext", default=".flac")
    args = ap.parse_args()
    ff = find_binaries().ffmpeg
    folder = Path(tempfile.mkdtemp(prefix="ffleet-bench-video-"))
    try:
        clip = folder / "in" / "clip.mp4"
        clip.parent.mkdir()
        run_process([ff, "-v", "error", "-nostdin", "-f", "lavfi", "-i", f"testsrc2=s={args.size}:r=30:d={args.seconds}",
                     "-f", "lavfi", "-i", f"sine=d={args.seconds}:r=48000", "-c:v", "libx264", "-preset", "ultrafast",
                     "-c:a", "aac", "-shortest", "-y", str(clip)], timeout=600,
                    confinement=Confinement(write=(str(clip.parent),)))
        req = parse_request({"name": "bench", "input": {"path": str(clip.parent)},
                             "output": {"path": str(folder / "out"), "extension": args.ext, "file_options": args.options}})
        ctx = WorkContext.for_request(req, work_dir=folder)
        dst = folder / f"out{args.ext}"
        ffleet_argv = ctx.ffmpeg_argv(clip, dst)
        as_given = [a for a in ffleet_argv if a != "-vn"]  # the same command without ffleet's -vn
        ways = {"ffmpeg as given": as_given, "ffleet (adds -vn)": ffleet_argv}
        if ways["ffmpeg as given"] == ways["ffleet (adds -vn)"]:
            print("ffleet adds no -vn for these options and container; nothing to compare")
        cpu = {name: 0.0 for name in ways}
        names = list(ways)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                res = run_process(ways[name], timeout=3600, confinement=Confinement(read=(str(clip),), write=(str(folder),)))
                if res.returncode != 0:
                    sys.exit(f"ffmpeg failed ({name}): {res.stderr[-500:]}")
                cpu[name] += res.cpu_seconds
        print(f"{args.size} H.264 + AAC, {args.seconds:g} s, {args.options!r} -> {args.ext}, {args.rounds} rounds; FFmpeg CPU")
        for name in names:
            print(f"{name:20s} CPU {cpu[name]:8.2f} s")
        print(f"ratio: {cpu[names[0]] / max(cpu[names[1]], 1e-9):.0f}x the CPU without -vn")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
