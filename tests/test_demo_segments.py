"""The segments demo end to end (issue 17): espeak-ng speech with pauses, cut at the pauses, manifests loaded."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from ffleet.demo import PAUSES
from ffleet.ffmpeg import find_binaries

pytestmark = pytest.mark.slow
ESPEAK = shutil.which("espeak-ng")


def silences(path: Path, noise_db: float = -40, min_seconds: float = 0.3) -> list[tuple[float, float]]:
    """The pauses FFmpeg's silencedetect finds in path: measured here, not taken from the demo's list."""
    ffmpeg = find_binaries().ffmpeg
    log = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", str(path), "-af",
                          f"silencedetect=noise={noise_db}dB:duration={min_seconds}", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    starts = [float(x) for x in re.findall(r"silence_start: (-?[\d.]+)", log)]
    ends = [float(x) for x in re.findall(r"silence_end: ([\d.]+)", log)]
    return list(zip(starts, ends))


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (scripts/setup --dev installs it as root)")
def test_the_segments_demo_cuts_speech_at_its_pauses_and_the_manifests_load(tmp_path):
    demo = tmp_path / "segments"
    made = subprocess.run([sys.executable, "-m", "ffleet.demo", str(demo), "--segments", ESPEAK],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=300)
    assert made.returncode == 0, made.stderr
    request = json.loads((demo / "segments-request.json").read_text())
    recording = next(Path(request["input"]["path"]).rglob("*.wav"))
    pauses = silences(recording)
    assert len(pauses) >= len(PAUSES)  # the demo's pauses are there (and what cuts may use)

    proc = run_cli("run", str(demo / "segments-request.json"), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = Path(json.loads(proc.stdout)["run"]["results"])
    (record,) = [json.loads(line) for line in (results / "records.jsonl").read_text().splitlines()]
    pieces = record["segments"]
    assert record["status"] == "succeeded" and len(pieces) >= 3
    for piece in pieces:
        assert piece["duration"] <= request["output"]["segment"]["max_seconds"] + 0.01
    # every cut lies inside a pause: no piece begins or ends in the middle of a word
    for piece in pieces[1:]:
        assert any(a - 0.01 <= piece["start"] <= b + 0.01 for a, b in pauses), (piece["start"], pauses)
    assert sum(p["duration"] for p in pieces) == pytest.approx(record["duration_in"], abs=0.1)

    # the manifests: Hugging Face's audiofolder reads the output folder as it is
    datasets = pytest.importorskip("datasets")
    output = Path(request["output"]["path"])
    ds = datasets.load_dataset("audiofolder", data_dir=str(output), split="train")
    assert ds.num_rows == len(pieces)
    nemo = [json.loads(line) for line in (results / "manifests" / "nemo.jsonl").read_text().splitlines()]
    assert [row["duration"] for row in nemo] == pytest.approx([p["duration"] for p in pieces], abs=1e-3)
    assert all(Path(row["audio_filepath"]).is_file() for row in nemo)
