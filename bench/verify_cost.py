"""Benchmark: reading outputs back with the sandboxed PyAV verifier, PyAV in-process and ffprobe, side by side.

Run from the repository root:  python bench/verify_cost.py [--files 20] [--rounds 5]
Every round reads every generated output with each reader, in rotating order; the report gives the
median CPU and wall milliseconds per file, their spread over the rounds, and the ratios. The
verifier's CPU is its process's own (from /proc/<pid>/task/*/schedstat, nanoseconds) plus what
ffleet's thread spends asking; its start (Python, `import av`) is counted apart, from wait4 when
it ends. It also checks that the readers agree (streams, codec, rate, channels, duration within
0.1 s), prints what importing PyAV costs once per process, and the size of the installed PyAV.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ffleet import verify  # noqa: E402
from ffleet.ffmpeg import Binaries, find_binaries, input_guard  # noqa: E402
from ffleet.verifier import VerifierPool  # noqa: E402

DEBIAN = Binaries("/usr/bin/ffmpeg", "/usr/bin/ffprobe")
# the outputs ffleet's users write most (README), 10-30 s like the short-file bench
OUTPUTS = {".wav": ["-ac", "1", "-ar", "48000"], ".flac": ["-ac", "1", "-ar", "48000", "-c:a", "flac"],
           ".mp3": ["-ac", "1", "-b:a", "64k"], ".m4a": ["-ac", "1", "-c:a", "aac", "-b:a", "64k"],
           ".opus": ["-ac", "1", "-c:a", "libopus", "-b:a", "32k"]}


def make_outputs(folder: Path, count: int, ffmpeg: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    exts = list(OUTPUTS)
    for i in range(count):
        ext = exts[i % len(exts)]
        secs = 10 + 20 * ((i * 37) % 101) / 100
        path = folder / f"out-{i:03d}-{secs:.2f}{ext}"
        if not path.exists():
            subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", f"sine=frequency={220 + i}:duration={secs}",
                            *OUTPUTS[ext], "-y", str(path)], check=True)
        paths.append(path)
    return paths


def _process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid so far, in ns (schedstat: finer than /proc/<pid>/stat's ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total


def read_all(paths: list[Path], reader: str, binaries: Binaries, pool: VerifierPool | None) -> tuple[float, float, list]:
    """(CPU seconds, wall seconds, infos) of reading every path with one reader."""
    if reader == "verifier":
        os.environ.pop("FFLEET_VERIFY", None)
    else:
        os.environ["FFLEET_VERIFY"] = "ffprobe" if reader.startswith("ffprobe") else "pyav"
    guard = input_guard()
    infos, cpu = [], 0.0
    server_before = _process_cpu_ns(pool._idle[0].proc.pid) if reader == "verifier" and pool._idle else None
    t0 = time.perf_counter()
    for p in paths:
        c0 = time.thread_time()  # this thread: PyAV's work, spawning ffprobe, or asking the verifier
        back = verify.read_media(p, guard, binaries, verifiers=pool)
        cpu += time.thread_time() - c0
        if back.reader == "ffprobe":
            cpu += back.cpu_seconds  # ffprobe's own CPU, from wait4
        infos.append(back.info)
    wall = time.perf_counter() - t0
    if reader == "verifier":
        assert pool.started == 1, "one verifier for every round"
        if server_before is not None:  # the first round starts it: its CPU is counted from wait4 at the end
            cpu += (_process_cpu_ns(pool._idle[0].proc.pid) - server_before) / 1e9
        else:
            cpu = float("nan")
    return cpu, wall, infos


def import_cost(repeats: int = 5) -> dict:
    """CPU and wall ms of `import av` in a fresh interpreter (median), paid once per process."""
    code = "import time; c=time.process_time(); t=time.perf_counter(); import av; print(time.process_time()-c, time.perf_counter()-t)"
    cpus, walls = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        cpus.append(float(out[0]))
        walls.append(float(out[1]))
    return {"cpu_ms": round(statistics.median(cpus) * 1000, 1), "wall_ms": round(statistics.median(walls) * 1000, 1)}


def installed_size_mb() -> float:
    import av

    root = Path(av.__file__).parent
    total = sum(f.stat().st_size for d in (root, root.parent / "av.libs") if d.exists() for f in d.rglob("*") if f.is_file())
    return round(total / 1e6, 1)


# PyAV's libav (8.x) and FFmpeg 6.0 estimate an MP3's duration differently (24.800 s vs 24.842 s
# for a 24.8 s tone); the worker allows 0.5 s + 2%, so tens of ms do not change a verdict
DURATION_AGREES = 0.1


def agree(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return (a.stream_types, a.codec, a.sample_rate, a.channels) == (b.stream_types, b.codec, b.sample_rate, b.channels) \
        and abs((a.duration or 0) - (b.duration or 0)) < DURATION_AGREES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ffleet-bench-verify")
    args = parser.parse_args(argv)

    os.environ.pop("FFLEET_VERIFY", None)
    if verify.reader_name() != "verifier":
        print("PyAV (`av`) is not installed: nothing to compare (pip install av)")
        return 1
    static = find_binaries()
    readers = {"verifier": static, "pyav": static, "ffprobe_static": static}
    if Path(DEBIAN.ffprobe).is_file() and Path(static.ffprobe).resolve() != Path(DEBIAN.ffprobe).resolve():
        readers["ffprobe_debian"] = DEBIAN
    paths = make_outputs(args.workdir, args.files, static.ffmpeg)
    print(f"{len(paths)} outputs ({', '.join(OUTPUTS)}), 10-30 s; {args.rounds} rounds (+1 warm-up), order rotating")
    from ffleet import sandbox

    print(sandbox.sandbox_status().describe())
    pool = VerifierPool((str(args.workdir),))  # as a run's: the work folder, one verifier for the thread

    cpu: dict[str, list[float]] = {r: [] for r in readers}
    wall: dict[str, list[float]] = {r: [] for r in readers}
    seen: dict[str, list] = {}
    names = list(readers)
    try:
        # the verifier starts in the warm-up round, before any measured one
        for rnd in range(args.rounds + 1):
            order = names if rnd == 0 else names[rnd % len(names):] + names[: rnd % len(names)]
            for name in order:
                c, w, infos = read_all(paths, name, readers[name], pool)
                seen[name] = infos
                if rnd:
                    cpu[name].append(c / len(paths) * 1000)
                    wall[name].append(w / len(paths) * 1000)
    finally:
        pool.close()
    os.environ.pop("FFLEET_VERIFY", None)
    reads = (args.rounds + 1) * len(paths)

    print(f"\n{'reader':16} {'CPU ms/file':>12} {'(min-max)':>14} {'wall ms/file':>13} {'(min-max)':>14}")
    for name in names:
        print(f"{name:16} {statistics.median(cpu[name]):12.2f} {min(cpu[name]):6.2f}-{max(cpu[name]):<7.2f}"
              f"{statistics.median(wall[name]):13.2f} {min(wall[name]):6.2f}-{max(wall[name]):<7.2f}")
    print("(verifier: its process's CPU and ffleet's thread's; pyav: ffleet's thread; ffprobe: ffprobe's from wait4 and ffleet's thread)")
    base = statistics.median(cpu["verifier"])
    for name in names[1:]:
        print(f"CPU {name} / verifier: {statistics.median(cpu[name]) / base:.2f}x")
    start_ms = pool.cpu_seconds * 1000 - base * reads  # its life less its reads (ffleet's side included: a floor)
    print(f"the verifier's whole life (wait4): {pool.cpu_seconds * 1000:.0f} ms CPU for {reads} reads; its start "
          f"(the sandbox helper, Python, import av and ffleet) about {start_ms:.0f} ms, once per worker thread per "
          f"batch: it pays for itself against ffprobe_static after "
          f"{start_ms / max(1e-9, statistics.median(cpu['ffprobe_static']) - base):.0f} files")
    for other in ("pyav", "ffprobe_static"):
        bad = [p.name for p, a, b in zip(paths, seen["verifier"], seen[other]) if not agree(a, b)]
        print(f"verifier and {other} agree on {len(paths) - len(bad)}/{len(paths)} files" + (f"; differ on {bad}" if bad else ""))
    bad = [p.name for p, a, b in zip(paths, seen["pyav"], seen["ffprobe_static"]) if not agree(a, b)]
    worst = max((abs(a.duration - b.duration), p.name) for p, a, b in zip(paths, seen["pyav"], seen["ffprobe_static"]) if a and b)
    print(f"pyav and ffprobe_static agree on {len(paths) - len(bad)}/{len(paths)} files" + (f"; differ on {bad}" if bad else "")
          + f"; largest duration difference {worst[0] * 1000:.1f} ms ({worst[1]})")
    bad += [p.name for p, a, b in zip(paths, seen["verifier"], seen["ffprobe_static"]) if not agree(a, b)]
    imp = import_cost()
    print(f"import av, once per process: {imp['cpu_ms']} ms CPU, {imp['wall_ms']} ms wall")
    print(f"installed PyAV (av + av.libs): {installed_size_mb()} MB")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
