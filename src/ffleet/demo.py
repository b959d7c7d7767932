"""Generate a demo corpus of audio (and a few deliberately broken files) with FFmpeg's lavfi sources."""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ffleet.ffmpeg import find_binaries

# (extension, encoder arguments); every one of these is in both Debian's and the static build.
FORMATS = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    ".flac": ["-c:a", "flac"],
    ".opus": ["-c:a", "libopus", "-b:a", "64k"],
    ".m4a": ["-c:a", "aac", "-b:a", "96k"],
}


def make_tone(
    path: Path, seconds: float, ext: str | None = None, freq: int = 440, rate: int = 44100, channels: int = 2,
    volume: float = 1.0,
) -> Path:
    """Write a sine tone of `seconds` to `path`, encoded as its extension says (volume > 8 clips)."""
    binaries = find_binaries()
    ext = ext or path.suffix
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = "stereo" if channels == 2 else "mono"
    argv = [
        binaries.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
        "-i", f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}",
        "-af", f"volume={volume},aformat=channel_layouts={layout}", *FORMATS[ext], "-y", str(path),
    ]
    subprocess.run(argv, check=True)
    return path


def make_video_only(path: Path, seconds: float = 2) -> Path:
    binaries = find_binaries()
    subprocess.run(
        [binaries.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         f"testsrc=size=64x64:rate=10:duration={seconds}", "-c:v", "mpeg4", "-y", str(path)],
        check=True,
    )
    return path


def make_corpus(folder: Path, count: int = 20, seconds: tuple[float, float] = (3, 8), broken: bool = True) -> list[Path]:
    """`count` good files spread over FORMATS (nested folders, a space and '+' in some names),
    plus, with `broken`, an empty file, a truncated/garbage file and a video-only file."""
    folder.mkdir(parents=True, exist_ok=True)
    exts = list(FORMATS)
    jobs = []
    for i in range(count):
        ext = exts[i % len(exts)]
        sub = ("speech/", "music/", "field rec/")[i % 3]
        name = f"clip {i:04d}+take{ext}" if i % 7 == 3 else f"clip-{i:04d}{ext}"
        secs = seconds[0] + (seconds[1] - seconds[0]) * ((i * 37) % 100) / 100
        # a spread of levels, so the dataset card has something to show: some quiet files, and two
        # (a FLAC and an Opus) driven into clipping (lavfi's sine peaks at 1/8 of full scale)
        volume = 12.0 if i % 11 == 7 else (0.1 if i % 4 == 1 else 1.0 + (i % 3))
        jobs.append((folder / sub / name, round(secs, 2), ext, 220 + 20 * (i % 30), volume))
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(lambda j: make_tone(j[0], j[1], j[2], j[3], volume=j[4]), jobs))
    if broken:
        bad = folder / "broken"
        bad.mkdir(exist_ok=True)
        (bad / "empty.wav").write_bytes(b"")
        (bad / "garbage.mp3").write_bytes(b"this is not audio at all\n" * 200)
        make_video_only(bad / "video-only.mp4")
        paths += [bad / "empty.wav", bad / "garbage.mp3", bad / "video-only.mp4"]
    return paths


def demo_request(input_dir: Path, output_dir: Path, tolerated_percent: float = 20, measure: bool = False) -> dict:
    """The demo job: everything to 48 kHz mono FLAC, tolerating the deliberately broken files.
    With `measure`, each file is also measured for the dataset card (report.html)."""
    request = {
        "name": "demo-audio",
        "compute": "intel",
        "input": {"path": str(input_dir), "file_options": "null"},
        "output": {"path": str(output_dir), "extension": ".flac", "file_options": "-ac 1 -ar 48000 -c:a flac"},
        "global": {"options": "null"},
        "processing": {"tolerated_failure_percent": tolerated_percent},
    }
    if measure:
        request["quality"] = {"measure": True}
    return request


# The segments demo: sentences spoken by espeak-ng, joined with pauses of these lengths (seconds).
SENTENCES = [
    "ffleet runs millions of recordings through FFmpeg.",
    "This recording was made for the segments demo.",
    "Each sentence is followed by a pause.",
    "The cut goes in the last pause before the limit.",
    "So no piece ends in the middle of a word.",
    "Pieces are numbered from zero, with five digits.",
    "A re-run skips a recording whose pieces are all there.",
    "A partial set is made again, whole.",
    "Quality measurements apply to every piece.",
    "That is all. Thank you for listening.",
]
PAUSES = [0.9, 0.5, 1.2, 0.7, 1.0, 0.6, 1.4, 0.8, 1.1]


def make_recording_with_pauses(path: Path, espeak: str, sentences: list[str] = SENTENCES,
                               pauses: list[float] = PAUSES) -> Path:
    """One WAV of the sentences spoken by espeak-ng (22.05 kHz mono), joined with the pauses."""
    binaries = find_binaries()
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, text in enumerate(sentences):
        part = path.parent / f".sentence{i}.wav"
        subprocess.run([espeak, "-w", str(part), text], check=True, timeout=60)
        parts.append(part)
    argv = [binaries.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]
    for part in parts:
        argv += ["-i", str(part)]
    chain, joined = [], ""
    for i in range(len(parts)):
        chain.append(f"[{i}:a]aresample=22050,aformat=sample_fmts=s16:channel_layouts=mono[s{i}]")
        joined += f"[s{i}]"
        if i < min(len(pauses), len(parts) - 1):
            chain.append(f"anullsrc=r=22050:cl=mono,atrim=duration={pauses[i]}[p{i}]")
            joined += f"[p{i}]"
    graph = ";".join(chain) + f";{joined}concat=n={joined.count('[')}:v=0:a=1[out]"
    subprocess.run([*argv, "-filter_complex", graph, "-map", "[out]", "-c:a", "pcm_s16le", "-y", str(path)],
                   check=True, timeout=120)
    for part in parts:
        part.unlink()
    return path


def segments_request(input_dir: Path, output_dir: Path) -> dict:
    """The segments demo job: 16 kHz mono FLAC, cut at the pauses into pieces of at most 10 s, measured,
    with the three training manifests (audiofolder's metadata.jsonl lands in the output folder)."""
    return {
        "name": "demo-segments",
        "input": {"path": str(input_dir)},
        "output": {"path": str(output_dir), "extension": ".flac", "file_options": "-ac 1 -ar 16000",
                   "segment": {"max_seconds": 10, "min_seconds": 1, "at_silence": True, "silence_db": -40,
                               "min_silence_seconds": 0.3}},
        "quality": {"measure": True},
        "results": {"manifests": ["nemo", "audiofolder", "lhotse"]},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build ffleet's demo corpus and its request.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--segments", metavar="ESPEAK_NG", help="build the segments demo instead, speaking with this espeak-ng")
    args = parser.parse_args(argv)
    if args.segments:
        inputs, outputs = args.folder / "input", args.folder / "output"
        recording = inputs / "talk.wav"
        if not recording.exists():
            make_recording_with_pauses(recording, args.segments)
        request_path = args.folder / "segments-request.json"
        request_path.write_text(json.dumps(segments_request(inputs.resolve(), outputs.resolve()), indent=2) + "\n")
        print(request_path)
        return 0
    inputs, outputs = args.folder / "input", args.folder / "output"
    if not inputs.exists():
        make_corpus(inputs, args.count)
    request_path = args.folder / "demo-request.json"
    request_path.write_text(json.dumps(demo_request(inputs.resolve(), outputs.resolve(), measure=True), indent=2) + "\n")
    print(request_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
