"""The arm64 cpu image's static FFmpeg (imageio-ffmpeg's aarch64 build), run here under QEMU: it has the codecs the README promises, and `ffleet run` converts with it."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from aarch64kit import aarch64_binary, aarch64_ffmpeg
from conftest import run_cli, write_json
from ffleet.ffmpeg import find_binaries

RUNNER, WHY_NOT = aarch64_ffmpeg()
pytestmark = pytest.mark.skipif(RUNNER is None, reason=WHY_NOT)

# what README promises to read and write: codec -> (encoder, decoder)
PROMISED = {"mp3": ("libmp3lame", "mp3"), "aac": ("aac", "aac"), "opus": ("libopus", "opus"),
            "flac": ("flac", "flac"), "vorbis": ("libvorbis", "vorbis")}


def _listed(kind: str) -> set[str]:
    out = subprocess.run([RUNNER, "-hide_banner", f"-{kind}"], capture_output=True, text=True, timeout=120).stdout
    return {m.group(1) for m in re.finditer(r"^ A\S{5} (\S+)", out, re.M)}


def test_the_arm64_build_has_the_promised_codecs_and_soxr():
    encoders, decoders = _listed("encoders"), _listed("decoders")
    assert {enc for enc, _ in PROMISED.values()} <= encoders, sorted(encoders)
    assert {dec for _, dec in PROMISED.values()} <= decoders, sorted(decoders)
    version = subprocess.run([RUNNER, "-hide_banner", "-version"], capture_output=True, text=True, timeout=120).stdout
    configuration = re.search(r"^configuration: (.*)$", version, re.M).group(1).split()
    assert "--enable-libsoxr" in configuration
    # redistributable in an image: GPL, not nonfree (NOTICE names it GPL-3.0-or-later)
    assert "--enable-nonfree" not in configuration and "--enable-version3" in configuration


def test_ffleet_run_converts_every_promised_format_with_the_arm64_build(tmp_path, tone_cache):
    """wav, mp3, flac, opus, m4a (AAC) and ogg (Vorbis) in, each re-encoded in its own format at 16 kHz
    mono through the soxr resampler by the aarch64 FFmpeg in ffleet's sandbox; ffleet's verification
    reads each output back."""
    binary, why_not = aarch64_binary()
    if not binary:
        pytest.skip(why_not)
    src = tmp_path / "in"
    src.mkdir()
    for ext in (".wav", ".mp3", ".flac", ".opus", ".m4a"):
        (src / f"take{ext}").write_bytes(tone_cache(ext, 2.0).read_bytes())
    subprocess.run([find_binaries().ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(src / "take.wav"),
                    "-c:a", "libvorbis", str(src / "take.ogg")], check=True, timeout=120)
    job = write_json(tmp_path / "job.json", {
        "name": "arm64-ffmpeg", "input": {"path": str(src)},
        "output": {"path": str(tmp_path / "out"), "file_options": "-ac 1 -ar 16000 -af aresample=resampler=soxr"},
    })
    proc = run_cli("run", str(job), "--json", env={"FFLEET_FFMPEG": binary, "FFLEET_FFPROBE": find_binaries().ffprobe})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (records_file,) = (tmp_path / "out.ffleet-results").glob("*/records.jsonl")
    records = {r["key"]: r for r in map(json.loads, records_file.read_text().splitlines())}
    # (an Opus stream always decodes at 48 kHz: its header's rate is informative only)
    assert {k: (r["status"], r.get("sample_rate"), r.get("channels")) for k, r in records.items()} == \
        {f"take{ext}": ("succeeded", 48000 if ext == ".opus" else 16000, 1)
         for ext in (".wav", ".mp3", ".flac", ".opus", ".m4a", ".ogg")}
    assert {k: r.get("codec") for k, r in records.items()} == {
        "take.wav": "pcm_s16le", "take.mp3": "mp3", "take.flac": "flac", "take.opus": "opus",
        "take.m4a": "aac", "take.ogg": "vorbis"}
    # the aarch64 build did the work: its own encoder tag is in the output
    assert b"Lavf61" in (tmp_path / "out" / "take.flac").read_bytes()[:4096]
