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


def _playlist(secret) -> str:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\n{secret}\n#EXT-X-ENDLIST\n"


def test_verifying_an_output_reads_it_with_the_input_whitelists(tmp_path):
    """ffprobe verified ffleet's own outputs without the whitelists: a file whose bytes are an HLS
    playlist was probed as the local file it lists (3 s of audio, so a valid output)."""
    from ffleet.ffmpeg import find_binaries, probe

    secret = make_tone(tmp_path / "secret.wav", 3.0)
    crafted = tmp_path / "output.flac"
    crafted.write_text(_playlist(secret))
    info, result = probe(crafted, find_binaries())  # as the worker verifies an output
    assert info is None and "hls" in result.stderr and "whitelist" in result.stderr, info


def test_an_output_made_of_playlist_bytes_is_not_stored(tmp_path):
    """The same through a request: raw -f u8 in and out copies an input's bytes (a playlist) into
    the output. It was stored as succeeded, with the listed file's duration."""
    secret = make_tone(tmp_path / "secret" / "secret.wav", 3.0)
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "evil.pcm").write_text(_playlist(secret))
    req = write_json(tmp_path / "job.json", {
        "name": "evil", "input": {"path": str(inp), "file_options": "-f u8 -ar 8000 -ac 1"},
        "output": {"path": str(tmp_path / "out"), "extension": ".wav", "file_options": "-c:a copy -f u8"},
        "processing": {"verify_duration": False, "tolerated_failure_percent": 100}})
    s = json.loads(run_cli("run", str(req), "--json", "--no-progress").stdout)
    assert s["files"]["succeeded"] == 0 and not (tmp_path / "out" / "evil.wav").exists(), s["files"]
    assert s["failures"][0]["reason"] == "invalid_output" and "read back" in s["failures"][0]["detail"], s["failures"]
