"""A plain PCM WAV read from its header in Python says what libav says of it; anything unusual goes to libav."""
from __future__ import annotations

import itertools
import struct
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from ffleet import verify, wav_header
from ffleet.ffmpeg import find_binaries, input_guard

av = pytest.importorskip("av")
GUARD = input_guard()
WHITELIST = GUARD[3]


def ffmpeg_wav(path: Path, codec: str = "pcm_s16le", channels: int = 1, rate: int = 16000, seconds: float = 1.2345,
               extra: tuple[str, ...] = ()) -> Path:
    subprocess.run([find_binaries().ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=440:sample_rate={rate}:duration={seconds}", "-ac", str(channels), "-c:a", codec,
                    *extra, "-y", str(path)], check=True)
    return path


def libav(path: Path) -> dict | None:
    info = verify.read_with_pyav(av, path, GUARD)
    return asdict(info) if info is not None else None


@pytest.mark.parametrize("codec,channels,rate,tags", list(itertools.product(
    ["pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le"], [1, 2, 6], [8000, 11025, 48000], [False, True])))
def test_what_ffmpeg_writes_reads_as_libav_reads_it(tmp_path, codec, channels, rate, tags):
    # 6 channels and 24/32 bits: WAVE_FORMAT_EXTENSIBLE; without bitexact FFmpeg adds a LIST chunk
    extra = ("-metadata", "title=a title of odd length") if tags else ("-fflags", "+bitexact")
    path = ffmpeg_wav(tmp_path / "a.wav", codec, channels, rate, extra=extra)
    fields = wav_header.read(path, WHITELIST)
    assert fields is not None
    assert fields == libav(path)  # the same streams, codec, rate, channels, demuxer and duration, to the microsecond


@pytest.mark.parametrize("codec", ["pcm_f32le", "pcm_f64le", "pcm_alaw", "pcm_mulaw", "adpcm_ms"])
def test_other_wav_codecs_are_left_to_libav(tmp_path, codec):
    path = ffmpeg_wav(tmp_path / "a.wav", codec, 1, 8000)
    assert libav(path) is not None and wav_header.read(path, WHITELIST) is None


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, offset = [], 12
    while offset + 8 <= len(data):
        cid, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        out.append((cid, data[offset + 8:offset + 8 + size]))
        offset += 8 + size + (size & 1)
    return out


def _wav(chunks: list[tuple[bytes, bytes]], riff_extra: int = 0, magic: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + b"".join(cid + struct.pack("<I", len(b)) + b + (b"\0" if len(b) & 1 else b"") for cid, b in chunks)
    return magic + struct.pack("<I", len(body) + riff_extra) + body


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> list[tuple[bytes, bytes]]:
    path = ffmpeg_wav(tmp_path_factory.mktemp("wav") / "plain.wav", "pcm_s16le", 2, 8000, extra=("-fflags", "+bitexact"))
    chunks = _chunks(path.read_bytes())
    assert [c for c, _ in chunks] == [b"fmt ", b"data"]
    return chunks


def _fmt(plain, **changes) -> bytes:
    names = ("tag", "channels", "rate", "byte_rate", "block_align", "bits")
    values = dict(zip(names, struct.unpack_from("<HHIIHH", plain[0][1])))
    values.update(changes)
    return struct.pack("<HHIIHH", *(values[n] for n in names))


def test_chunks_libav_skips_are_skipped_here_too(tmp_path, plain):
    fmt, data = plain
    for layout in ([(b"JUNK", b"x" * 27), fmt, data], [fmt, (b"LIST", b"INFOabc"), data], [fmt, data, (b"id3 ", b"z" * 5)]):
        path = tmp_path / "a.wav"
        path.write_bytes(_wav(layout))
        assert wav_header.read(path, WHITELIST) == libav(path) != None  # noqa: E711


HOSTILE = {
    # each goes to libav, whose verdict (and message) stands
    "header only": lambda p: _wav([p[0], (b"data", b"")]),
    "truncated samples": lambda p: _wav([p[0], p[1]])[:-100],
    "riff size too small": lambda p: _wav(p, riff_extra=-2),
    "riff size too large": lambda p: _wav(p, riff_extra=1000),
    "half a sample": lambda p: _wav([p[0], (b"data", p[1][1][:-1])]),
    "rf64": lambda p: _wav([(b"ds64", b"\0" * 28), *p], magic=b"RF64"),
    "ds64 in riff": lambda p: _wav([(b"ds64", b"\0" * 28), *p]),
    "data before fmt": lambda p: _wav([p[1], p[0]]),
    "two fmt": lambda p: _wav([p[0], p[0], p[1]]),
    "no data": lambda p: _wav([p[0]]),
    "block align wrong": lambda p: _wav([(b"fmt ", _fmt(p, block_align=2)), p[1]]),
    "byte rate wrong": lambda p: _wav([(b"fmt ", _fmt(p, byte_rate=1)), p[1]]),
    "12 bits": lambda p: _wav([(b"fmt ", _fmt(p, bits=12, block_align=3, byte_rate=24000)), p[1]]),
    "no channels": lambda p: _wav([(b"fmt ", _fmt(p, channels=0, block_align=0, byte_rate=0)), p[1]]),
    "rate 0": lambda p: _wav([(b"fmt ", _fmt(p, rate=0, byte_rate=0)), p[1]]),
    "float tag": lambda p: _wav([(b"fmt ", _fmt(p, tag=3)), p[1]]),
    "fmt of 14 bytes": lambda p: _wav([(b"fmt ", p[0][1][:14]), p[1]]),
    "chunk size past the file": lambda p: _wav(p)[:40] + b"\xff\xff\xff\x7f" + _wav(p)[44:],
    "a LIST past 64 KiB": lambda p: _wav([p[0], (b"LIST", b"INFO" + b"a" * 70_000), p[1]]),
    "not wave": lambda p: _wav(p).replace(b"WAVE", b"AVI ", 1),
    "empty": lambda p: b"",
    "garbage": lambda p: b"RIFF" + b"\xff" * 100,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_anything_unusual_is_left_to_libav(tmp_path, plain, case):
    path = tmp_path / "a.wav"
    path.write_bytes(HOSTILE[case](plain))
    assert wav_header.read(path, WHITELIST) is None


def test_not_read_here_when_wav_is_not_on_the_whitelist(tmp_path):
    path = ffmpeg_wav(tmp_path / "a.wav")
    assert wav_header.read(path, WHITELIST) is not None
    assert wav_header.read(path, "mp3,flac") is None
    assert wav_header.read(tmp_path / "missing.wav", WHITELIST) is None


def test_read_media_takes_a_plain_wav_from_its_header_unless_ffprobe_is_asked_for(tmp_path, monkeypatch):
    path = ffmpeg_wav(tmp_path / "a.wav")
    monkeypatch.delenv("FFLEET_VERIFY", raising=False)
    back = verify.read_media(path, GUARD, find_binaries())
    assert back.reader == verify.WAV_HEADER and asdict(back.info) == libav(path)
    flac = ffmpeg_wav(tmp_path / "a.flac", "flac")
    monkeypatch.setenv("FFLEET_VERIFY", "pyav")
    assert verify.read_media(flac, GUARD, find_binaries()).reader == verify.IN_PROCESS_PYAV
    assert verify.read_media(path, GUARD, find_binaries()).reader == verify.WAV_HEADER
    if find_binaries().ffprobe:
        monkeypatch.setenv("FFLEET_VERIFY", "ffprobe")
        assert verify.read_media(path, GUARD, find_binaries()).reader == "ffprobe"


@pytest.mark.parametrize("samples", [1, 5, 6, 11025, 11027])
def test_the_duration_is_rounded_to_the_microsecond_as_libav_rounds_it(tmp_path, samples):
    # 5 samples at 11025 Hz last 453.51 us: libav says 454 (av_rescale_q rounds to the nearest)
    fmt = struct.pack("<HHIIHH", 1, 1, 11025, 22050, 2, 16)
    path = tmp_path / "a.wav"
    path.write_bytes(_wav([(b"fmt ", fmt), (b"data", b"\x01\x00" * samples)]))
    assert wav_header.read(path, WHITELIST) == libav(path)


def test_a_run_of_wav_outputs_starts_no_verifier(tmp_path, monkeypatch):
    from ffleet.request import parse_request
    from ffleet.results import SUCCEEDED
    from ffleet.storage import ListedObject
    from ffleet.worker import WorkContext, run_items

    monkeypatch.delenv("FFLEET_VERIFY", raising=False)
    (tmp_path / "in").mkdir()
    for i in range(3):
        ffmpeg_wav(tmp_path / "in" / f"a{i}.wav", "pcm_s16le", 2, 44100)
    request = parse_request({"name": "t", "input": {"path": str(tmp_path / "in")},
                             "output": {"path": str(tmp_path / "out"), "file_options": "-ac 1 -ar 16000"}})
    ctx = WorkContext.for_request(request, work_dir=tmp_path / "work")
    items = [ListedObject(f"a{i}.wav", 1) for i in range(3)]
    results = list(run_items(ctx, items, workers=2))
    assert [r.status for r in results] == [SUCCEEDED] * 3 and {r.codec for r in results} == {"pcm_s16le"}
    assert ctx.verifiers.started == 0


@pytest.mark.parametrize("case", ["header only", "truncated samples"])
def test_an_ffmpeg_that_exits_0_with_a_broken_wav_still_fails_that_file(tmp_path, monkeypatch, plain, case):
    # the header reader passes these to libav (the verifier), whose verdict stands: invalid_output
    import os
    import stat
    import sys

    from ffleet.request import parse_request
    from ffleet.results import FAILED
    from ffleet.storage import ListedObject
    from ffleet.worker import WorkContext, process_item

    monkeypatch.delenv("FFLEET_VERIFY", raising=False)
    monkeypatch.setenv("FFLEET_SANDBOX_LIBS", os.environ.get("FFLEET_SANDBOX_LIBS", "") + os.pathsep + str(tmp_path))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(HOSTILE[case](plain))
    fake = tmp_path / "fake-ffmpeg"
    fake.write_text(f"#!{sys.executable}\nimport shutil, sys\nshutil.copyfile({str(broken)!r}, sys.argv[-1])\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "in").mkdir()
    ffmpeg_wav(tmp_path / "in" / "x.wav", seconds=2.0)
    request = parse_request({"name": "t", "input": {"path": str(tmp_path / "in")},
                             "output": {"path": str(tmp_path / "out")}})
    ctx = WorkContext.for_request(request, work_dir=tmp_path / "work")
    ctx.binaries = verify.Binaries(str(fake), find_binaries().ffprobe)
    r = process_item(ctx, ListedObject("x.wav", 1))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r
    assert not (tmp_path / "out" / "x.wav").exists()
