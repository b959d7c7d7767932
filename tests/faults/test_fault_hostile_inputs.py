"""Fault: a hostile input file (not a hostile request). Found while writing the request fuzzing."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_json
from ffleet.demo import make_tone


@pytest.mark.xfail(strict=True, reason="open: FFmpeg probes an HLS playlist saved as .wav and opens the "
                   "files it lists; ffleet passes no -format_whitelist/-protocol_whitelist (left for the lead)")
def test_a_playlist_disguised_as_audio_cannot_make_ffmpeg_read_other_files(tmp_path):
    """A 90-byte 'evil.wav' that is really an HLS playlist naming a local file ffleet never named.
    ffleet must not publish that file's audio as the output of evil.wav (it should fail the file).
    Today it does: FFmpeg's format probing picks the hls demuxer, which opens the listed file."""
    secret = make_tone(tmp_path / "secret" / "secret.wav", 3.0)
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "evil.wav").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{secret}\n#EXT-X-ENDLIST\n")
    req = write_json(tmp_path / "job.json", {"name": "evil", "input": {"path": str(inp)},
                                             "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
                                             "processing": {"tolerated_failure_percent": 100}})
    p = run_cli("run", str(req), "--json", "--no-progress")
    s = json.loads(p.stdout)
    assert s["files"]["succeeded"] == 0, "FFmpeg read a file that only the input named"
    assert not (tmp_path / "out" / "evil.flac").exists()
