"""Benchmark: `ffleet run` on an S3 endpoint with S3's latency, this tree against an older one, side by side.

Run from the repository root:  python bench/s3_latency.py [--old HEAD~1] [--files 60] [--rounds 4] [--latency 0.05]
A moto S3 server in this process stands in for S3; each GET and PUT of an object waits --latency
seconds before it is answered (S3's time to first byte, tens of milliseconds, which costs no CPU:
a moto server on the same machine answers at once and hides it). The corpus: --files WAVs of 10-30 s
(bench/local_targets.py's), `-ac 1 -ar 48000` to WAV, 2 workers. The rounds alternate the trees;
printed: each round's wall seconds, and this tree's speed over the older tree's per round (>1: faster).
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
sys.path.insert(0, str(REPO / "bench"))

from local_targets import compiled, make_wav_corpus, old_tree  # noqa: E402
from run_bench import MotoS3  # noqa: E402

from ffleet.ffmpeg import find_binaries  # noqa: E402


def add_latency(seconds: float) -> None:
    """Every GET or PUT of an object (inputs in/, outputs out/) waits `seconds` in moto's request thread."""
    import werkzeug.serving

    answer = werkzeug.serving.WSGIRequestHandler.run_wsgi

    def delayed(handler):
        if handler.command in ("GET", "PUT") and ("/in/" in handler.path or "/out/" in handler.path):
            time.sleep(seconds)
        return answer(handler)

    werkzeug.serving.WSGIRequestHandler.run_wsgi = delayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="HEAD~1", help="the tree to compare with (git ref; default HEAD~1)")
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per object GET/PUT (default 0.05)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ffleet-bench")
    args = parser.parse_args(argv)

    corpus = args.workdir / "targets-wav-100"
    files = make_wav_corpus(corpus, 100)[: args.files]
    trees = {"ffleet": compiled(REPO / "src"), "ffleet_old": compiled(old_tree(args.old, args.workdir / "s3-old-tree"))}
    add_latency(args.latency)
    s3 = MotoS3()
    s3.upload_corpus(files, corpus, "bench-in")
    bins = find_binaries()
    request = args.workdir / "s3-latency-request.json"
    request.write_text(json.dumps({
        "name": "s3-latency", "input": {"s3_bucket": "bench-in", "s3_prefix": "in/"},
        "output": {"s3_bucket": "bench-out", "s3_prefix": "out/", "extension": ".wav", "file_options": "-ac 1 -ar 48000"},
        "results": {"s3_bucket": "bench-out", "s3_prefix": "results/"}}))
    print(f"{len(files)} files, {args.latency * 1000:.0f} ms per object GET/PUT, ffleet_old = git archive {args.old}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    wall: dict[str, list[float]] = {name: [] for name in trees}
    try:
        for rnd in range(args.rounds):
            for name, src in (list(trees.items()) if rnd % 2 == 0 else list(trees.items())[::-1]):
                s3.empty_bucket("bench-out")
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "ffleet.cli", "run", str(request), "--json", "--no-progress", "--workers", "2"],
                    capture_output=True, text=True,
                    env={**os.environ, "PYTHONPATH": str(src), "AWS_ENDPOINT_URL": s3.url,
                         "FFLEET_FFMPEG": bins.ffmpeg, "FFLEET_FFPROBE": bins.ffprobe})
                wall[name].append(time.perf_counter() - started)
                if proc.returncode != 0 or json.loads(proc.stdout)["files"]["succeeded"] != len(files):
                    raise RuntimeError(f"{name}: ffleet run failed ({proc.returncode}): {proc.stderr[-2000:]}")
            print(f"  round {rnd + 1}: " + ", ".join(f"{n} {w[-1]:.2f} s" for n, w in wall.items()), flush=True)
    finally:
        s3.stop()
    speed = [o / n for n, o in zip(wall["ffleet"], wall["ffleet_old"])]
    print(f"ffleet over ffleet_old: {statistics.median(speed):.3f} (rounds {min(speed):.3f}-{max(speed):.3f}); "
          f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
