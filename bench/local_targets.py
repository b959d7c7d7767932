"""Benchmark: `ffleet run` against `xargs -P <cores> ffmpeg` on the same files, side by side (issue 15's local targets).

Run from the repository root:  python bench/local_targets.py [--rounds 5] [--old base|REF] [--only wav|flac]
Two corpora, each converted by every way in every round (the order rotates), with the same FFmpeg binary:
  wav:  100 generated 10-30 s stereo 44.1 kHz WAVs, `-ac 1 -ar 48000` to WAV (a cheap transform:
        ffleet's own cost shows); target: ffleet at >= 0.95 of xargs' speed
  flac: run_bench.py's corpus (100 files of 30-60 s; wav, mp3, flac, opus, m4a), `-ac 1 -ar 48000 -c:a flac`;
        target: >= 0.98
Ways: xargs (`xargs -0 -P N -I{} ffmpeg ...`), ffleet (this tree, a new `ffleet run` process as a user
runs it, FFLEET_VERIFY unset: the default verifier), ffleet_pyav (this tree with FFLEET_VERIFY=pyav: the
output read back in ffleet's process, no second process per file) and, with --old REF, ffleet_old
(`git archive REF src`, default verifier).
Printed per corpus: median wall and CPU seconds with their spread, the speed ratio xargs/ffleet
(median of the per-round ratios: each round's runs are neighbours in time, which matters on a shared
machine), and ffleet's own CPU per file: (ffleet's CPU - xargs' CPU) / files, everything but FFmpeg's
conversion (Python start, imports, bookkeeping, verification, the exec prefix). Target: <= 3 ms.
That figure is split in two, from a one-file run of each way after each timed run: the CPU a run
costs whatever its size (ffleet's CPU on one file - xargs' on the same file: Python's start, imports,
the verifier's start, the summary) and what each further file adds ((own - per run) / (files - 1)).
Then, in the same run: the time from spawning `ffleet run` to its first FFmpeg (bench/start_time.py's
measurement, one sample per tree per round, interleaved with the conversions). Target: < 100 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from run_bench import children_cpu, make_bench_corpus  # noqa: E402
from start_time import first_exec_ms, one_file_job, stamping_helper  # noqa: E402

from ffleet.demo import make_tone  # noqa: E402
from ffleet.ffmpeg import find_binaries  # noqa: E402

CORPORA = {
    # name: (transform, output extension, speed target)
    "wav": (["-ac", "1", "-ar", "48000"], ".wav", 0.95),
    "flac": (["-ac", "1", "-ar", "48000", "-c:a", "flac"], ".flac", 0.98),
}
CPU_TARGET_MS = 3.0
START_TARGET_MS = 100.0


def make_wav_corpus(folder: Path, count: int) -> list[Path]:
    spec = {"count": count, "seconds": [10, 30], "ext": ".wav"}
    marker = folder.with_name(folder.name + ".json")
    paths = [folder / f"clip-{i:04d}.wav" for i in range(count)]
    if marker.exists() and json.loads(marker.read_text()) == spec and all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        make_tone(p, round(10 + 20 * ((i * 37) % 101) / 100, 2), ".wav", freq=220 + 20 * (i % 30))
    marker.write_text(json.dumps(spec))
    return paths


def compiled(src: Path) -> Path:
    """Byte-compile a tree as pip does on install (with PYTHONDONTWRITEBYTECODE set, as in some
    shells, every run would otherwise compile ffleet from source: 100-200 ms)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True, stdout=subprocess.DEVNULL)
    return src


def old_tree(ref: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_xargs(files: list[Path], corpus: Path, out: Path, transform: list[str], ext: str, workers: int, ffmpeg: str) -> None:
    rel = [f.relative_to(corpus).as_posix() for f in files]
    for r in {os.path.dirname(r) for r in rel}:
        (out / r).mkdir(parents=True, exist_ok=True)
    argv = ["xargs", "-0", "-P", str(workers), "-I{}", ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-i", "{}", *transform, "-y", f"{out}/{{}}{ext}"]
    subprocess.run(argv, input="\0".join(rel).encode(), cwd=corpus, check=True)


def run_ffleet(src: Path, corpus: Path, out: Path, results: Path, transform: list[str], ext: str, workers: int,
               workdir: Path, env: dict[str, str]) -> None:
    request = workdir / "request.json"
    request.write_text(json.dumps({
        "name": "targets", "input": {"path": str(corpus)},
        "output": {"path": str(out), "extension": ext, "file_options": " ".join(transform)},
        "results": {"path": str(results)},
    }))
    proc = subprocess.run(
        [sys.executable, "-m", "ffleet.cli", "run", str(request), "--json", "--no-progress", "--workers", str(workers)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src), **env},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffleet run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    files = json.loads(proc.stdout)["files"]
    if files["succeeded"] != files["total"]:
        raise RuntimeError(f"ffleet run: not every file succeeded: {files}")


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (default 5)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="default: usable CPUs")
    parser.add_argument("--old", default=None, help="also run `git archive OLD src` as ffleet_old ('base': where this branch left main)")
    parser.add_argument("--only", choices=list(CORPORA), help="one corpus only")
    parser.add_argument("--no-pyav-way", action="store_true", help="skip ffleet_pyav")
    parser.add_argument("--no-start", action="store_true", help="skip the start -> first FFmpeg samples")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ffleet-bench")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    bins = find_binaries()
    same_binaries = {"FFLEET_FFMPEG": bins.ffmpeg, "FFLEET_FFPROBE": bins.ffprobe}
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    trees = {"ffleet": compiled(REPO / "src")}
    if args.old == "base":
        args.old = subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], capture_output=True, text=True,
                                  check=True).stdout.strip()[:12]
    if args.old:
        print(f"ffleet_old: git archive {args.old} src")
        trees["ffleet_old"] = compiled(old_tree(args.old, wd / "old-tree"))
    report: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "workers": args.workers,
                    "ffmpeg": bins.ffmpeg, "rounds": args.rounds, "loadavg_at_start": list(os.getloadavg()), "corpora": {}}
    print(f"ffmpeg: {bins.ffmpeg}; workers: {args.workers}; rounds: {args.rounds} (+1 warm-up); "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    all_met = True
    # start -> first FFmpeg: one 1 s file, stamped by a wrapper around the sandbox helper (start_time.py)
    starts = {name: {"wall_ms": [], "cpu_ms": []} for name in trees}
    if not args.no_start:
        start_request = one_file_job(wd, "start-")
        stamp = wd / "start-stamp"
        helper_wrapper = stamping_helper(wd / "helper-stamp", stamp)
    for name in ([args.only] if args.only else list(CORPORA)):
        transform, ext, target = CORPORA[name]
        if name == "wav":
            corpus = wd / f"targets-wav-{args.files}"
            files = make_wav_corpus(corpus, args.files)
        else:
            corpus = wd / f"corpus-{args.files}-30-60"
            files = make_bench_corpus(corpus, args.files, (30.0, 60.0))
        print(f"\n{name}: {len(files)} files in {corpus}, {' '.join(transform)} -> {ext}", flush=True)

        def out_dir(way: str) -> Path:
            p = wd / "targets-out" / way
            subprocess.run(["rm", "-rf", str(p), str(p) + ".results"], check=True)
            p.mkdir(parents=True)
            return p

        ways = {"xargs": lambda: run_xargs(files, corpus, out_dir("xargs"), transform, ext, args.workers, bins.ffmpeg)}
        for tree_name, src in trees.items():
            ways[tree_name] = (lambda s=src, w=tree_name: run_ffleet(
                s, corpus, out_dir(w), wd / "targets-out" / (w + ".results"), transform, ext, args.workers, wd, same_binaries))
        if not args.no_pyav_way:
            ways["ffleet_pyav"] = lambda: run_ffleet(
                trees["ffleet"], corpus, out_dir("ffleet_pyav"), wd / "targets-out" / "ffleet_pyav.results",
                transform, ext, args.workers, wd, {**same_binaries, "FFLEET_VERIFY": "pyav"})
        # the same ways on one file of the corpus: what a run costs whatever its size (Python's start
        # and imports, the verifier's start, the summary), to split ffleet's own CPU into that and
        # what each further file adds
        one = wd / f"targets-{name}-one"
        subprocess.run(["rm", "-rf", str(one)], check=True)
        one.mkdir(parents=True)
        os.link(files[0], one / files[0].name)
        ways_one = {"xargs": lambda: run_xargs([one / files[0].name], one, out_dir("xargs-one"), transform, ext,
                                               args.workers, bins.ffmpeg)}
        for tree_name, src in trees.items():
            ways_one[tree_name] = (lambda s=src, w=tree_name: run_ffleet(
                s, one, out_dir(w + "-one"), wd / "targets-out" / (w + "-one.results"), transform, ext, args.workers,
                wd, same_binaries))
        if not args.no_pyav_way:
            ways_one["ffleet_pyav"] = lambda: run_ffleet(
                trees["ffleet"], one, out_dir("ffleet_pyav-one"), wd / "targets-out" / "ffleet_pyav-one.results",
                transform, ext, args.workers, wd, {**same_binaries, "FFLEET_VERIFY": "pyav"})
        wall = {w: [] for w in ways}
        cpu = {w: [] for w in ways}
        cpu_one = {w: [] for w in ways}
        names = list(ways)
        for rnd in range(args.rounds + 1):
            for way in names[rnd % len(names):] + names[: rnd % len(names)]:
                c0, t0 = children_cpu(), time.perf_counter()
                ways[way]()
                w, c = time.perf_counter() - t0, children_cpu() - c0
                c1 = children_cpu()
                ways_one[way]()
                if rnd:
                    wall[way].append(w)
                    cpu[way].append(c)
                    cpu_one[way].append(children_cpu() - c1)
            for tree_name, src in ([] if args.no_start else trees.items()):
                ms, cpu_ms = first_exec_ms(src, start_request, helper_wrapper, stamp, same_binaries)
                if rnd:
                    starts[tree_name]["wall_ms"].append(ms)
                    starts[tree_name]["cpu_ms"].append(cpu_ms)
            print(f"  {'warm-up' if rnd == 0 else f'round {rnd}'}: " + ", ".join(
                f"{w} {wall[w][-1]:.2f} s" for w in names if rnd and wall[w]), flush=True)
        n = len(files)
        print(f"  {'way':16} {'wall s, median (min-max)':>28} {'CPU s, median (min-max)':>28}")
        for way in names:
            print(f"  {way:16} {spread(wall[way]):>28} {spread(cpu[way]):>28}")
        result: dict = {"files": n, "transform": transform, "wall_seconds": wall, "cpu_seconds": cpu}
        for way in names[1:]:
            speed = [x / f for x, f in zip(wall["xargs"], wall[way])]  # per round: neighbours in time
            own = [(f - x) / n * 1000 for x, f in zip(cpu["xargs"], cpu[way])]
            # per round: a one-file run's own CPU (fixed, ms per run), and what each further file adds
            fixed = [(f - x) * 1000 for x, f in zip(cpu_one["xargs"], cpu_one[way])]
            marginal = [(o * n - fx) / (n - 1) for o, fx in zip(own, fixed)]
            result[way] = {"speed_vs_xargs": speed, "own_cpu_ms_per_file": own, "fixed_cpu_ms_per_run": fixed,
                           "marginal_cpu_ms_per_file": marginal}
            own_of_medians = (statistics.median(cpu[way]) - statistics.median(cpu["xargs"])) / n * 1000
            result[way]["own_cpu_ms_per_file_from_medians"] = own_of_medians
            line = (f"  {way:16} speed vs xargs {spread(speed, '{:.3f}')}; "
                    f"own CPU per file {spread(own, '{:.1f}')} ms per round, {own_of_medians:.1f} ms from the medians\n"
                    f"  {'':16} of which per run (a one-file run's own CPU) {spread(fixed, '{:.0f}')} ms, "
                    f"per further file {spread(marginal, '{:.1f}')} ms")
            if way in ("ffleet", "ffleet_pyav"):
                met_speed = statistics.median(speed) >= target
                met_cpu = statistics.median(own) <= CPU_TARGET_MS
                all_met &= met_speed and met_cpu if way == "ffleet" else True
                line += (f"   targets: speed >= {target} {'met' if met_speed else 'NOT met'}, "
                         f"CPU <= {CPU_TARGET_MS:g} ms {'met' if met_cpu else 'NOT met'}")
            print(line, flush=True)
        report["corpora"][name] = result
    if not args.no_start:
        print(f"\nfrom spawning `ffleet run` to its first FFmpeg running ({len(starts['ffleet']['wall_ms'])} samples per "
              "tree, taken between the conversions above), ms:")
        for tree_name, s in starts.items():
            met = statistics.median(s["wall_ms"]) < START_TARGET_MS
            print(f"  {tree_name:16} wall {spread(s['wall_ms'], '{:.0f}')}, ffleet's CPU {spread(s['cpu_ms'], '{:.0f}')}"
                  + (f"   target: < {START_TARGET_MS:g} ms {'met' if met else 'NOT met'}" if tree_name == "ffleet" else ""))
            all_met &= met if tree_name == "ffleet" else True
        report["start_to_first_ffmpeg"] = starts
    report["loadavg_at_end"] = list(os.getloadavg())
    print(f"\nload average {report['loadavg_at_start'][0]:.2f} -> {report['loadavg_at_end'][0]:.2f} "
          f"(the machine is shared: read the ratios and the spread, not absolute seconds)")
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"targets-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path}")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
