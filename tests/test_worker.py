"""The worker with real FFmpeg: good files convert and verify; each kind of bad file fails alone, with a reason."""
import os
import shutil
import subprocess
import stat
import sys
from pathlib import Path

import pytest

from ffleet.demo import FORMATS, make_video_only
from ffleet.ffmpeg import Binaries, find_binaries
from ffleet.request import parse_request
from ffleet.results import FAILED, SKIPPED, SUCCEEDED
from ffleet.storage import ListedObject, LocalStorage
from ffleet.worker import WorkContext, adds_no_video, expected_duration, process_item, run_items


def make_ctx(tmp_path, output_options="-ac 1 -ar 48000", extension=".flac", binaries=None, **processing):
    request = parse_request({
        "name": "t", "input": {"path": str(tmp_path / "in"), "file_options": processing.pop("input_options", "null")},
        "output": {"path": str(tmp_path / "out"), "extension": extension, "file_options": output_options},
        "processing": processing,
    })
    (tmp_path / "in").mkdir(exist_ok=True)
    ctx = WorkContext.for_request(request, work_dir=tmp_path / "work")
    if binaries:
        ctx.binaries = binaries
    return ctx


def put(tmp_path, key, src=None, data=None):
    dest = tmp_path / "in" / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src is not None:
        shutil.copyfile(src, dest)
    else:
        dest.write_bytes(data)
    return ListedObject(key, dest.stat().st_size)


@pytest.mark.parametrize("ext", list(FORMATS))
def test_each_format_converts_and_is_verified(tmp_path, tone_cache, ext):
    ctx = make_ctx(tmp_path)
    item = put(tmp_path, f"sub dir/tone{ext}", tone_cache(ext, 3.0))
    r = process_item(ctx, item)
    assert r.status == SUCCEEDED, r
    assert r.output_key == "sub dir/tone.flac"
    assert (tmp_path / "out/sub dir/tone.flac").stat().st_size == r.bytes_out > 0
    assert abs(r.duration_in - 3.0) < 0.1 and abs(r.duration_out - 3.0) < 0.1
    assert (r.sample_rate, r.channels, r.codec) == (48000, 1, "flac")
    assert r.cpu_seconds > 0 and r.wall_seconds > 0
    assert not list((tmp_path / "work").iterdir()), "temporary files left behind"


def test_empty_input(tmp_path):
    r = process_item(make_ctx(tmp_path), put(tmp_path, "empty.wav", data=b""))
    assert (r.status, r.reason) == (FAILED, "empty_input")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_garbage_input_is_corrupt(tmp_path):
    r = process_item(make_ctx(tmp_path), put(tmp_path, "junk.mp3", data=b"not audio\n" * 500))
    assert (r.status, r.reason) == (FAILED, "corrupt_input")
    assert "junk.mp3" in r.detail and "/tmp" not in r.detail  # names the key, not our temp path


def test_truncated_m4a_is_corrupt(tmp_path, tone_cache):
    data = tone_cache(".m4a", 3.0).read_bytes()
    r = process_item(make_ctx(tmp_path), put(tmp_path, "cut.m4a", data=data[: len(data) // 3]))
    assert (r.status, r.reason) == (FAILED, "corrupt_input"), r


def test_video_only_input_has_no_audio(tmp_path):
    src = make_video_only(tmp_path / "v.mp4")
    ctx = make_ctx(tmp_path)
    r = process_item(ctx, put(tmp_path, "v.mp4", src))
    assert (r.status, r.reason) == (FAILED, "no_audio_stream")
    assert not (tmp_path / "out" / "v.flac").exists()


def test_video_only_allowed_when_request_says_video(tmp_path):
    src = make_video_only(tmp_path / "v.mp4")
    ctx = make_ctx(tmp_path, output_options="-c:v copy", extension=".mkv", require_audio=False)
    r = process_item(ctx, put(tmp_path, "v.mp4", src))
    assert r.status == SUCCEEDED, r


def test_header_only_wav_input_gives_invalid_output(tmp_path, tone_cache):
    header = tone_cache(".wav", 1.0).read_bytes()[:44]  # RIFF header, no samples
    r = process_item(make_ctx(tmp_path), put(tmp_path, "hdr.wav", data=header))
    assert r.status == FAILED and r.reason in ("invalid_output", "corrupt_input"), r
    assert not (tmp_path / "out" / "hdr.flac").exists()


def _fake_ffmpeg(tmp_path, body: str) -> Path:
    script = tmp_path / "fake-ffmpeg"
    script.write_text(f"#!{sys.executable}\nimport sys, time\nout = sys.argv[-1]\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_ffmpeg_exit_0_with_header_only_output_is_a_failure(tmp_path, tone_cache, monkeypatch):
    # What FFmpeg did here with an m4a read from a pipe: exit 0 after writing a header-only file.
    monkeypatch.setenv("FFLEET_SANDBOX_LIBS", os.environ["FFLEET_SANDBOX_LIBS"] + os.pathsep + str(tmp_path))
    header_only = tmp_path / "header.m4a"
    from ffleet.demo import make_tone
    good = make_tone(tmp_path / "g.m4a", 1.0)
    header_only.write_bytes(good.read_bytes()[:200])
    fake = _fake_ffmpeg(tmp_path, f"import shutil; shutil.copyfile({str(header_only)!r}, out)")
    ctx = make_ctx(tmp_path, extension=".m4a", binaries=Binaries(str(fake), find_binaries().ffprobe))
    r = process_item(ctx, put(tmp_path, "x.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r
    assert not (tmp_path / "out" / "x.m4a").exists()


def test_hung_ffmpeg_is_killed_at_timeout(tmp_path, tone_cache):
    # an input looped 100 times and read in real time runs 101 s: a real hang, not a fake
    # (the policy refuses an endless loop, -stream_loop -1)
    ctx = make_ctx(tmp_path, input_options="-re -stream_loop 100", timeout_seconds_per_file=2)
    r = process_item(ctx, put(tmp_path, "loop.wav", tone_cache(".wav", 1.0)))
    assert (r.status, r.reason) == (FAILED, "timeout"), r
    assert not (tmp_path / "out" / "loop.flac").exists()


def test_trim_options_are_respected_by_duration_check(tmp_path, tone_cache):
    ctx = make_ctx(tmp_path, output_options="-ac 1 -t 1.5", input_options="-ss 0.5")
    r = process_item(ctx, put(tmp_path, "t.wav", tone_cache(".wav", 4.0)))
    assert r.status == SUCCEEDED, r
    assert abs(r.duration_out - 1.5) < 0.1


def test_duration_mismatch_fails_unless_disabled(tmp_path, tone_cache):
    item_src = tone_cache(".wav", 4.0)
    ctx = make_ctx(tmp_path, output_options="-af atempo=2")
    r = process_item(ctx, put(tmp_path, "fast.wav", item_src))
    assert (r.status, r.reason) == (FAILED, "invalid_output") and "expected" in r.detail
    ctx2 = make_ctx(tmp_path, output_options="-af atempo=2", verify_duration=False)
    assert process_item(ctx2, put(tmp_path, "fast.wav", item_src)).status == SUCCEEDED


def test_existing_output_is_skipped_before_any_work(tmp_path, tone_cache):
    ctx = make_ctx(tmp_path)
    item = put(tmp_path, "a.wav", tone_cache(".wav", 1.0))
    assert process_item(ctx, item).status == SUCCEEDED
    out = tmp_path / "out" / "a.flac"
    before = (out.stat().st_mtime_ns, out.read_bytes())
    r = process_item(ctx, item)
    assert r.status == SKIPPED and r.cpu_seconds == 0
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before


def test_overwrite_reencodes(tmp_path, tone_cache):
    ctx = make_ctx(tmp_path)
    item = put(tmp_path, "a.wav", tone_cache(".wav", 1.0))
    process_item(ctx, item)
    ctx.request.output.overwrite = True
    assert process_item(ctx, item).status == SUCCEEDED


def test_a_bad_file_never_stops_the_batch(tmp_path, tone_cache):
    ctx = make_ctx(tmp_path)
    items = [put(tmp_path, f"g{i}.wav", tone_cache(".wav", 1.0)) for i in range(4)]
    items.insert(2, put(tmp_path, "bad.wav", data=b"RIFF garbage"))
    items.insert(0, ListedObject("missing.wav"))
    results = {r.key: r for r in run_items(ctx, items, workers=2)}
    assert len(results) == 6
    assert results["bad.wav"].reason == "corrupt_input"
    assert results["missing.wav"].reason == "not_found"
    assert sum(r.status == SUCCEEDED for r in results.values()) == 4


def test_local_store_is_atomic_and_leaves_no_temp(tmp_path):
    store = LocalStorage(tmp_path / "o")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    store.store(src, "a/b c.bin")
    assert (tmp_path / "o/a/b c.bin").read_bytes() == b"x" * 1000
    assert [p.name for p in (tmp_path / "o/a").iterdir()] == ["b c.bin"]


@pytest.mark.parametrize("tokens,input_duration,expected", [
    ({"input": [], "output": []}, 10.0, 10.0),
    ({"input": ["-ss", "2"], "output": ["-t", "3"]}, 10.0, 3.0),
    ({"input": [], "output": ["-ss", "00:00:08"]}, 10.0, 2.0),
    ({"input": [], "output": ["-to", "4", "-ss", "1"]}, 10.0, 3.0),
    ({"input": [], "output": ["-t", "30"]}, 10.0, 10.0),
])
def test_expected_duration(tokens, input_duration, expected):
    assert expected_duration(input_duration, tokens) == pytest.approx(expected)


@pytest.mark.parametrize("layout, channels", [("mono", 1), ("stereo", 2), ("3.0", 3), ("5.1(side)", 6), ("3 channels", 3)])
def test_input_info_counts_channels(layout, channels):
    from ffleet.ffmpeg import parse_input_info

    log = ("Input #0, wav, from 'x.wav':\n  Duration: 00:00:01.00, bitrate: 768 kb/s\n"
           f"  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 48000 Hz, {layout}, s16, 1536 kb/s\n")
    info = parse_input_info(log)
    assert (info.audio_codec, info.sample_rate, info.channels) == ("pcm_s16le", 48000, channels)


def test_input_info_describes_the_audio_stream_ffmpeg_converted():
    from ffleet.ffmpeg import parse_input_info

    log = ("Input #0, matroska,webm, from 'two.mka':\n  Duration: 00:00:02.00, start: 0.000000, bitrate: 120 kb/s\n"
           "  Stream #0:0: Video: mjpeg (Baseline), yuvj444p(pc), 64x64, 90k tbr (attached pic)\n"
           "  Stream #0:1(eng): Audio: flac, 44100 Hz, mono, s32 (24 bit)\n"
           "  Stream #0:2(eng): Audio: opus, 48000 Hz, stereo, fltp (default)\n"
           "Stream mapping:\n  Stream #0:2 -> #0:0 (opus (native) -> flac (native))\n"
           "  Stream #0:0 -> #0:1 (mjpeg (native) -> png (native))\n")
    info = parse_input_info(log)
    assert (info.audio_codec, info.sample_rate, info.channels) == ("opus", 48000, 2)
    assert info.stream_types == ["video", "audio", "audio"]
    before_mapping = parse_input_info(log.split("Stream mapping:")[0])  # a log cut short: the first audio stream
    assert (before_mapping.audio_codec, before_mapping.channels) == ("flac", 1)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_iter_chunks_streams_an_object_and_names_what_is_missing(tmp_path, backend, request):
    """Both stores stream the same bytes in bounded chunks, and fail the same way."""
    from ffleet.storage import NotFound, S3Storage, StorageError

    data = bytes(range(256)) * 1000  # 256 kB
    if backend == "local":
        store = LocalStorage(tmp_path)
    else:
        client = request.getfixturevalue("s3_endpoint")
        client.create_bucket(Bucket="chunks")
        store = S3Storage("chunks", client)
    store.write_bytes("a dir/obj+1.bin", data)
    chunks = list(store.iter_chunks("a dir/obj+1.bin", size=50_000))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 50_000 and len(chunks) >= 6
    with pytest.raises(NotFound, match="missing.bin does not exist"):
        list(store.iter_chunks("missing.bin"))
    if backend == "local":  # a key may not lead out of the folder
        with pytest.raises(StorageError, match="'..' path segment"):
            list(store.iter_chunks("../outside.bin"))


@pytest.mark.parametrize("options, ext, source, adds", [
    ("-ac 1 -ar 16000", ".flac", ".mp4", True),
    ("-c:a libmp3lame -b:a 64k", ".mp3", ".MOV", True),  # an audio codec decides nothing about video
    ("-ac 1", ".M4A", ".mkv", True),
    ("-ac 1 -f flac", ".bin", ".webm", True),  # the muxer named, not the extension
    ("-ac 1", ".flac", "", True),  # no extension: it may be a video
    ("-ac 1", ".flac", ".mp3", False),  # an audio file: its picture is cover art, carried over as FFmpeg does
    ("-ac 1", ".mp3", ".flac", False),
    ("-ac 1", ".mp4", ".mp4", False),  # a container for video: the user's video is kept
    ("-ac 1 -f mp4", ".flac", ".mp4", False),
    ("-ac 1 -c:v copy", ".flac", ".mp4", False),  # the user keeps the picture track
    ("-map 0:a:0", ".flac", ".mp4", False),  # the user selects the streams
    ("-c copy", ".flac", ".mp4", False),  # a codec for every stream
    ("-vf scale=320:240", ".flac", ".mp4", False),
    ("-vn", ".flac", ".mp4", False),  # already there
])
def test_adds_no_video(options, ext, source, adds):
    from ffleet.policy import parse_options

    assert adds_no_video(parse_options(options), ext, source) is adds


def test_video_input_to_an_audio_container_decodes_no_video(tmp_path):
    """An H.264 video converted to FLAC: ffleet adds -vn, so FFmpeg does not decode every frame and
    re-encode it as PNG for a FLAC that keeps none of it (160x the CPU: bench/video_input.py)."""
    ff = find_binaries().ffmpeg
    (tmp_path / "in").mkdir()
    subprocess.run([ff, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=160x120:d=2", "-f", "lavfi", "-i", "sine=d=2",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(tmp_path / "in" / "clip.mp4")], check=True)
    ctx = make_ctx(tmp_path, "-ac 1 -ar 16000")
    argv = ctx.ffmpeg_argv(tmp_path / "in" / "clip.mp4", tmp_path / "out.flac")
    assert argv[-3:] == ["-vn", "-y", str(tmp_path / "out.flac")]
    res = process_item(ctx, ListedObject("clip.mp4"))
    assert res.status == SUCCEEDED and res.codec == "flac" and res.duration_out == pytest.approx(2.0, abs=0.1)
    (tmp_path / "keep").mkdir()
    keep = make_ctx(tmp_path / "keep", "-ac 1 -ar 16000", extension=".mp4")  # a video container keeps the video
    assert "-vn" not in keep.ffmpeg_argv(tmp_path / "in" / "clip.mp4", tmp_path / "out.mp4")
    # measured at the output too: the analysis joins the -af of the audio-only command
    measured = WorkContext.for_request(parse_request({
        "name": "t", "input": {"path": str(tmp_path / "in")}, "quality": {"measure": True},
        "output": {"path": str(tmp_path / "measured"), "extension": ".flac", "file_options": "-ac 1 -ar 16000"}}),
        work_dir=tmp_path / "work-measured")
    assert "-vn" in measured.ffmpeg_argv(tmp_path / "in" / "clip.mp4", tmp_path / "m.flac")
    res = process_item(measured, ListedObject("clip.mp4"))
    assert res.status == SUCCEEDED and res.extra["audio"]["measured_at"] == "output"
    assert res.extra["audio"]["duration"] == pytest.approx(2.0, abs=0.1)


def test_video_input_bench_harness_runs():  # not its figures: those are not checked
    from conftest import REPO

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "video_input.py"), "--seconds", "1", "--size", "160x120",
                           "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ffmpeg as given" in proc.stdout and "ffleet (adds -vn)" in proc.stdout and "x the CPU without -vn" in proc.stdout


def test_inputs_that_share_an_output_key_are_failed_not_overwritten(tmp_path, tone_cache):
    """song.mp3 and song.wav both become song.flac: the first listed converts, the other fails with
    output_collision (naming the first), on every run; the extension that no other input shares converts."""
    from ffleet.worker import run_items

    ctx = make_ctx(tmp_path, "-ac 1 -ar 16000")
    items = [put(tmp_path, "a/song.mp3", tone_cache(".mp3", 2.0)), put(tmp_path, "a/song.wav", tone_cache(".wav", 3.0)),
             put(tmp_path, "a/other.wav", tone_cache(".wav", 3.0))]
    for attempt in ("first run", "re-run"):
        results = {r.key: r for r in run_items(ctx, items, workers=2)}
        expected = SKIPPED if attempt == "re-run" else SUCCEEDED
        assert results["a/song.mp3"].status == expected and results["a/other.wav"].status == expected, attempt
        clash = results["a/song.wav"]
        assert (clash.status, clash.reason, clash.output_key) == (FAILED, "output_collision", "a/song.flac"), attempt
        assert "a/song.mp3" in clash.detail and "a/song.flac" in clash.detail
    # the output is the first input's: 2 s, not the colliding 3 s
    from ffleet.ffmpeg import probe

    info, _ = probe(tmp_path / "out" / "a" / "song.flac", find_binaries())
    assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.1)


def test_without_an_extension_change_outputs_cannot_collide(tmp_path, tone_cache):
    from ffleet.worker import run_items

    ctx = make_ctx(tmp_path, "-ac 1 -ar 16000", extension=None)  # the original sample's mapping: key + suffix
    items = [put(tmp_path, "song.mp3", tone_cache(".mp3", 2.0)), put(tmp_path, "song.wav", tone_cache(".wav", 2.0))]
    assert sorted((r.key, r.status, r.output_key) for r in run_items(ctx, items, workers=2)) == [
        ("song.mp3", SUCCEEDED, "song.mp3"), ("song.wav", SUCCEEDED, "song.wav")]
    assert not list((tmp_path / "work").glob("claims-*"))  # no claims kept, and none left behind


def test_no_more_ffmpegs_run_at_once_than_workers(tmp_path, tone_cache, monkeypatch):
    # twice as many threads as workers: the others fetch, read back and store meanwhile
    import threading
    import time

    from ffleet import worker

    ctx = make_ctx(tmp_path)
    items = [put(tmp_path, f"g{i}.wav", tone_cache(".wav", 1.0)) for i in range(8)]
    lock, running, most = threading.Lock(), [0], [0]
    real = worker.run_process

    def counting(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # long enough for every thread to reach its FFmpeg
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(worker, "run_process", counting)
    results = list(run_items(ctx, items, workers=2))
    assert [r.status for r in results] == [SUCCEEDED] * 8
    assert most[0] == 2


def test_a_slow_fetch_does_not_keep_the_cpu_idle(tmp_path, tone_cache, monkeypatch):
    # one worker: while the first file is fetched slowly (S3's latency), the second one converts
    import threading
    import time

    from ffleet import worker

    ctx = make_ctx(tmp_path)
    items = [put(tmp_path, f"g{i}.wav", tone_cache(".wav", 1.0)) for i in range(2)]
    events: list[str] = []
    real_fetch, real_run = ctx.input_store.readable_path, worker.run_process

    def slow_fetch(key, staging):
        if key == "g0.wav":
            time.sleep(1.0)
            events.append("g0 fetched")
        return real_fetch(key, staging)

    def recording_run(argv, *args, **kwargs):
        events.append("ffmpeg " + ("g0" if any(a.endswith("g0.wav") for a in argv) else "g1"))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(ctx.input_store, "readable_path", slow_fetch)
    monkeypatch.setattr(worker, "run_process", recording_run)
    results = list(run_items(ctx, items, workers=1))
    assert sorted(r.status for r in results) == [SUCCEEDED, SUCCEEDED]
    assert events.index("ffmpeg g1") < events.index("g0 fetched"), events
