"""Reading outputs back: PyAV in-process and the ffprobe fallback agree, and both keep an input's protection."""
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest

from ffleet import verify, worker
from ffleet.demo import make_tone
from ffleet.ffmpeg import Binaries, find_binaries, input_guard
from ffleet.request import parse_request
from ffleet.results import FAILED, SUCCEEDED
from ffleet.storage import ListedObject
from ffleet.verify import read_media
from ffleet.worker import WorkContext, process_item

av = pytest.importorskip("av")


@pytest.fixture(params=["pyav", "ffprobe"])
def reader(request, monkeypatch):
    """Each test runs with PyAV, and with PyAV missing (the import fails: the ffprobe fallback)."""
    monkeypatch.setattr(verify, "_av", None)
    if request.param == "ffprobe":
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
    path = make_tone(tmp_path / f"t{ext}", 2.5, ext, rate=32000, channels=1) if ext != ".w64" else None
    if path is None:  # demo.make_tone has no w64: convert its WAV
        import subprocess
        wav = make_tone(tmp_path / "t.wav", 2.5, ".wav", rate=32000, channels=1)
        path = tmp_path / "t.w64"
        subprocess.run([find_binaries().ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(wav), str(path)], check=True)
    monkeypatch.setattr(verify, "_av", None)
    by_pyav = read_media(path, input_guard(), find_binaries())
    monkeypatch.setattr(verify, "_av", False)  # as when `import av` failed
    by_ffprobe = read_media(path, input_guard(), find_binaries())
    assert (by_pyav.reader, by_ffprobe.reader) == ("pyav", "ffprobe")
    a, b = by_pyav.info, by_ffprobe.info
    assert (a.stream_types, a.codec, a.sample_rate, a.channels) == (b.stream_types, b.codec, b.sample_rate, b.channels)
    assert (a.codec, a.sample_rate, a.channels) != (None, None, None)
    # libav 8 (PyAV) and FFmpeg 6 estimate an MP3's length tens of ms apart; the worker allows 0.5 s
    assert abs(a.duration - b.duration) < 0.1 and abs(a.duration - 2.5) < 0.1


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
    assert read_media(playlist, input_guard(), find_binaries()).info is None


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


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
def test_the_worker_fails_a_playlist_written_as_the_output(tmp_path, tone_cache, reader, kind):
    secret = make_tone(tmp_path / "secret.mp3", 1.0)
    ctx = make_ctx(tmp_path, extension=_suffix(kind), binaries=fake_ffmpeg(tmp_path, _playlist(kind, secret, 1.0)))
    if kind == "ffconcat":  # the 'FFmpeg' also leaves the secret beside its output
        script = Path(ctx.binaries.ffmpeg)
        script.write_text(script.read_text() + f"import shutil, os; shutil.copy({str(secret)!r}, os.path.dirname(sys.argv[-1]))\n")
    r = process_item(ctx, put(tmp_path, "x.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r
    assert not (tmp_path / "out" / ("x" + _suffix(kind))).exists()


def test_header_only_output_fails_with_either_reader(tmp_path, tone_cache, reader):
    good = make_tone(tmp_path / "g.m4a", 1.0)
    ctx = make_ctx(tmp_path, extension=".m4a", binaries=fake_ffmpeg(tmp_path, ""))
    script = Path(ctx.binaries.ffmpeg)  # writes the first 200 bytes of a real m4a: a header, no samples
    script.write_text(f"#!{sys.executable}\nimport sys\nopen(sys.argv[-1], 'wb').write(open({str(good)!r}, 'rb').read()[:200])\n")
    r = process_item(ctx, put(tmp_path, "x.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r


def test_one_process_per_file(tmp_path, tone_cache, monkeypatch, reader):
    """With PyAV the worker starts FFmpeg and nothing else; the fallback adds ffprobe."""
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
    per_file = 1 if reader == "pyav" else 2
    assert len(started) == 3 * per_file, started


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


def test_the_next_ffmpeg_starts_while_an_output_is_verified(tmp_path, tone_cache, monkeypatch):
    """run_items keeps `workers` FFmpegs busy: a finished file's read-back and store do not hold
    its FFmpeg slot. With one worker, the second file's FFmpeg starts while the first is verified."""
    from ffleet.worker import run_items

    monkeypatch.setattr(verify, "_av", None)
    ctx = make_ctx(tmp_path, extension=".wav")
    items = [put(tmp_path, f"a{i}.wav", tone_cache(".wav", 1.0)) for i in range(4)]
    running, most, overlapped = [0], [0], []
    changed = threading.Condition()
    real_run, real_read = worker.run_process, worker.read_media

    def run(argv, **kw):
        with changed:
            running[0] += 1
            most[0] = max(most[0], running[0])
            changed.notify_all()
        try:
            return real_run(argv, **kw)
        finally:
            with changed:
                running[0] -= 1

    def read(path, *a, **kw):
        if path.name.startswith("output"):  # an output: is another FFmpeg running (or starting) meanwhile?
            with changed:
                overlapped.append(changed.wait_for(lambda: running[0] > 0, timeout=5))
        return real_read(path, *a, **kw)

    monkeypatch.setattr(worker, "run_process", run)
    monkeypatch.setattr(worker, "read_media", read)
    results = list(run_items(ctx, items, workers=1))
    assert [r.status for r in results] == [SUCCEEDED] * 4
    assert most[0] == 1, "more FFmpegs at once than workers"
    assert overlapped[:3] == [True, True, True], overlapped  # the last file has no next one
