"""Benchmark: `ffleet worker` in the worker image against a shell loop running the same FFmpeg commands in the same image, on one batch from a moto S3 server, side by side.

Run from the repository root, as root with Docker (scripts/image-test builds the images):
  python bench/container_ratio.py --image ffleet-worker:image-test-cpu
  python bench/container_ratio.py --image <an arm64 image> --files 8 --rounds 1   # under QEMU

Both ways run in one image: the given one plus curl (built once per image, tagged
ffleet-bench-curl:<the image's ID>: the worker image has no HTTP client for a shell). Both start
with `docker run`, so both pay a container's start; both run --workers files at a time, fetch each
input from S3, convert it with the image's /opt/ffmpeg/ffmpeg and the same options, and put the
output into S3:

- ffleet: `ffleet worker` on a batch object, as AWS Batch runs it (it also sandboxes each FFmpeg,
  verifies each output, writes records and a summary);
- shell: `xargs -P <workers>` over presigned URLs made beforehand (moto refuses anonymous
  requests), for each file `curl` GET, `ffmpeg -hide_banner -nostdin -nostats -loglevel error -i in
  <options> -y out`, `curl` PUT, nothing else.

Rounds alternate the order after a warm-up of each; medians. The ratio is shell time / ffleet time
(1.0: ffleet adds nothing; the issue's target is 0.9). Each round writes to its own prefix, so
neither way finds earlier outputs. Results go to bench/results/container-<UTC time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import uuid
import wave
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests" / "cloud"))

import imagekit  # noqa: E402
from ffleet.demo import make_tone  # noqa: E402

MEDIA, OUT, RESULTS = "bench-media", "bench-out", "bench-results"


def curl_image(image: str) -> str:
    """The image plus curl, for the shell loop's transfers (built once per image ID, then reused)."""
    image_id = imagekit.docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip().split(":")[-1]
    tag = f"ffleet-bench-curl:{image_id[:12]}"
    if imagekit.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    dockerfile = (f"FROM {image}\nUSER root\n"
                  "RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n"
                  "USER 10001:10001\n")
    proc = subprocess.run([imagekit.DOCKER, "build", "-q", "--network", "host", "-t", tag, "-"],
                          input=dockerfile, text=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"could not add curl to {image}: {proc.stderr[-1500:]}")
    return tag


def corpus(workdir: Path, files: int, low: float, high: float, seed: int) -> list[Path]:
    rng = random.Random(seed)
    folder = workdir / f"container-{files}-{low:g}-{high:g}-{seed}"
    paths = []
    for n in range(files):
        path = folder / f"take-{n:03d}.wav"
        if not path.exists():
            make_tone(path, round(rng.uniform(low, high), 1), freq=rng.choice([220, 330, 440, 550]))
        paths.append(path)
    return paths


def request(options: str, prefix: str) -> dict:
    return {"name": "container-bench", "input": {"s3_bucket": MEDIA, "s3_prefix": "in/"},
            "output": {"s3_bucket": OUT, "s3_prefix": prefix, "file_options": options}}


def write_batch(s3, keys: list[str], options: str, prefix: str) -> str:
    from ffleet.request import parse_request

    batch_id = uuid.uuid4().hex
    body = {"BatchInput": {"request": parse_request(request(options, prefix)).to_json_dict(),
                           "results_prefix": f"s3://{RESULTS}/runs/{batch_id}/", "batch_id": batch_id},
            "Items": [{"Key": k} for k in keys]}
    s3.put_object(Bucket=RESULTS, Key=f"batches/{batch_id}.json", Body=json.dumps(body).encode())
    return f"s3://{RESULTS}/batches/{batch_id}.json"


def run_ffleet(image: str, endpoint: str, s3, keys: list[str], options: str, prefix: str, workers: int) -> dict:
    batch_uri = write_batch(s3, keys, options, prefix)
    started, started_at = time.monotonic(), time.time()
    env = {"FFLEET_WORKERS": str(workers), **(imagekit.UNDER_QEMU if _emulated(image) else {})}
    proc = imagekit.run_worker(image, endpoint, batch_uri, env=env)
    wall = time.monotonic() - started
    lines = imagekit.log_lines(proc.stdout)
    summary = [line for line in lines if line.get("event") == "batch_summary"]
    # the container shares the host's clock: its "batch started" line says when the files began
    begun = [datetime.fromisoformat(line["timestamp"]).timestamp() - started_at
             for line in lines if line.get("event") == "batch_start"]
    if proc.returncode != 0 or not summary or summary[0]["files"].get("succeeded") != len(keys):
        raise SystemExit(f"ffleet worker did not convert every file (exit {proc.returncode}): "
                         f"{(summary or [{}])[0].get('files')} {proc.stderr[-1500:]} {proc.stdout[-1500:]}")
    return {"wall": wall, "to_batch_start": begun[0] if begun else None, "worker_wall": summary[0]["wall_seconds"],
            "worker_cpu": summary[0]["cpu_seconds"]}


def shell_script(s3, keys: list[str], options: str, prefix: str, workers: int) -> str:
    """The loop: presigned URLs (moto refuses anonymous requests), fetched and put by curl."""
    one = ('d=$(mktemp -d) && curl -sSf -o "$d/in.wav" "$1" '
           f'&& /opt/ffmpeg/ffmpeg -hide_banner -nostdin -nostats -loglevel error -i "$d/in.wav" {options} -y "$d/out.wav" '
           '&& curl -sSf -T "$d/out.wav" "$2" >/dev/null && rm -rf "$d"')
    urls = []
    for key in keys:
        urls.append(s3.generate_presigned_url("get_object", Params={"Bucket": MEDIA, "Key": key}, ExpiresIn=3600))
        urls.append(s3.generate_presigned_url("put_object", Params={"Bucket": OUT, "Key": prefix + key}, ExpiresIn=3600))
    return (f"printf '%s\\n' {' '.join(shlex.quote(u) for u in urls)} "
            f"| xargs -P {workers} -n 2 sh -c {shlex.quote(one)} _")


def run_shell(image: str, endpoint: str, s3, keys: list[str], options: str, prefix: str, workers: int) -> dict:
    argv = [imagekit.DOCKER, "run", "--rm", "--network", "host", "--entrypoint", "/bin/sh", image, "-c",
            shell_script(s3, keys, options, prefix, workers)]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    done = len(s3.list_objects_v2(Bucket=OUT, Prefix=prefix).get("Contents", []))
    if proc.returncode != 0 or done != len(keys):
        raise SystemExit(f"the shell loop did not convert every file (exit {proc.returncode}, {done} outputs): {proc.stderr[-1500:]}")
    return {"wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--image", default="ffleet-worker:image-test-cpu")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--seconds", default="10-30", help="each file's length, a range in seconds")
    ap.add_argument("--options", default="-ac 1 -ar 48000", help="the FFmpeg output options (WAV to WAV)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ffleet-bench"), help="where the corpus is generated, once")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    low, high = map(float, args.seconds.split("-"))

    image = curl_image(args.image)
    arch = imagekit.docker("image", "inspect", "-f", "{{.Architecture}}", image).stdout.strip()
    paths = corpus(args.workdir, args.files, low, high, seed=15)
    os.environ.update(imagekit.CREDENTIALS)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server, endpoint = imagekit.start_moto_server()
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for bucket in (MEDIA, OUT, RESULTS):
            s3.create_bucket(Bucket=bucket)
        keys = []
        for path in paths:
            s3.upload_file(str(path), MEDIA, f"in/{path.name}")
            keys.append(f"in/{path.name}")
        ways = {"ffleet": run_ffleet, "shell": run_shell}
        rounds: dict[str, list[dict]] = {name: [] for name in ways}
        order = list(ways)
        for n in range(args.rounds + 1):  # round 0: the warm-up of each way
            for name in order:
                result = ways[name](image, endpoint, s3, keys, args.options, f"r{n}-{name}/", args.workers)
                if n:
                    rounds[name].append(result)
                print(f"round {n or 'warm-up'} {name}: {result['wall']:.2f} s", file=sys.stderr)
            order.reverse()
    finally:
        server.stop()

    medians = {name: statistics.median(r["wall"] for r in rs) for name, rs in rounds.items()}
    ratio = medians["shell"] / medians["ffleet"]
    audio = sum(_seconds(p) for p in paths)
    print(f"image {args.image} ({arch}, on a {platform.machine()} host{' under QEMU, ffleet without its sandbox' if arch != _docker_arch() else ''}), "
          f"{len(keys)} WAVs ({audio:.0f} s of audio), `{args.options}` to WAV, {args.workers} at a time, "
          f"medians of {args.rounds} rounds:")
    ffleet = rounds["ffleet"]
    print(f"  ffleet worker  {medians['ffleet']:7.2f} s  (from `docker run` to its \"batch started\" line "
          f"{statistics.median(r['to_batch_start'] or float('nan') for r in ffleet):.2f} s; the batch's own wall "
          f"{statistics.median(r['worker_wall'] for r in ffleet):.2f} s, FFmpeg CPU {statistics.median(r['worker_cpu'] for r in ffleet):.2f} s)")
    print(f"  shell loop     {medians['shell']:7.2f} s")
    print(f"  ratio (shell / ffleet): {ratio:.2f}")
    out = args.results / f"container-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"image": args.image, "architecture": arch, "files": len(keys), "audio_seconds": audio,
                               "options": args.options, "workers": args.workers, "rounds": rounds, "medians": medians,
                               "ratio_shell_over_ffleet": ratio, "load_average": os.getloadavg()}, indent=2))
    print(f"  (written to {out})")
    return 0


def _emulated(image: str) -> bool:
    """An image of another architecture runs under QEMU, which gives its guest no seccomp: ffleet then
    runs without its sandbox (imagekit.UNDER_QEMU), which the output says."""
    arch = imagekit.docker("image", "inspect", "-f", "{{.Architecture}}", image).stdout.strip()
    return arch != _docker_arch()


def _seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def _docker_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


if __name__ == "__main__":
    sys.exit(main())
