"""Fault: inputs far larger or far more numerous than usual. ffleet's own memory must stay bounded.

What is measured: the peak RSS of the `ffleet run` Python process itself: VmHWM from
/proc/self/status, read inside that process as it exits. (Not getrusage's ru_maxrss: Linux carries
the parent's RSS across fork+exec into it, so it reported pytest's size, 78 MB, as ffleet's.)
FFmpeg and ffprobe are separate processes with their own memory and are not included.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_json
from ffleet.ffmpeg import find_binaries

# Runs the real CLI, then records its own peak RSS (kB) from the kernel's high-water mark.
_MEASURE = (
    "import json, os, re, sys\n"
    "from ffleet.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
    "json.dump({'self_kb': hwm}, open(os.environ['FFLEET_RSS_OUT'], 'w'))\n"
    "sys.exit(rc)\n"
)


def run_measured(tmp_path: Path, request: Path, env: dict | None = None, workers: int = 2) -> tuple[dict, dict]:
    """(summary, {'self_kb': peak RSS}) of one `ffleet run` in a subprocess."""
    rss_file = tmp_path / f"rss-{request.stem}.json"
    full_env = dict(os.environ, PYTHONPATH=str(REPO / "src"), FFLEET_RSS_OUT=str(rss_file), **(env or {}))
    p = subprocess.run([sys.executable, "-c", _MEASURE, "run", str(request), "--json", "--no-progress",
                        "--workers", str(workers)], capture_output=True, text=True, env=full_env, timeout=600)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return json.loads(p.stdout), json.loads(rss_file.read_text())


def _request(tmp_path, name, inp, **output):
    return write_json(tmp_path / f"{name}.json", {
        "name": name, "input": {"path": str(inp)},
        "output": {"path": str(tmp_path / f"out-{name}"), **output},
    })


@pytest.mark.slow
def test_a_two_hour_file_is_processed_in_bounded_memory(tmp_path):
    """A 2-hour input (8 kHz mono 8-bit WAV, 58 MB: cheap to make and to encode). It must convert
    and verify with its full duration, and ffleet's own peak RSS may exceed that of a 1-second
    file's run by less than 20 MB: ffleet streams files to disk and FFmpeg, never into memory."""
    ff = find_binaries().ffmpeg
    for name, seconds in (("short", 1), ("long", 7200)):
        (tmp_path / name).mkdir()
        subprocess.run([ff, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"sine=f=440:r=8000:d={seconds}",
                        "-ac", "1", "-c:a", "pcm_u8", str(tmp_path / name / f"{name}.wav")], check=True, timeout=300)
    assert (tmp_path / "long" / "long.wav").stat().st_size > 50_000_000
    out = {"extension": ".flac", "file_options": "-c:a flac -compression_level 0"}
    s_short, rss_short = run_measured(tmp_path, _request(tmp_path, "short", tmp_path / "short", **out))
    s_long, rss_long = run_measured(tmp_path, _request(tmp_path, "long", tmp_path / "long", **out))
    assert s_long["files"]["succeeded"] == 1, s_long
    assert abs(s_long["audio_seconds"]["output"] - 7200) < 1
    growth_mb = (rss_long["self_kb"] - rss_short["self_kb"]) / 1024
    print(f"\nffleet peak RSS: 1 s file {rss_short['self_kb'] / 1024:.1f} MB, 2 h file {rss_long['self_kb'] / 1024:.1f} MB "
          f"(+{growth_mb:.1f} MB)")
    assert growth_mb < 20


FAKE_FFMPEG = r"""#!/bin/sh
# Stand-in for FFmpeg in the 10,000-file test: copies the input and prints the log lines ffleet
# parses. Costs ~2 ms, so the test measures ffleet's listing/scheduling/records path, not FFmpeg.
prev=""; for a in "$@"; do [ "$prev" = "-i" ] && src="$a"; prev="$a"; done
for out; do :; done
printf "Input #0, wav, from 'x':\n  Duration: 00:00:00.10, bitrate: 128 kb/s\n  Stream #0:0: Audio: pcm_s16le, 8000 Hz, mono, s16, 128 kb/s\n" >&2
exec cp "$src" "$out"
"""
FAKE_FFPROBE = r"""#!/bin/sh
echo '{"format": {"duration": "0.100000"}, "streams": [{"codec_type": "audio", "codec_name": "pcm_s16le", "sample_rate": "8000", "channels": 1, "duration": "0.100000"}]}'
"""


def _tiny_files(folder: Path, count: int, every: int = 0) -> None:
    """count tiny files in folders of 100; with `every`, all but each every-th one."""
    for i in range(count):
        if every and i % every == 0:
            continue
        d = folder / f"dir{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"clip-{i:05d}.wav").write_bytes(b"RIFF" + i.to_bytes(4, "little") + b"\0" * 56)


@pytest.mark.slow
def test_ten_thousand_tiny_files_in_bounded_memory(tmp_path):
    """10,000 files in one run, against 500 files: ffleet's peak RSS may grow by less than 256 bytes
    per extra file (inputs stream from the listing, results stream to records.jsonl, at most
    2 x workers files are in flight). Holding the listing in a list cost 364 bytes per file (this
    test found it); what remains, ~100 bytes, is CPython's pathlib interning each file name. Every
    file must end with exactly one record and one output.

    Cost, said plainly: on a loaded 2-core box ffleet processes ~30-50 tiny files a second, so
    10,000 processed files would take minutes. In each run 10% of the files are processed (FFmpeg
    is a 2 ms shell stand-in that copies the file; the 2-hour test uses the real one) and 90%
    already have their output, so they go through listing, scheduling, the existence check, a
    record and the summary, but not through FFmpeg."""
    fakes = {}
    for name, body in (("ffmpeg", FAKE_FFMPEG), ("ffprobe", FAKE_FFPROBE)):
        fakes[name] = tmp_path / f"fake-{name}"
        fakes[name].write_text(body)
        fakes[name].chmod(fakes[name].stat().st_mode | stat.S_IEXEC)
    # the stand-in is a shell script that execs cp, which ffleet's sandbox refuses (it lets FFmpeg
    # start no other program): this test measures the listing path, so it runs without the sandbox
    env = {"FFLEET_FFMPEG": str(fakes["ffmpeg"]), "FFLEET_FFPROBE": str(fakes["ffprobe"]),
           "FFLEET_SANDBOX_HELPER": str(tmp_path / "no-sandbox-helper")}
    results = {}
    for count in (500, 10_000):
        _tiny_files(tmp_path / f"in{count}", count)
        _tiny_files(tmp_path / f"out-n{count}", count, every=10)  # 9 of 10 outputs exist already
        req = _request(tmp_path, f"n{count}", tmp_path / f"in{count}", extension=".wav")
        results[count] = run_measured(tmp_path, req, env=env, workers=4)
    s, rss = results[10_000]
    assert s["files"] == {"total": 10_000, "succeeded": 1_000, "skipped": 9_000, "failed": 0, "rejected": 0, "not_done": 0}
    recs = next((tmp_path / "out-n10000.ffleet-results").rglob("records.jsonl")).read_text().splitlines()
    assert len(recs) == 10_000 and len({json.loads(r)["key"] for r in recs}) == 10_000
    assert sum(1 for _ in (tmp_path / "out-n10000").rglob("*.wav")) == 10_000
    per_file = (rss["self_kb"] - results[500][1]["self_kb"]) * 1024 / 9_500
    print(f"\nffleet peak RSS: 500 files {results[500][1]['self_kb'] / 1024:.1f} MB, 10,000 files "
          f"{rss['self_kb'] / 1024:.1f} MB: {per_file:.0f} bytes per extra file; wall {s['wall_seconds']:.0f} s")
    assert per_file < 256
