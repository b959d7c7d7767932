"""Reading outputs back: the sandboxed verifier, PyAV in-process and ffprobe agree, and all keep an input's protection."""
import shutil
import stat
import os
import sys
from pathlib import Path

import pytest

from ffleet import verify, wav_header, worker
from ffleet.demo import make_tone
from ffleet.ffmpeg import Binaries, find_binaries, input_guard
from ffleet.request import parse_request
from ffleet.results import FAILED, SUCCEEDED
from ffleet.storage import ListedObject
from ffleet.verifier import VerifierPool
from ffleet.verify import read_media
from ffleet.worker import WorkContext, process_item

av = pytest.importorskip("av")


@pytest.fixture(autouse=True)
def pyav_chosen(monkeypatch, tmp_path):
    """These tests are about the in-process reader, which FFLEET_VERIFY=pyav chooses. Their stand-in
    FFmpegs (Python scripts) read files in tmp_path, which the sandbox must then let them."""
    monkeypatch.setenv("FFLEET_VERIFY", "pyav")
    monkeypatch.setenv("FFLEET_SANDBOX_LIBS", os.environ.get("FFLEET_SANDBOX_LIBS", "") + os.pathsep + str(tmp_path))
    # and about libav's readers, which a plain PCM WAV no longer reaches (ffleet.wav_header, its own tests)
    monkeypatch.setattr(wav_header, "read", lambda path, whitelist: None)


def test_the_sandboxed_verifier_is_the_default_reader(monkeypatch):
    """PyAV in ffleet's own process would parse outputs outside the kernel sandbox: opt-in only.
    Without PyAV, ffprobe (in the sandbox) reads them."""
    monkeypatch.setattr(verify, "_av", None)
    monkeypatch.delenv("FFLEET_VERIFY")
    assert verify.reader_name() == "verifier"
    monkeypatch.setenv("FFLEET_VERIFY", "pyav")
    assert verify.reader_name() == "pyav"
    monkeypatch.setenv("FFLEET_VERIFY", "ffprobe")
    assert verify.reader_name() == "ffprobe"
    monkeypatch.setenv("FFLEET_VERIFY", "in-process")
    with pytest.raises(ValueError, match="FFLEET_VERIFY='in-process'"):
        verify.reader_name()
    monkeypatch.delenv("FFLEET_VERIFY")
    monkeypatch.setitem(sys.modules, "av", None)  # not installed
    assert verify.reader_name() == "ffprobe"


@pytest.fixture(params=["verifier", "pyav", "ffprobe"])
def reader(request, monkeypatch):
    """Each test runs with the sandboxed verifier (the default), PyAV in-process, and with PyAV
    missing (the import fails: ffprobe)."""
    monkeypatch.setattr(verify, "_av", None)
    if request.param == "verifier":
        monkeypatch.delenv("FFLEET_VERIFY")
    if request.param == "ffprobe":
        monkeypatch.delenv("FFLEET_VERIFY")
        monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    assert verify.reader_name() == request.param
    return request.param


def make_ctx(tmp_path, output_options="-ac 1 -ar 48000", extension=".flac", binaries=None):
    request = parse_request({
        "name": "t", "input": {"path": str(tmp_path / "in")},
        "output": {"path": str(tmp_path / "out"), "extension": extension, "file_options": output_options},
    })
    (tmp_path / "in").mkdir(exist_ok=True)
    ctx = WorkContext.for_request(request, work_dir=tmp_path / "work")
    if binaries:
        ctx.binaries = binaries
    return ctx


def put(tmp_path, key, src) -> ListedObject:
    dest = tmp_path / "in" / key
    shutil.copyfile(src, dest)
    return ListedObject(key, dest.stat().st_size)


def fake_ffmpeg(tmp_path, output_text: str) -> Binaries:
    """An 'FFmpeg' that exits 0 after writing output_text as the output file."""
    script = tmp_path / "fake-ffmpeg"
    script.write_text(f"#!{sys.executable}\nimport sys\nopen(sys.argv[-1], 'w').write({output_text!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return Binaries(str(script), find_binaries().ffprobe)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a", ".opus", ".w64"])
def test_pyav_reads_what_ffprobe_reads(tmp_path, ext, monkeypatch):
    """The three readers agree: PyAV in-process, the sandboxed verifier, ffprobe."""
    path = make_tone(tmp_path / f"t{ext}", 2.5, ext, rate=32000, channels=1) if ext != ".w64" else None
    if path is None:  # demo.make_tone has no w64: convert its WAV
        import subprocess
        wav = make_tone(tmp_path / "t.wav", 2.5, ".wav", rate=32000, channels=1)
        path = tmp_path / "t.w64"
        subprocess.run([find_binaries().ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(wav), str(path)], check=True)
    monkeypatch.setattr(verify, "_av", None)
    by_pyav = read_media(path, input_guard(), find_binaries())
    monkeypatch.delenv("FFLEET_VERIFY")
    pool = VerifierPool((str(tmp_path),))
    try:
        by_verifier = read_media(path, input_guard(), find_binaries(), verifiers=pool)
    finally:
        pool.close()
    monkeypatch.setattr(verify, "_av", False)  # as when `import av` failed
    monkeypatch.setenv("FFLEET_VERIFY", "ffprobe")
    by_ffprobe = read_media(path, input_guard(), find_binaries())
    assert (by_pyav.reader, by_verifier.reader, by_ffprobe.reader) == ("pyav", "verifier", "ffprobe")
    assert pool.started == 1 and by_verifier.cpu_seconds > 0
    b = by_ffprobe.info
    for a in (by_pyav.info, by_verifier.info):
        assert (a.stream_types, a.codec, a.sample_rate, a.channels) == (b.stream_types, b.codec, b.sample_rate, b.channels)
        assert (a.codec, a.sample_rate, a.channels) != (None, None, None)
        # libav 8 (PyAV) and FFmpeg 6 estimate an MP3's length tens of ms apart; the worker allows 0.5 s
        assert abs(a.duration - b.duration) < 0.1 and abs(a.duration - 2.5) < 0.1
    assert by_verifier.info == by_pyav.info  # the same code, in another process


def test_a_wav_whose_header_says_no_samples_is_read_in_full(tmp_path, monkeypatch):
    """The small probe answers only what the header fully describes; anything else is read again."""
    wav = make_tone(tmp_path / "t.wav", 1.0)
    header_only = tmp_path / "h.wav"
    header_only.write_bytes(wav.read_bytes()[:44])
    monkeypatch.setattr(verify, "_av", None)
    opened = []
    real_open = verify._open
    monkeypatch.setattr(verify, "_open", lambda av, path, options: opened.append(options.get("probesize")) or real_open(av, path, options))
    info = read_media(header_only, input_guard(), find_binaries()).info
    assert opened == ["4096", None]
    assert info is None or not info.duration  # the worker fails either
    opened.clear()
    assert read_media(wav, input_guard(), find_binaries()).info.duration == pytest.approx(1.0, abs=0.01)
    assert opened == ["4096"]


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
def test_a_playlist_output_is_not_followed(tmp_path, reader, kind):
    """An output whose bytes are a playlist naming another local file must not verify as that file."""
    secret = make_tone(tmp_path / "secret.mp3", 3.0)  # libav 8 takes no WAV as an HLS segment
    playlist = tmp_path / ("output" + _suffix(kind))
    playlist.write_text(_playlist(kind, secret, 3.0))
    # the fixture is real: opened without the whitelists, libav follows the playlist to the secret
    with av.open(str(playlist)) as container:
        assert container.format.name in ("hls", "concat") and container.streams.audio
    pool = VerifierPool((str(tmp_path),))
    try:
        assert read_media(playlist, input_guard(), find_binaries(), verifiers=pool).info is None
    finally:
        pool.close()


def _suffix(kind: str) -> str:
    # libav 7.1+ detects HLS only in a file named .m3u8/.m3u; a request may name its outputs so
    return ".m3u8" if kind == "hls" else ".wav"


def _playlist(kind: str, target: Path, seconds: float) -> str:
    """A playlist that passes for `seconds` of audio (the duration check sees what it states)."""
    if kind == "hls":
        return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:{seconds},\n{target}\n#EXT-X-ENDLIST\n"
    # concat's safe mode (on by default) refuses absolute paths, not a file beside the list (in the
    # worker: the staged input of an S3 object, for one)
    return f"ffconcat version 1.0\nfile '{target.name}'\nduration {seconds}\n"


# hls: a request cannot name a .m3u8 output any more (the option policy refuses it: test_policy*.py)
@pytest.mark.parametrize("kind", ["ffconcat"])
def test_the_worker_fails_a_playlist_written_as_the_output(tmp_path, tone_cache, reader, kind):
    secret = make_tone(tmp_path / "secret.mp3", 1.0)
    ctx = make_ctx(tmp_path, extension=_suffix(kind), binaries=fake_ffmpeg(tmp_path, _playlist(kind, secret, 1.0)))
    if kind == "ffconcat":  # the 'FFmpeg' also leaves the secret beside its output
        script = Path(ctx.binaries.ffmpeg)
        script.write_text(script.read_text() + f"import shutil, os; shutil.copy({str(secret)!r}, os.path.dirname(sys.argv[-1]))\n")
    r = process_item(ctx, put(tmp_path, "x.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r
    assert f"reads as {'hls' if kind == 'hls' else 'concat'}" in r.detail, r.detail  # ffprobe says why
    assert not (tmp_path / "out" / ("x" + _suffix(kind))).exists()


def test_header_only_output_fails_with_either_reader(tmp_path, tone_cache, reader):
    good = make_tone(tmp_path / "g.m4a", 1.0)
    ctx = make_ctx(tmp_path, extension=".m4a", binaries=fake_ffmpeg(tmp_path, ""))
    script = Path(ctx.binaries.ffmpeg)  # writes the first 200 bytes of a real m4a: a header, no samples
    script.write_text(f"#!{sys.executable}\nimport sys\nopen(sys.argv[-1], 'wb').write(open({str(good)!r}, 'rb').read()[:200])\n")
    r = process_item(ctx, put(tmp_path, "x.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r


def test_one_process_per_file(tmp_path, tone_cache, monkeypatch, reader):
    """With PyAV in-process the worker starts FFmpeg and nothing else; the verifier adds one
    process for the run, ffprobe one per file."""
    import subprocess

    started = []
    real = subprocess.Popen

    class Counting(real):
        def __init__(self, argv, *a, **kw):
            started.append(Path(argv[-1]).name)
            super().__init__(argv, *a, **kw)

    ctx = make_ctx(tmp_path, extension=".wav")
    monkeypatch.setattr(subprocess, "Popen", Counting)
    for i in range(3):
        r = process_item(ctx, put(tmp_path, f"a{i}.wav", tone_cache(".wav", 1.0)))
        assert r.status == SUCCEEDED and r.sample_rate == 48000 and r.channels == 1 and r.codec == "pcm_s16le", r
    if reader == "verifier":  # FFmpeg per file, and one verifier for all three
        assert len(started) == 4, started
        assert started.count("ffleet.verifier") == 1, started
    else:
        per_file = 1 if reader == "pyav" else 2
        assert len(started) == 3 * per_file, started
    ctx.verifiers.close()


def test_verification_cpu_is_counted(tmp_path, tone_cache, monkeypatch):
    """The in-process read's CPU lands in the record, as ffprobe's did."""
    monkeypatch.setattr(verify, "_av", None)
    ctx = make_ctx(tmp_path, extension=".wav")
    reads = []
    real = verify.read_media
    monkeypatch.setattr(worker, "read_media", lambda *a, **kw: reads.append(real(*a, **kw)) or reads[-1])
    ffmpeg_cpu = []
    real_run = worker.run_process
    monkeypatch.setattr(worker, "run_process", lambda argv, **kw: ffmpeg_cpu.append(real_run(argv, **kw)) or ffmpeg_cpu[-1])
    r = process_item(ctx, put(tmp_path, "a.wav", tone_cache(".wav", 1.0)))
    assert r.status == SUCCEEDED and len(reads) == 1 and reads[0].cpu_seconds > 0
    assert r.cpu_seconds == pytest.approx(ffmpeg_cpu[0].cpu_seconds + reads[0].cpu_seconds)


def test_the_guard_reaches_libav_whole_and_must_hold_both_whitelists():
    guard = input_guard(["s16le"])
    options = verify._guard_options(guard)
    assert options["protocol_whitelist"] == "file" and options["format_whitelist"].endswith(",s16le")
    assert verify._guard_options([*guard, "-probesize", "5000000"])["probesize"] == "5000000"
    for broken in (guard[:2], guard[2:], guard[:-1]):
        with pytest.raises(ValueError):
            verify._guard_options(broken)


@pytest.mark.parametrize("ext", [".m4a", ".mp3", ".opus", ".flac"])
def test_no_decoder_runs_in_ffleets_process(tmp_path, ext, monkeypatch):
    """Reading back opens no decoder in-process (libav would, to find the sample format), yet
    reads the same as ffprobe."""
    path = make_tone(tmp_path / f"t{ext}", 1.5, ext, channels=1)
    monkeypatch.setattr(verify, "_av", None)
    av.logging.set_level(av.logging.VERBOSE)
    try:
        with av.logging.Capture() as logs:
            info = read_media(path, input_guard(), find_binaries()).info
    finally:
        av.logging.set_level(None)
    refused = [m for _, _, m in logs if "not on whitelist" in m]
    if ext == ".m4a":  # AAC in MP4: libav tries its decoder for the sample format, and is refused
        assert refused, logs
    assert all("Codec" in m for m in refused), refused  # refused decoders, not the demuxer
    monkeypatch.setattr(verify, "_av", False)  # ffprobe, where the decoder may run (sandboxed)
    by_ffprobe = read_media(path, input_guard(), find_binaries()).info
    assert (info.stream_types, info.codec, info.sample_rate, info.channels) == (
        by_ffprobe.stream_types, by_ffprobe.codec, by_ffprobe.sample_rate, by_ffprobe.channels)
    assert info.channels == 1 and abs(info.duration - 1.5) < 0.1


def test_what_pyav_cannot_open_gets_ffprobes_verdict(tmp_path, monkeypatch):
    """A file PyAV's libav refuses is read again by ffprobe, whose answer stands: never stricter
    than ffprobe, whichever libav PyAV bundles."""
    path = make_tone(tmp_path / "t.flac", 1.0, ".flac")
    monkeypatch.setattr(verify, "_av", None)

    def refuse(av_module, p, options):
        raise av_module.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(verify, "_open", refuse)
    back = read_media(path, input_guard(), find_binaries())
    assert back.reader == "ffprobe" and back.info.codec == "flac" and abs(back.info.duration - 1.0) < 0.05


def test_without_ffprobe_pyavs_verdict_stands(tmp_path, tone_cache, monkeypatch):
    """An image may ship a static FFmpeg and no ffprobe: a file PyAV cannot open then fails as
    invalid_output, not as a storage error from the missing program."""
    monkeypatch.setattr(verify, "_av", None)

    def no_ffprobe(*a, **kw):  # what starting a missing program raises (without an exec prefix)
        raise FileNotFoundError(2, "No such file or directory", "ffprobe")

    monkeypatch.setattr(verify, "probe", no_ffprobe)
    header_only = tmp_path / "h.wav"
    header_only.write_bytes(tone_cache(".wav", 1.0).read_bytes()[:44])
    assert read_media(header_only, input_guard(), find_binaries()).info is None
    good = make_tone(tmp_path / "g.m4a", 1.0)
    ctx = make_ctx(tmp_path, extension=".m4a", binaries=fake_ffmpeg(tmp_path, ""))
    Path(ctx.binaries.ffmpeg).write_text(
        f"#!{sys.executable}\nimport sys\nopen(sys.argv[-1], 'wb').write(open({str(good)!r}, 'rb').read()[:200])\n")
    r = process_item(ctx, put(tmp_path, "x.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r
