"""Extra CPU the manifests (results.manifests) add to the summarizer: one cloud run's records, summarized
with and without all three manifests, interleaved in rotating order so machine load hits both alike.

The run is laid out as in S3 (records/<batch>.jsonl, no ResultWriter manifest) in a local folder, with a
third of the records segmented (three segments each) and measured fields on every record; the output
root already holds an earlier run's metadata.jsonl of the same size, so the merge is timed too. Usage:
    python bench/manifests_overhead.py [--records 50000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ffleet.results import ItemResult  # noqa: E402
from ffleet.storage import LocalStorage  # noqa: E402
from ffleet.summarize import summarize_cloud  # noqa: E402

AUDIO = {"lufs": -21.3, "true_peak_db": -3.1, "peak_db": -3.4, "silence_ratio": 0.02, "clipped_samples": 0, "dc_offset": 0.0001}


def make_run(root: Path, records: int, per_batch: int = 1000) -> None:
    (root / "run/records").mkdir(parents=True)
    (root / "out/o").mkdir(parents=True)
    with open(root / "out/o/metadata.jsonl", "w") as f:
        for i in range(records):
            f.write(json.dumps({"file_name": f"old/{i:07d}.flac", "duration": 12.5}) + "\n")
    for b in range(0, records, per_batch):
        with open(root / f"run/records/b{b:07d}.jsonl", "w") as f:
            for i in range(b, min(b + per_batch, records)):
                r = ItemResult(key=f"in/{i:07d}.wav", status="succeeded", output_key=f"o/in/{i:07d}.flac", bytes_in=900_000,
                               bytes_out=400_000, duration_in=25.0, duration_out=25.0, sample_rate=16000, channels=1,
                               codec="flac", wall_seconds=0.4, cpu_seconds=0.3, extra={"audio": AUDIO})
                if i % 3 == 0:
                    r.output_key = f"o/in/{i:07d}"
                    r.extra["segments"] = [
                        {"index": n, "key": f"o/in/{i:07d}/{n:05d}.flac", "start": 10.0 * n, "end": 10.0 * n + 8.0,
                         "duration": 8.0, "bytes_out": 120_000, "audio": AUDIO} for n in range(3)]
                f.write(r.to_json() + "\n")


def summarize_once(root: Path, manifests: bool) -> float:
    cpu = time.process_time()
    summarize_cloud(str(root / "run"), None, outputs_may_collide=False, write=True,
                    manifests=["nemo", "audiofolder", "lhotse"] if manifests else None,
                    outputs=LocalStorage(root / "out"), output_prefix="o/")
    return time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffleet-bench-manifests-") as tmp:
        root = Path(tmp)
        make_run(root, args.records)
        earlier = (root / "out/o/metadata.jsonl").read_bytes()
        times: dict[bool, list[float]] = {False: [], True: []}
        for n in range(args.rounds):
            for manifests in ((False, True) if n % 2 == 0 else (True, False)):
                (root / "out/o/metadata.jsonl").write_bytes(earlier)  # every round merges the same file
                times[manifests].append(summarize_once(root, manifests))
        rows = sum(1 for _ in open(root / "run/manifests/nemo.jsonl"))
    plain, with_m = min(times[False]), min(times[True])
    print(f"{args.records:,} records ({rows:,} manifest rows), best of {args.rounds} rounds, CPU seconds:")
    print(f"  summary only            {plain:.2f} s  ({1e6 * plain / args.records:.0f} us per record)")
    print(f"  + nemo, audiofolder, lhotse  {with_m:.2f} s  ({1e6 * with_m / args.records:.0f} us per record)")
    print(f"  ratio {with_m / plain:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
