"""Benchmark: time from `ffleet run` to its first FFmpeg, for this tree and an older one, side by side.

Run from the repository root:  python bench/start_time.py [--old main] [--rounds 15]
FFLEET_SANDBOX_HELPER points at a wrapper that writes bash's $EPOCHREALTIME before it execs the real
sandbox helper (ffleet-sandbox), which confines and then execs FFmpeg: the figure runs from just before
the `ffleet run` process is spawned to the moment the process of its first FFmpeg is running (the
wrapper's own bash start, about 1 ms, is counted against ffleet). The wrapper sits before the helper,
not before FFmpeg, because the sandbox lets the confined process execute FFmpeg only, with none of
ffleet's environment, and write only its own work folder. The helper's self-test (`--probe`, once per
run) is not stamped but is counted. The wrapper also sums the CPU time of ffleet's threads from /proc
(schedstat): on a shared machine that figure moves far less than the wall time.
The older tree is `git archive <ref> src` into a temporary folder. Rounds alternate the trees; the
report gives medians and the spread, and the floor: `python -c pass` in the same interpreter.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ffleet.demo import make_tone  # noqa: E402
from ffleet.ffmpeg import find_binaries  # noqa: E402
from ffleet.sandbox import helper_path  # noqa: E402


def old_tree(ref: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def branch_point() -> str:
    """Where this branch left main: main itself moves while a branch is measured."""
    out = subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], capture_output=True, text=True)
    return out.stdout.strip()[:12] or "main"


def compiled(src: Path) -> Path:
    """Byte-compile a tree, as pip does on install: with PYTHONDONTWRITEBYTECODE set (as in some
    shells and CI) every run would otherwise compile ffleet from source, 100-200 ms of it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True, stdout=subprocess.DEVNULL)
    return src


def first_exec_ms(src: Path, request: Path, wrapper: Path, stamp: Path, env: dict[str, str],
                  progress: bool = False) -> tuple[float, float]:
    """(wall ms, ffleet's CPU ms) from spawning `ffleet run` to its first FFmpeg."""
    stamp.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(src), FFLEET_SANDBOX_HELPER=str(wrapper), **env)
    started = time.time()
    flags = [] if progress else ["--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "ffleet.cli", "run", str(request), *flags, "--json", "--workers", "1"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffleet run ({src}) exited {proc.returncode}: {proc.stderr[-1500:]} {proc.stdout[-1500:]}")
    when, cpu_ns = stamp.read_text().split()[:2]
    return (float(when) - started) * 1000, int(cpu_ns) / 1e6


def stamping_helper(wrapper: Path, stamp: Path) -> Path:
    """Write the wrapper that stamps the time and ffleet's CPU before it execs the sandbox helper."""
    helper = helper_path()
    if helper is None:
        raise SystemExit("no sandbox helper (ffleet-sandbox) here to stamp: see `python -m ffleet.sandbox --build`")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    # bash builtins only (no fork): the time, and the CPU ffleet's threads have used so far (schedstat, ns).
    # Paths are written in: ffleet gives the helper none of its environment.
    wrapper.write_text(
        '#!/bin/bash\nif [ "$1" != --probe ]; then\n  cpu=0\n'
        '  for f in /proc/$PPID/task/*/schedstat; do read -r ns _ < "$f"; cpu=$((cpu + ns)); done\n'
        f'  echo "$EPOCHREALTIME $cpu" >> {stamp}\nfi\nexec {helper} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def floor_ms() -> float:
    started = time.time()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.time() - started) * 1000


def one_file_job(wd: Path, name: str) -> Path:
    """The job whose first FFmpeg the start is timed to: one 1 s tone, overwritten on every run."""
    (wd / f"{name}in").mkdir(exist_ok=True)
    if not (wd / f"{name}in" / "a.wav").exists():
        make_tone(wd / f"{name}in" / "a.wav", 1.0)
    request = wd / f"{name}job.json"
    request.write_text(json.dumps({
        "name": "start", "input": {"path": str(wd / f"{name}in")},
        "output": {"path": str(wd / f"{name}out"), "file_options": "-ac 1 -ar 48000", "overwrite": True},
        "results": {"path": str(wd / f"{name}results")},
    }))
    return request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=None, help="git ref of the tree to compare with (default: where this branch left main)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--progress", action="store_true", help="with the progress bar on, as a user runs `ffleet run`")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ffleet-bench-start")
    args = parser.parse_args(argv)

    wd = args.workdir
    bins = find_binaries()
    args.old = args.old or branch_point()
    stamp = wd / "stamp"
    wrapper = stamping_helper(wd / "helper-stamp", stamp)
    same_binaries = {"FFLEET_FFMPEG": bins.ffmpeg, "FFLEET_FFPROBE": bins.ffprobe}
    request = one_file_job(wd, "")
    trees = {"this tree": compiled(REPO / "src"), f"old ({args.old})": compiled(old_tree(args.old, wd / "old"))}
    times: dict[str, list[float]] = {name: [] for name in [*trees, "python -c pass"]}
    cpus: dict[str, list[float]] = {name: [] for name in trees}
    for rnd in range(args.rounds + 1):  # round 0 warms the page cache
        order = list(trees) if rnd % 2 else list(trees)[::-1]
        for name in order:
            ms, cpu_ms = first_exec_ms(trees[name], request, wrapper, stamp, same_binaries, args.progress)
            if rnd:
                times[name].append(ms)
                cpus[name].append(cpu_ms)
        ms = floor_ms()
        if rnd:
            times["python -c pass"].append(ms)
    print(f"from spawning `ffleet run{'' if args.progress else ' --no-progress'}` to its first FFmpeg running, "
          f"{args.rounds} rounds (load {os.getloadavg()[0]:.1f}):")
    print(f"  {'':20} {'wall ms: median':>16} {'min':>6} {'max':>6}   {'ffleet CPU ms: median':>22} {'min':>6} {'max':>6}")
    for name, values in times.items():
        c = cpus.get(name)
        cpu_cols = f"{statistics.median(c):22.1f} {min(c):6.1f} {max(c):6.1f}" if c else ""
        print(f"  {name:20} {statistics.median(values):16.1f} {min(values):6.1f} {max(values):6.1f}   {cpu_cols}")
    (new, old), (new_cpu, old_cpu) = ([statistics.median(d[n]) for n in trees] for d in (times, cpus))
    print(f"this tree / old: wall {new / old:.2f}, CPU {new_cpu / old_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
