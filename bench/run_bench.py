"""Benchmark: ffleet against the naive one-ffmpeg-per-file design and the CPU-bound limit, side by side.

Run from the repository root:  python bench/run_bench.py [--quick] (see bench/README.md).
Every scenario runs the same transform over the same generated corpus; repeats are interleaved
(the scenario order rotates each round) and medians are reported, because this machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ffleet.demo import FORMATS, make_tone  # noqa: E402
from ffleet.ffmpeg import find_binaries  # noqa: E402

# The one transform every scenario applies (the original sample's "-ac 1 -ar 48000", to FLAC).
TRANSFORM = ["-ac", "1", "-ar", "48000", "-c:a", "flac"]
OUT_EXT = ".flac"
DEBIAN = ("/usr/bin/ffmpeg", "/usr/bin/ffprobe")
RESULTS_DIR = REPO / "bench" / "results"

MODES = {
    # name: (files, (min seconds, max seconds), repeats)
    "full": (100, (30.0, 60.0), 3),
    "quick": (30, (10.0, 20.0), 3),
    "micro": (5, (1.0, 2.0), 1),  # smoke test of the harness only; its figures mean nothing
}


# --------------------------------------------------------------------------------------------
# corpus

def make_bench_corpus(folder: Path, count: int, seconds: tuple[float, float]) -> list[Path]:
    """`count` tones of seconds[0]..seconds[1], cycling through wav, mp3, flac, opus and m4a.
    Reused when a previous run made the same corpus (the spec is stored next to it)."""
    spec = {"count": count, "seconds": list(seconds), "formats": list(FORMATS)}
    marker = folder.with_name(folder.name + ".json")  # beside the corpus: inside, ffleet would list it
    exts = list(FORMATS)
    jobs = []
    for i in range(count):
        ext = exts[i % len(exts)]
        secs = seconds[0] + (seconds[1] - seconds[0]) * ((i * 37) % 101) / 100
        jobs.append((folder / f"{ext[1:]}/clip-{i:04d}{ext}", round(secs, 2), ext, 220 + 20 * (i % 30)))
    if marker.exists() and json.loads(marker.read_text()) == spec and all(j[0].exists() for j in jobs):
        return [j[0] for j in jobs]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    marker.unlink(missing_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        paths = list(pool.map(lambda j: make_tone(j[0], j[1], j[2], j[3]), jobs))
    marker.write_text(json.dumps(spec))
    return paths


# --------------------------------------------------------------------------------------------
# the scenarios; each returns nothing and is timed by the caller

def _ffmpeg(ffmpeg: str, src: Path, dst: Path) -> None:
    subprocess.run(
        [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(src), *TRANSFORM, "-y", str(dst)],
        check=True, stdin=subprocess.DEVNULL,
    )


def naive(files: list[Path], corpus: Path, out: Path, stage: Path, ffmpeg: str) -> None:
    """(a) The original design, on one machine: per file, copy in, one ffmpeg, copy out; sequential."""
    for src in files:
        rel = src.relative_to(corpus)
        local_in = stage / ("in" + src.suffix)
        local_out = stage / ("out" + OUT_EXT)
        shutil.copyfile(src, local_in)
        _ffmpeg(ffmpeg, local_in, local_out)
        dest = (out / rel).with_suffix(OUT_EXT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_out, dest)
        local_in.unlink()
        local_out.unlink()


def limit(files: list[Path], corpus: Path, out: Path, workers: int, ffmpeg: str) -> None:
    """(b) The CPU-bound limit: plain ffmpeg straight from input to output, one process per core."""
    def one(src: Path) -> None:
        dest = (out / src.relative_to(corpus)).with_suffix(OUT_EXT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _ffmpeg(ffmpeg, src, dest)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, files))


def ffleet_cli(request: dict, workdir: Path, workers: int, env: dict | None = None) -> float:
    """(c)/(d) `ffleet run` as a user runs it. Returns the run's own wall_seconds (from its summary),
    i.e. without the Python interpreter's start; the caller times the whole command."""
    req_path = workdir / "request.json"
    req_path.write_text(json.dumps(request))
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "ffleet.cli", "run", str(req_path), "--json", "--no-progress", "--workers", str(workers)],
        capture_output=True, text=True, env=full_env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffleet run failed ({proc.returncode}): {proc.stderr[-2000:]}\n{proc.stdout[-2000:]}")
    summary = json.loads(proc.stdout)
    if summary["files"]["succeeded"] != summary["files"]["total"]:
        raise RuntimeError(f"ffleet run: not every file succeeded: {summary['files']} {summary['failures'][:3]}")
    return float(summary["wall_seconds"])


def _request(name: str, inp: dict, out: dict, results: dict) -> dict:
    return {
        "name": name,
        "input": {**inp, "file_options": "null"},
        "output": {**out, "extension": OUT_EXT, "file_options": " ".join(TRANSFORM)},
        "global": {"options": "null"},
        "results": results,
    }


# --------------------------------------------------------------------------------------------
# S3 endpoint (moto server, in a thread of this process)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def upload_corpus(self, files: list[Path], corpus: Path, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda p: self.client.upload_file(str(p), bucket, "in/" + p.relative_to(corpus).as_posix()), files))

    def empty_bucket(self, bucket: str) -> None:
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objs:
                    self.client.delete_objects(Bucket=bucket, Delete={"Objects": objs})
        except self.client.exceptions.NoSuchBucket:
            self.client.create_bucket(Bucket=bucket)

    def stop(self) -> None:
        self.server.stop()


# --------------------------------------------------------------------------------------------
# measurements

def start_cost_ms(binary: str, repeats: int = 20) -> float:
    """Median wall time of `binary -version`: process start plus dynamic linking, no media work."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([binary, "-version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def interpreter_start() -> dict:
    """What one `ffleet run` pays before its first file: Python start and ffleet's imports (median of 5)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    walls, cpus = [], []
    for _ in range(5):
        c0, t0 = children_cpu(), time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ffleet.cli, ffleet.runner, rich.progress"], env=env, check=True)
        walls.append(time.perf_counter() - t0)
        cpus.append(children_cpu() - c0)
    return {"wall_ms": round(statistics.median(walls) * 1000, 1), "cpu_ms": round(statistics.median(cpus) * 1000, 1)}


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def profile_worker(files: list[Path], corpus: Path, workdir: Path) -> dict:
    """Where ffleet's time goes per file: process_item run sequentially, each phase timed by
    wrapping the functions the worker calls. Sequential, so phases do not overlap."""
    import ffleet.worker as worker
    from ffleet.request import parse_request
    from ffleet.storage import ListedObject

    out = workdir / "profile-out"
    shutil.rmtree(out, ignore_errors=True)
    req = parse_request(_request("bench-profile", {"path": str(corpus)}, {"path": str(out)}, {"path": str(workdir / "profile-res")}))
    ctx = worker.WorkContext.for_request(req, work_dir=workdir / "profile-items")
    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    originals = (worker.run_process, worker.read_media)
    worker.run_process = timed("ffmpeg", worker.run_process)
    worker.read_media = timed("read back (verify output)", worker.read_media)
    ctx.output_store.exists = timed("skip check (output exists?)", ctx.output_store.exists)
    ctx.output_store.store = timed("store (rename out)", ctx.output_store.store)
    total = 0.0
    try:
        for src in files:
            t = time.perf_counter()
            res = worker.process_item(ctx, ListedObject(src.relative_to(corpus).as_posix()))
            total += time.perf_counter() - t
            if res.status != "succeeded":
                raise RuntimeError(f"profile: {res.key}: {res.reason} {res.detail}")
    finally:
        worker.run_process, worker.read_media = originals
    n = len(files)
    per_file = {k: round(v / n * 1000, 2) for k, v in phases.items()}
    per_file["python (temp dirs, parsing, bookkeeping)"] = round((total - sum(phases.values())) / n * 1000, 2)
    return {"files": n, "ms_per_file": per_file, "total_ms_per_file": round(total / n * 1000, 2)}


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ffleet vs the naive design vs the CPU-bound limit, side by side.")
    parser.add_argument("--quick", action="store_true", help="30 files of 10-20 s (about 1-2 minutes)")
    parser.add_argument("--micro", action="store_true", help="5 tiny files, 1 round: checks the harness runs, figures mean nothing")
    parser.add_argument("--files", type=int, help="corpus size (default: 100, quick: 30)")
    parser.add_argument("--repeats", type=int, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes at once (default: usable CPUs)")
    parser.add_argument("--no-s3", action="store_true", help="skip (d), ffleet on a moto S3 endpoint")
    parser.add_argument("--no-debian", action="store_true", help="skip the Debian /usr/bin/ffmpeg comparison")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ffleet-bench")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for the results JSON")
    args = parser.parse_args(argv)

    mode = "micro" if args.micro else "quick" if args.quick else "full"
    n_files, seconds, repeats = MODES[mode]
    n_files = args.files or n_files
    repeats = args.repeats or repeats
    workers = args.workers
    bins = find_binaries()
    debian = not args.no_debian and all(Path(p).is_file() for p in DEBIAN) and Path(bins.ffmpeg).resolve() != Path(DEBIAN[0]).resolve()

    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    corpus = wd / f"corpus-{n_files}-{seconds[0]:g}-{seconds[1]:g}"
    t = time.perf_counter()
    files = make_bench_corpus(corpus, n_files, seconds)
    print(f"corpus: {len(files)} files, {seconds[0]:g}-{seconds[1]:g} s, {', '.join(FORMATS)} ({time.perf_counter() - t:.1f} s to prepare) in {corpus}")
    print(f"ffmpeg: {bins.ffmpeg}; workers: {workers}; mode: {mode}; repeats: {repeats} (+1 warm-up)")

    s3 = None
    if not args.no_s3:
        s3 = MotoS3()
        s3.upload_corpus(files, corpus, "bench-in")
        s3.client.create_bucket(Bucket="bench-out")

    def out_dir(name: str) -> Path:
        p = wd / "out" / name
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        return p

    stage = wd / "stage"
    stage.mkdir(exist_ok=True)

    def run_ffleet_local(name: str, env: dict | None = None) -> float:
        o = out_dir(name)
        res = wd / "res" / name
        shutil.rmtree(res, ignore_errors=True)
        req = _request(f"bench-{name}", {"path": str(corpus)}, {"path": str(o)}, {"path": str(res)})
        return ffleet_cli(req, wd, workers, env)

    def run_ffleet_s3() -> float:
        s3.empty_bucket("bench-out")
        req = _request("bench-s3", {"s3_bucket": "bench-in", "s3_prefix": "in/"}, {"s3_bucket": "bench-out", "s3_prefix": "out/"},
                       {"s3_bucket": "bench-out", "s3_prefix": "results/"})
        return ffleet_cli(req, wd, workers, {"AWS_ENDPOINT_URL": s3.url})

    scenarios = {
        "naive": lambda: naive(files, corpus, out_dir("naive"), stage, bins.ffmpeg),
        "limit": lambda: limit(files, corpus, out_dir("limit"), workers, bins.ffmpeg),
        "ffleet_local": lambda: run_ffleet_local("ffleet"),
    }
    if s3:
        scenarios["ffleet_s3"] = run_ffleet_s3
    if debian:
        scenarios["ffleet_local_debian_ffmpeg"] = lambda: run_ffleet_local(
            "ffleet-debian", {"FFLEET_FFMPEG": DEBIAN[0], "FFLEET_FFPROBE": DEBIAN[1]})
        scenarios["limit_debian_ffmpeg"] = lambda: limit(files, corpus, out_dir("limit-debian"), workers, DEBIAN[0])

    wall: dict[str, list[float]] = {k: [] for k in scenarios}
    inner: dict[str, list[float]] = {k: [] for k in scenarios}  # ffleet's own wall_seconds (no interpreter start)
    cpu: dict[str, list[float]] = {k: [] for k in scenarios}
    names = list(scenarios)
    try:
        for rnd in range(repeats + 1):
            order = names[rnd % len(names):] + names[: rnd % len(names)]  # rotate: no scenario always runs first
            for name in order:
                c0, t0 = children_cpu(), time.perf_counter()
                value = scenarios[name]()
                elapsed, used = time.perf_counter() - t0, children_cpu() - c0
                label = "warm-up" if rnd == 0 else f"round {rnd}"
                print(f"  {label:8} {name:28} {elapsed:7.2f} s wall  {used:7.2f} s CPU", flush=True)
                if rnd == 0:
                    continue
                wall[name].append(elapsed)
                cpu[name].append(used)
                inner[name].append(value if isinstance(value, float) else elapsed)
    finally:
        if s3:
            s3.stop()

    start = interpreter_start()
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_inner = {k: statistics.median(v) for k, v in inner.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    n = len(files)

    def overhead_ms(name: str, base: str = "limit", t: dict = med) -> float:
        # wall beyond the limit, spread over the files each worker handled
        return (t[name] - t[base]) * workers / n * 1000

    report: dict = {
        "mode": mode,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "corpus": {"files": n, "seconds": list(seconds), "formats": list(FORMATS),
                   "audio_seconds": round(sum(_dur(f) for f in files), 1)},
        "transform": TRANSFORM,
        "ffmpeg": {"ffmpeg": bins.ffmpeg, "ffprobe": bins.ffprobe},
        "workers": workers,
        "repeats": repeats,
        "wall_seconds": wall,
        "ffleet_inner_wall_seconds": {k: v for k, v in inner.items() if k.startswith("ffleet")},
        "children_cpu_seconds": cpu,
        "median_wall_seconds": {k: round(v, 3) for k, v in med.items()},
        "median_children_cpu_seconds": {k: round(v, 3) for k, v in med_cpu.items()},
        "ffleet_interpreter_start": start,
    }
    ff = "ffleet_local"
    ratios = {
        "speedup_over_naive": med["naive"] / med[ff],
        "efficiency_vs_limit": med["limit"] / med[ff],
        "efficiency_vs_limit_without_interpreter_start": med["limit"] / med_inner[ff],
        "overhead_ms_per_file": overhead_ms(ff),
        "overhead_ms_per_file_without_interpreter_start": overhead_ms(ff, t={**med, ff: med_inner[ff]}),
        "cpu_overhead_ms_per_file": (med_cpu[ff] - med_cpu["limit"]) / n * 1000,
        "cpu_overhead_ms_per_file_without_interpreter_start": (med_cpu[ff] - med_cpu["limit"] - start["cpu_ms"] / 1000) / n * 1000,
        # CPU seconds are far less disturbed by other processes than wall seconds on a shared machine
        "cpu_efficiency_vs_limit": med_cpu["limit"] / med_cpu[ff],
        "limit_speedup_over_naive": med["naive"] / med["limit"],
    }
    if s3:
        ratios["s3_efficiency_vs_limit"] = med["limit"] / med["ffleet_s3"]
        ratios["s3_speedup_over_naive"] = med["naive"] / med["ffleet_s3"]
        ratios["s3_overhead_ms_per_file"] = overhead_ms("ffleet_s3")
    if debian:
        ratios["debian_ffleet_slowdown"] = med["ffleet_local_debian_ffmpeg"] / med[ff]
        ratios["static_saves_ms_per_file_in_ffleet"] = overhead_ms("ffleet_local_debian_ffmpeg", base=ff)
        ratios["static_saves_ms_per_file_plain_ffmpeg"] = overhead_ms("limit_debian_ffmpeg", base="limit")
        ratios["static_saves_cpu_ms_per_file_in_ffleet"] = (med_cpu["ffleet_local_debian_ffmpeg"] - med_cpu[ff]) / n * 1000
        ratios["static_saves_cpu_ms_per_file_plain_ffmpeg"] = (med_cpu["limit_debian_ffmpeg"] - med_cpu["limit"]) / n * 1000
        report["start_cost_ms"] = {
            "static_ffmpeg": start_cost_ms(bins.ffmpeg), "static_ffprobe": start_cost_ms(bins.ffprobe),
            "debian_ffmpeg": start_cost_ms(DEBIAN[0]), "debian_ffprobe": start_cost_ms(DEBIAN[1]),
        }
    report["ratios"] = {k: round(v, 4) for k, v in ratios.items()}
    print("profiling the worker (sequential, one file at a time)...", flush=True)
    report["profile"] = profile_worker(files, corpus, wd)
    report["targets"] = {
        "efficiency_ge_0.95": ratios["efficiency_vs_limit"] >= 0.95,
        "speedup_ge_1.8": ratios["speedup_over_naive"] >= 1.8,
        "overhead_le_15ms": ratios["overhead_ms_per_file"] <= 15,
    }
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    print_report(report)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{mode}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0


def _dur(path: Path) -> float:
    # the corpus generator's durations are encoded in nothing but the file; ask ffprobe once
    bins = find_binaries()
    out = subprocess.run([bins.ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True)
    try:
        return float(out.stdout.strip())
    except ValueError:
        return 0.0


def print_report(r: dict) -> None:
    m, q = r["machine"], r["ratios"]
    print()
    print(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), load {m['loadavg_at_start'][0]:.2f} -> {m['loadavg_at_end'][0]:.2f}")
    print(f"corpus: {r['corpus']['files']} files, {r['corpus']['audio_seconds']:.0f} s of audio; transform: {' '.join(r['transform'])}")
    print(f"{'median of ' + str(r['repeats']) + ' rounds':30} {'wall s':>8} {'CPU s':>8}")
    for k, v in r["median_wall_seconds"].items():
        print(f"  {k:28} {v:8.2f} {r['median_children_cpu_seconds'][k]:8.2f}")
    st = r["ffleet_interpreter_start"]
    print(f"one `ffleet run` starts in {st['wall_ms']:.0f} ms wall, {st['cpu_ms']:.0f} ms CPU (Python + imports), whatever the file count")
    print(f"ffleet speed-up over naive:          {q['speedup_over_naive']:.2f}x   (target >= 1.8x on 2 cores; limit itself: {q['limit_speedup_over_naive']:.2f}x)")
    print(f"ffleet efficiency vs limit:          {q['efficiency_vs_limit']:.3f}   (target >= 0.95; "
          f"{q['efficiency_vs_limit_without_interpreter_start']:.3f} without the Python start)")
    print(f"ffleet overhead per file:            {q['overhead_ms_per_file']:.1f} ms wall   (target <= 15 ms; "
          f"{q['overhead_ms_per_file_without_interpreter_start']:.1f} ms without the Python start)")
    print(f"ffleet CPU overhead per file:        {q['cpu_overhead_ms_per_file']:.1f} ms CPU   "
          f"({q['cpu_overhead_ms_per_file_without_interpreter_start']:.1f} ms without the Python start; "
          f"CPU efficiency vs limit {q['cpu_efficiency_vs_limit']:.3f})")
    if "s3_efficiency_vs_limit" in q:
        print(f"ffleet on S3 (moto, same machine):   {q['s3_efficiency_vs_limit']:.3f} of the limit, "
              f"{q['s3_speedup_over_naive']:.2f}x naive, {q['s3_overhead_ms_per_file']:.1f} ms/file")
    if "start_cost_ms" in r:
        s = r["start_cost_ms"]
        print(f"start cost (-version): static ffmpeg {s['static_ffmpeg']:.1f} ms, ffprobe {s['static_ffprobe']:.1f} ms; "
              f"Debian ffmpeg {s['debian_ffmpeg']:.1f} ms, ffprobe {s['debian_ffprobe']:.1f} ms")
        print(f"static build saves per file:         {q['static_saves_ms_per_file_in_ffleet']:.1f} ms in ffleet (ffmpeg + ffprobe), "
              f"{q['static_saves_ms_per_file_plain_ffmpeg']:.1f} ms for plain ffmpeg; Debian makes ffleet {q['debian_ffleet_slowdown']:.3f}x slower")
        print(f"  in CPU time:                       {q['static_saves_cpu_ms_per_file_in_ffleet']:.1f} ms per file in ffleet, "
              f"{q['static_saves_cpu_ms_per_file_plain_ffmpeg']:.1f} ms for plain ffmpeg")
    p = r["profile"]
    print(f"where ffleet's time goes per file (sequential, {p['files']} files, {p['total_ms_per_file']:.1f} ms each):")
    for k, v in sorted(p["ms_per_file"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:42} {v:8.2f} ms")
    print("targets met: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["targets"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
