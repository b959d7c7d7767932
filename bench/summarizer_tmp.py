"""How much /tmp the summarizer needs per file of a cloud run: a local copy of a run, summarized as the Lambda does."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from ffleet import summarize
from ffleet.results import ItemResult

LAMBDA_TMP_MIB = (512, 10240)


def make_run(folder: Path, files: int, per_batch: int, failing: bool) -> None:
    """records/<batch>.jsonl as workers write them; keys shaped like a real corpus (about 50 characters)."""
    (folder / "records").mkdir(parents=True)
    for start in range(0, files, per_batch):
        lines = []
        for i in range(start, min(start + per_batch, files)):
            key = f"media-assets/podcasts/show-{i % 500:03d}/episode-{i:07d}.wav"
            out = "output/" + key[:-4] + ".flac"
            if failing:
                r = ItemResult(key=key, status="failed", reason="corrupt_input", output_key=out,
                               detail="Invalid data found when processing input (ffmpeg exit 183)")
            else:
                r = ItemResult(key=key, status="succeeded", output_key=out, bytes_in=2_000_000, bytes_out=900_000)
            lines.append(r.to_json())
        (folder / "records" / f"batch-{start // per_batch:06d}.jsonl").write_text("\n".join(lines) + "\n")


def peak_tmp_bytes(folder: Path) -> int:
    """Summarize with output claims on (a request with output.extension); the temp folder only grows,
    so its size when the summary is done is the peak."""
    sizes = []
    real = tempfile.TemporaryDirectory

    class Measured(real):
        def cleanup(self):
            sizes.append(sum(p.stat().st_size for p in Path(self.name).rglob("*") if p.is_file()))
            super().cleanup()

    summarize.tempfile.TemporaryDirectory = Measured
    try:
        summarize.summarize_cloud(str(folder), None, write=False, outputs_may_collide=True)
    finally:
        summarize.tempfile.TemporaryDirectory = real
    return sizes[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--files-per-job", type=int, default=1000)
    args = ap.parse_args()
    for failing in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            make_run(Path(tmp) / "run", args.files, args.files_per_job, failing)
            started = time.process_time()
            used = peak_tmp_bytes(Path(tmp) / "run")
            cpu = time.process_time() - started
        per_million = used / args.files * 1_000_000
        label = "every file failed" if failing else "every file succeeded"
        print(f"{label}: {used / 2**20:.1f} MiB for {args.files} files = {per_million / 2**20:.0f} MiB per million files; "
              f"{cpu / args.files * 1e6:.0f} CPU seconds per million files on this machine")
        for mib in LAMBDA_TMP_MIB:
            print(f"  /tmp of {mib} MiB holds about {mib * 2**20 / used * args.files / 1e6:.1f} million files")


if __name__ == "__main__":
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    main()
