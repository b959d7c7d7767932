"""Fault: a hostile input file (not a hostile request). Found while writing the request fuzzing."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_json
from ffleet.demo import make_tone


def test_a_playlist_disguised_as_audio_cannot_make_ffmpeg_read_other_files(tmp_path):
    """A 90-byte 'evil.wav' that is really an HLS playlist naming a local file ffleet never named.
    ffleet must not publish that file's audio as the output of evil.wav: FFmpeg's format probing
    picks the hls demuxer, which would open the listed file; ffleet allows only single-file media
    demuxers over the file protocol, so the file fails as unsupported_format."""
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
    assert s["failures"][0]["reason"] == "unsupported_format" and "hls" in s["failures"][0]["detail"]


@pytest.mark.parametrize("kind", ["concat", "ffconcat"])
def test_a_concat_list_disguised_as_audio_is_refused(tmp_path, kind):
    """The concat demuxer also opens files its input lists; it is not on the input allowlist."""
    secret = make_tone(tmp_path / "secret.wav", 2.0)
    inp = tmp_path / "in"
    inp.mkdir()
    header = "ffconcat version 1.0\n" if kind == "ffconcat" else ""
    (inp / "list.mp3").write_text(f"{header}file '{secret}'\n")
    req = write_json(tmp_path / "job.json", {"name": "evil", "input": {"path": str(inp)},
                                             "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
                                             "processing": {"tolerated_failure_percent": 100}})
    s = json.loads(run_cli("run", str(req), "--json", "--no-progress").stdout)
    assert s["files"]["succeeded"] == 0 and not (tmp_path / "out" / "list.flac").exists()
