"""Audio measurements from the converting FFmpeg run, and the quality filters, on generated audio."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from ffleet import audio_quality
from ffleet.audio_quality import analysis_args, global_args, parse_measurements
from ffleet.ffmpeg import find_binaries
from ffleet.request import RequestError, parse_request
from ffleet.results import REJECTED, SUCCEEDED
from ffleet.runner import run_request
from ffleet.worker import WorkContext

RATE = 48000
# Test signals: (name, aevalsrc expression, seconds). Expected values follow from the expressions:
# a 1 kHz sine of peak A in one channel reads 20*log10(A) - 3.01 LUFS (EBU Tech 3341).
SIGNALS = {
    "loud": ("0.9*sin(2*PI*1000*t)", 3.0),  # -3.93 LUFS, peak -0.92 dBFS
    "clean": ("0.1*sin(2*PI*1000*t)", 2.0),  # -23.01 LUFS
    "quiet": ("0.005*sin(2*PI*1000*t)", 2.0),  # -49.03 LUFS, above the -60 dB silence level
    # 1 s of tone, then 3 s at -70 dBFS (below the -60 dB silence threshold): silence share 0.75
    "near_silent": ("if(lt(t,1),0.1,0.0003)*sin(2*PI*1000*t)", 4.0),
    # a quiet tone with a 50 ms burst driven 3.5 dB past full scale, clipped to +/-1
    "clipped": ("if(between(t,1,1.05),clip(1.5*sin(2*PI*1000*t),-1,1),0.1*sin(2*PI*1000*t))", 2.0),
    "dc": ("0.1*sin(2*PI*1000*t)+0.1", 5.0),  # DC offset 0.1 of full scale
    "short": ("0.1*sin(2*PI*1000*t)", 0.3),
}
# Share of a sine driven to 1.5 that sits at the clip level: 1 - (2/pi)*asin(1/1.5)
CLIP_SHARE = 1 - (2 / math.pi) * math.asin(1 / 1.5)


@pytest.fixture(scope="module")
def signals(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("signals")
    ff = find_binaries().ffmpeg
    for name, (expr, seconds) in SIGNALS.items():
        subprocess.run(
            [ff, "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
             f"aevalsrc='{expr}':s={RATE}:d={seconds}", "-c:a", "pcm_s16le", "-y", str(folder / f"{name}.wav")],
            check=True, timeout=60,
        )
    return folder


def _request(tmp_path: Path, inputs: Path, quality: dict | None = None, options: str = "-ac 1 -ar 16000") -> dict:
    req = {"name": "quality-test", "input": {"path": str(inputs)},
           "output": {"path": str(tmp_path / "out"), "extension": ".flac", "file_options": options}}
    if quality is not None:
        req["quality"] = quality
    return req


def _run(tmp_path: Path, inputs: Path, **kw) -> tuple[dict, dict[str, dict]]:
    outcome = run_request(parse_request(_request(tmp_path, inputs, **kw)), workers=2)
    run_dir = Path(outcome.results_uri.removeprefix("file://"))
    records = {json.loads(line)["key"]: json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()}
    return outcome.summary, records


# Where the analysis sits, and a conversion under which the measured samples equal the source's, so
# the expected values below hold exactly: "output" taps the written audio (here 48 kHz mono, as the
# source), "source" analyses the decoded input while the output is resampled.
MODES = {"output": "-ac 1", "source": "-ac 1 -ar 16000"}


@pytest.fixture(scope="module", params=list(MODES))
def measured(request, signals, tmp_path_factory) -> tuple[dict, dict[str, dict]]:
    """One run with measurements asked for and no filters: every file succeeds and carries its measurements."""
    mode = request.param
    return _run(tmp_path_factory.mktemp(f"measured-{mode}"), signals, options=MODES[mode],
                quality={"measure": True, "measure_at": mode})


# --- each property within a stated tolerance ------------------------------------------------------

def test_measurements_are_off_unless_asked_for(signals, tmp_path):
    # off by default: they cost 3-4x the CPU of a cheap conversion (bench/analysis_overhead.py)
    _, records = _run(tmp_path, signals)
    assert all("audio" not in (rec.get("extra") or {}) for rec in records.values())
    _, filtered = _run(tmp_path / "f", signals, quality={"min_seconds": 1})  # a filter turns them on
    assert all("audio" in rec["extra"] for rec in filtered.values())


def test_every_file_succeeds_with_measurements(measured):
    summary, records = measured
    assert summary["files"]["succeeded"] == len(SIGNALS)
    for key, rec in records.items():
        audio = rec["extra"]["audio"]
        assert rec["status"] == SUCCEEDED, rec
        assert audio["sample_rate"] == RATE and audio["channels"] == 1 and audio["codec"] == "pcm_s16le", key
        # the output is described separately (ffprobe)
        mode = audio["measured_at"]
        assert rec["sample_rate"] == (16000 if mode == "source" else RATE) and rec["codec"] == "flac"


@pytest.mark.parametrize("name", list(SIGNALS))
def test_duration_within_10ms(measured, name):
    assert measured[1][f"{name}.wav"]["extra"]["audio"]["duration"] == pytest.approx(SIGNALS[name][1], abs=0.01)


@pytest.mark.parametrize("name, lufs", [("loud", 20 * math.log10(0.9) - 3.01), ("clean", -23.01), ("quiet", -49.03)])
def test_integrated_loudness_within_half_a_lu(measured, name, lufs):
    assert measured[1][f"{name}.wav"]["extra"]["audio"]["lufs"] == pytest.approx(lufs, abs=0.5)


def test_true_peak_of_loud_sine_within_0_2_db(measured):
    audio = measured[1]["loud.wav"]["extra"]["audio"]
    assert audio["true_peak_db"] == pytest.approx(20 * math.log10(0.9), abs=0.2)
    assert audio["peak_db"] == pytest.approx(20 * math.log10(0.9), abs=0.05)
    assert audio["clipped"] is False and audio["clipped_samples"] == 0


def test_silence_share_within_0_03(measured):
    audio = measured[1]
    assert audio["near_silent.wav"]["extra"]["audio"]["silence_ratio"] == pytest.approx(0.75, abs=0.03)
    assert audio["near_silent.wav"]["extra"]["audio"]["silence_seconds"] == pytest.approx(3.0, abs=0.1)
    assert audio["loud.wav"]["extra"]["audio"]["silence_ratio"] == 0
    assert audio["quiet.wav"]["extra"]["audio"]["silence_ratio"] == 0  # -46 dBFS is quiet, not silent


def test_clipped_samples_within_5_percent(measured):
    audio = measured[1]["clipped.wav"]["extra"]["audio"]
    expected = CLIP_SHARE * 0.05 * RATE  # ~1285 samples of the 50 ms burst sit at +/- full scale
    assert audio["clipped"] is True
    assert audio["clipped_samples"] == pytest.approx(expected, rel=0.05)
    assert audio["peak_db"] >= audio_quality.FULL_SCALE_DB


def test_dc_offset_within_0_002_and_flagged(measured):
    records = measured[1]
    assert records["dc.wav"]["extra"]["audio"]["dc_offset"] == pytest.approx(0.1, abs=0.002)
    assert records["dc.wav"]["extra"]["audio"]["dc_offset_flag"] is True
    for name in ("loud", "clean", "clipped"):
        audio = records[f"{name}.wav"]["extra"]["audio"]
        assert abs(audio["dc_offset"]) < 0.001 and audio["dc_offset_flag"] is False, name


def test_dataset_card_in_summary(measured):
    card = measured[0]["dataset"]
    assert card["files"] == {"kept": len(SIGNALS), "rejected": 0, "measured": len(SIGNALS)}
    mode = next(iter(measured[1].values()))["extra"]["audio"]["measured_at"]
    assert card["measured_at"] == {mode: len(SIGNALS)}
    total = sum(s for _, s in SIGNALS.values())
    assert card["hours"]["output"] == pytest.approx(total / 3600, abs=1e-3)
    assert card["codecs"] == {"input": {"pcm_s16le": len(SIGNALS)}, "output": {"flac": len(SIGNALS)}}
    assert sum(card["histograms"]["duration_seconds"]["kept"]) == len(SIGNALS)
    assert card["flagged"] == {"clipped": 1, "dc_offset": 1}
    worst = {o["key"] for o in card["outliers"]}
    assert {"clipped.wav", "dc.wav", "near_silent.wav"} <= worst and "clean.wav" not in worst


# --- filters ---------------------------------------------------------------------------------

FILTERS = {"min_seconds": 1, "max_seconds": 4.5, "max_silence_ratio": 0.5, "min_lufs": -40, "max_lufs": -6,
           "reject_clipped": True}
EXPECTED_REASONS = {
    "loud.wav": ["too_loud"],
    "clean.wav": [],
    "quiet.wav": ["too_quiet"],
    "near_silent.wav": ["too_silent"],
    "clipped.wav": ["clipped"],
    "dc.wav": ["too_long"],
    "short.wav": ["too_short", "too_quiet"],  # 0.3 s is shorter than one 400 ms loudness block: -70 LUFS
}


@pytest.mark.parametrize("keep", [False, True])
def test_each_filter_rejects_with_its_reason(signals, tmp_path, keep):
    summary, records = _run(tmp_path, signals, quality={**FILTERS, "keep_rejected": keep})
    for key, reasons in EXPECTED_REASONS.items():
        rec = records[key]
        out = tmp_path / "out" / key.replace(".wav", ".flac")
        if reasons:
            assert rec["status"] == REJECTED, rec
            assert rec["reason"] == reasons[0] and rec["extra"]["rejected_for"] == reasons, rec
            assert rec["detail"]
            assert out.exists() == keep, f"{out}: keep_rejected={keep}"
            assert ("bytes_out" in rec) == keep
        else:
            assert rec["status"] == SUCCEEDED and out.exists(), rec
    # rejected is not failed: the run is within a 0% tolerance
    assert summary["files"]["rejected"] == 6 and summary["files"]["failed"] == 0
    assert summary["within_tolerance"] is True
    card = summary["dataset"]
    assert card["rejected_by_reason"] == {"too_quiet": 2, "too_loud": 1, "too_silent": 1, "clipped": 1,
                                          "too_long": 1, "too_short": 1}
    assert card["files"]["kept"] == 1 and card["hours"]["output"] == pytest.approx(2 / 3600, abs=1e-4)
    assert list((tmp_path / "out.ffleet-results").glob("*/report.html"))


def test_rejected_file_is_not_in_failed_manifest(signals, tmp_path):
    _run(tmp_path, signals, quality={"min_seconds": 1})
    failed = next((tmp_path / "out.ffleet-results").glob("*/failed-files.jsonl")).read_text()
    assert failed == ""


def test_measures_the_source_over_the_written_span(signals, tmp_path):
    """User -af does not change the measurement (it describes the source); output -t trims it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "clean.wav").write_bytes((signals / "clean.wav").read_bytes())
    _, records = _run(tmp_path, inputs, options="-af volume=-12dB -ss 0.5 -t 00:01", quality={"measure": True})
    rec = records["clean.wav"]
    assert rec["status"] == SUCCEEDED
    assert rec["extra"]["audio"]["measured_at"] == "source"  # output -ss/-t: the tap falls back to the source
    assert rec["extra"]["audio"]["duration"] == pytest.approx(1.0, abs=0.01)
    assert rec["duration_out"] == pytest.approx(1.0, abs=0.05)
    assert rec["extra"]["audio"]["lufs"] == pytest.approx(-23.0, abs=0.5)


def test_measure_false_leaves_the_argv_alone(tmp_path):
    def argv(**quality):
        req = parse_request(_request(tmp_path, tmp_path / "in", quality=quality))
        return WorkContext.for_request(req, work_dir=tmp_path / "w").ffmpeg_argv(Path("a.wav"), Path("b.flac"))

    off, source, output = argv(measure=False), argv(measure=True, measure_at="source"), argv(measure=True)
    assert "null" not in off and "-af" not in off
    # source: a second output appended; the converted output's part is unchanged
    assert source[-3:] == ["-f", "null", "-"] and source[: len(off)] == off
    # output: the user's options as they were, and an -af whose graph ends in the analysis
    assert output[-8:-3] == ["-ac", "1", "-ar", "16000", "-af"] and output[-2:] == ["-y", "b.flac"]
    assert "-map" not in output  # FFmpeg picks the streams, as without the analysis
    graph = output[-3]
    # the audio reaches the split in the format FFmpeg itself converts to for a FLAC output (s16|s32)
    assert graph.startswith("aformat@ffleet_format=sample_fmts=s16|s32:sample_rates=16000:channel_layouts=mono,"
                            "asplit=2[ffleet_out][ffleet_measure];")
    assert graph.endswith(",anullsink")
    an = WorkContext.for_request(parse_request(_request(tmp_path, tmp_path / "in", options="-an", quality={"measure": True})),
                                 work_dir=tmp_path / "w")
    assert an.measuring is False  # nothing to measure when the output drops audio


@pytest.mark.parametrize("options, ext", [
    ("-ac 1 -ar 16000", ".flac"),
    ("-af volume=-6dB,highpass=f=80 -ar 22050", ".wav"),
    ("-af volume=-6dB,highpass=f=80 -ar 22050", ".flac"),  # s16|s32: the format FFmpeg picks must not move
    ("-af loudnorm -ar 16000", ".flac"),
    ("-af volume=-6dB", ".opus"),  # libopus's list of rates
    ("-vn -ac 1 -c:a libmp3lame -b:a 64k", ".mp3"),
    ("-map 0:a:0 -ac 2 -ar 24000 -c:a libopus -b:a 32k", ".opus"),
    ("-ac 1", ".mp4"),  # a video-capable container: FFmpeg's default AAC encoder
])
@pytest.mark.parametrize("ffmpeg", ["bundled", "debian"])
def test_output_tap_writes_the_same_audio(signals, tmp_path, monkeypatch, options, ext, ffmpeg):
    """Measuring at the output must not change a single decoded sample of what is written.

    With the bundled static FFmpeg (local runs) and Debian's (the worker image's FFmpeg 5.1).
    """
    if ffmpeg == "debian":
        if not (Path("/usr/bin/ffmpeg").exists() and Path("/usr/bin/ffprobe").exists()):
            pytest.skip("Debian's ffmpeg is not installed (scripts/setup --dev installs it as root)")
        monkeypatch.setenv("FFLEET_FFMPEG", "/usr/bin/ffmpeg")
        monkeypatch.setenv("FFLEET_FFPROBE", "/usr/bin/ffprobe")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("clipped", "dc"):
        (inputs / f"{name}.wav").write_bytes((signals / f"{name}.wav").read_bytes())
    ff = find_binaries().ffmpeg

    def decoded_md5s(quality: dict, out: str) -> dict[str, str]:
        req = {"name": "tap", "input": {"path": str(inputs)},
               "output": {"path": str(tmp_path / out), "extension": ext, "file_options": options}, "quality": quality}
        outcome = run_request(parse_request(req), workers=2)
        assert outcome.summary["files"]["succeeded"] == 2, outcome.summary
        return {p.name: subprocess.run([ff, "-v", "error", "-i", str(p), "-map", "0:a", "-f", "md5", "-"],
                                       capture_output=True, text=True, check=True).stdout
                for p in sorted((tmp_path / out).glob(f"*{ext}"))}

    plain = decoded_md5s({"measure": False}, "plain")
    tapped = decoded_md5s({"measure": True}, "tapped")
    assert len(plain) == 2 and plain == tapped
    records = (tmp_path / "tapped.ffleet-results").glob("*/records.jsonl")
    for line in next(records).read_text().splitlines():
        assert json.loads(line)["extra"]["audio"]["measured_at"] == "output"


def test_output_tap_measures_the_written_file(signals, tmp_path):
    """Resampled to 16 kHz: the sines keep their loudness, and the clipping counted is the written file's."""
    _, records = _run(tmp_path, signals, quality={"measure": True})  # default: -ac 1 -ar 16000, at the output
    for name, lufs in [("loud", 20 * math.log10(0.9) - 3.01), ("clean", -23.01), ("quiet", -49.03)]:
        assert records[f"{name}.wav"]["extra"]["audio"]["lufs"] == pytest.approx(lufs, abs=0.5), name
    for name, (_, seconds) in SIGNALS.items():
        audio = records[f"{name}.wav"]["extra"]["audio"]
        assert audio["measured_at"] == "output" and audio["duration"] == pytest.approx(seconds, abs=0.01), name
    assert records["dc.wav"]["extra"]["audio"]["dc_offset"] == pytest.approx(0.1, abs=0.002)
    assert records["near_silent.wav"]["extra"]["audio"]["silence_ratio"] == pytest.approx(0.75, abs=0.03)
    clipped = records["clipped.wav"]["extra"]["audio"]
    # an independent astats run over the written FLAC counts the same samples at full scale
    written = subprocess.run(
        [find_binaries().ffmpeg, "-hide_banner", "-nostdin", "-i", str(tmp_path / "out" / "clipped.flac"), "-af",
         "astats=metadata=0:measure_perchannel=none:measure_overall=Peak_count", "-f", "null", "-"],
        capture_output=True, text=True, check=True).stderr
    assert clipped["clipped"] is True
    assert clipped["clipped_samples"] == int(float(written.split("Peak count:")[1].split()[0]))


@pytest.mark.parametrize("measure_at", ["output", "source"])
@pytest.mark.parametrize("ffmpeg", ["bundled", "debian"])
def test_measuring_keeps_the_streams_ffmpeg_picks(tmp_path, monkeypatch, ffmpeg, measure_at):
    """Measuring adds no -map: an MP3's cover art is still written, and of two audio streams the one
    FFmpeg picks (the default one, not the first) is both written and measured."""
    if ffmpeg == "debian":
        if not (Path("/usr/bin/ffmpeg").exists() and Path("/usr/bin/ffprobe").exists()):
            pytest.skip("Debian's ffmpeg is not installed (scripts/setup --dev installs it as root)")
        monkeypatch.setenv("FFLEET_FFMPEG", "/usr/bin/ffmpeg")
        monkeypatch.setenv("FFLEET_FFPROBE", "/usr/bin/ffprobe")
    ff, fp = find_binaries().ffmpeg, find_binaries().ffprobe
    inputs = tmp_path / "in"
    inputs.mkdir()
    gen = [ff, "-v", "error", "-y"]
    subprocess.run([*gen, "-f", "lavfi", "-i", "color=red:s=64x64", "-frames:v", "1", str(tmp_path / "cover.jpg")], check=True)
    subprocess.run([*gen, "-f", "lavfi", "-i", "sine=f=300:d=2", "-c:a", "libmp3lame", str(tmp_path / "a.mp3")], check=True)
    subprocess.run([*gen, "-i", str(tmp_path / "a.mp3"), "-i", str(tmp_path / "cover.jpg"), "-map", "0", "-map", "1",
                    "-c", "copy", "-disposition:v", "attached_pic", str(inputs / "cover.mp3")], check=True)
    # stream 0: quiet mono, not default; stream 1: 20 dB louder stereo, default (FFmpeg's pick)
    subprocess.run([*gen, "-f", "lavfi", "-i", "sine=f=300:d=2,volume=0.1", "-f", "lavfi", "-i", "sine=f=500:d=2",
                    "-filter_complex", "[1]pan=stereo|c0=c0|c1=c0[st]", "-map", "0", "-map", "[st]",
                    "-c:a", "flac", "-disposition:a:0", "0", "-disposition:a:1", "default", str(inputs / "two.mka")],
                   check=True)

    def convert(measure: bool) -> tuple[dict[str, dict], Path]:
        out = tmp_path / f"out-{measure}"
        req = {"name": "streams", "input": {"path": str(inputs)}, "quality": {"measure": measure, "measure_at": measure_at},
               "output": {"path": str(out), "extension": ".flac", "file_options": "-ac 1 -ar 16000"}}
        outcome = run_request(parse_request(req), workers=2)
        assert outcome.summary["files"]["succeeded"] == 2, outcome.summary
        run_dir = Path(outcome.results_uri.removeprefix("file://"))
        return {json.loads(x)["key"]: json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()}, out

    def streams(path: Path) -> list[str]:
        return subprocess.run([fp, "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(path)],
                              capture_output=True, text=True, check=True).stdout.split()

    def audio_md5(path: Path) -> str:
        return subprocess.run([ff, "-v", "error", "-i", str(path), "-map", "0:a", "-f", "md5", "-"],
                              capture_output=True, text=True, check=True).stdout

    _, plain = convert(False)
    records, tapped = convert(True)
    assert streams(plain / "cover.flac") == ["audio", "video"]  # FFmpeg writes the cover art to FLAC ...
    assert streams(tapped / "cover.flac") == streams(plain / "cover.flac")  # ... and still does when measuring
    for name in ("cover.flac", "two.flac"):
        assert audio_md5(tapped / name) == audio_md5(plain / name), name
    # the loudness measured is stream 1's (an independent ebur128): as written, or at the source
    source = [str(inputs / "two.mka"), "-map", "0:a:1"] if measure_at == "source" else [str(plain / "two.flac")]
    expected = subprocess.run([ff, "-hide_banner", "-nostdin", "-i", *source, "-af", "ebur128", "-f", "null", "-"],
                              capture_output=True, text=True, check=True).stderr
    two = records["two.mka"]["extra"]["audio"]
    assert two["measured_at"] == measure_at
    assert (two["codec"], two["channels"]) == ("flac", 2)  # the input stream converted, not the first
    assert two["lufs"] == pytest.approx(float(expected.rsplit("I:", 1)[1].split()[0]), abs=0.2)
    assert records["cover.mp3"]["extra"]["audio"]["measured_at"] == measure_at


@pytest.mark.parametrize("options, ext", [
    ("-ss 0.5 -ac 1", ".flac"),  # output timing acts after any graph
    ("-t 2", ".flac"),
    ("-map 0:a", ".flac"),  # every audio stream, not one
    ("-map 0", ".flac"),
    ("-map 0:a:0 -map 0:a:1", ".flac"),
    ("-map 0:v", ".mp4"),  # no audio stream mapped
    ("-filter volume=2", ".flac"),  # a filter for every stream
    ("-ac 6", ".flac"),  # a layout the rewrite does not spell
    ("-ch_layout 5.1", ".flac"),
    ("-af [in]volume=2", ".flac"),  # labels: not a plain chain
    ("-af volume=2 -filter:a volume=3", ".flac"),
    ("-ar:a:0 16000", ".flac"),
    ("-ac 1 -f matroska", ".flac"),  # no default encoder listed for the muxer
    ("-shortest -ac 1", ".flac"),
    ("-frames:v 1 -ac 1", ".m4a"),  # a video frame limit ends the whole output
    ("-vframes 1 -ac 1", ".m4a"),
    ("-c:a copy", ".flac"),  # stream copy decodes nothing to measure
    ("-ac 1", ".xyz"),  # a container without a known default encoder
    ("-c:a no_such_encoder", ".flac"),
])
def test_output_tap_falls_back_where_the_rewrite_could_change_the_output(options, ext):
    from ffleet.policy import parse_options

    tokens = {"global": [], "input": [], "output": parse_options(options)}
    assert audio_quality.output_tap(tokens, ext, ffmpeg=find_binaries().ffmpeg) is None
    assert audio_quality.output_tap({"global": ["-filter_complex", "anullsrc"], "input": [], "output": []}, ".flac") is None


def test_output_tap_keeps_the_users_chain_and_options():
    from ffleet.policy import parse_options

    ff = find_binaries().ffmpeg
    tap = audio_quality.output_tap({"global": [], "input": [], "output": parse_options(
        "-vn -map 0:a:1 -af volume=-3dB -ar 8000 -c:a flac -compression_level 8")}, ".mp4", ffmpeg=ff)
    graph = tap.args[4]
    assert graph.startswith("volume=-3dB,aformat@ffleet_format=sample_fmts=s16|s32:sample_rates=8000,"
                            "asplit=2[ffleet_out][ffleet_measure];[ffleet_measure]aresample@ffleet_convert,")
    # the user's options in their order, the -af in its place
    assert tap.args == ["-vn", "-map", "0:a:1", "-af", graph, "-ar", "8000", "-c:a", "flac", "-compression_level", "8"]
    assert tap.rate == 8000 and tap.rate_is_input is False
    plain = audio_quality.output_tap({"global": [], "input": [], "output": []}, ".wav", ffmpeg=ff)
    assert plain.args[0] == "-af" and plain.args[1].startswith("aformat@ffleet_format=sample_fmts=s16,asplit=2[")
    with_video = audio_quality.output_tap({"global": [], "input": [], "output": parse_options(
        "-map 0:v:0? -map 0:a:0 -c:v copy -ac 1")}, ".mp4", ffmpeg=ff)
    assert with_video.args[:6] == ["-map", "0:v:0?", "-map", "0:a:0", "-c:v", "copy"]
    assert plain.rate is None and plain.rate_is_input is True
    chained = audio_quality.output_tap({"global": [], "input": [], "output": ["-af", "aresample=8000"]}, ".wav", ffmpeg=ff)
    assert chained.rate is None and chained.rate_is_input is False  # the rate is the chain's business
    opus = audio_quality.output_tap({"global": [], "input": [], "output": ["-sample_fmt", "flt"]}, ".opus", ffmpeg=ff)
    assert "sample_fmts=flt:sample_rates=48000|24000|16000|12000|8000," in opus.args[opus.args.index("-af") + 1]  # libopus's rates
    assert opus.rate_is_input is False  # the encoder may make FFmpeg resample


# --- argv and log parsing (no FFmpeg) --------------------------------------------------------------

def test_analysis_follows_the_users_map_and_trim():
    args = analysis_args({"global": [], "input": [], "output": ["-map", "0:a:1", "-ss", "00:02", "-t", "5", "-c:a", "flac"]})
    assert args[:2] == ["-map", "0:a:1"] and args[2] == "-af"
    assert args[3].startswith("atrim@ffleet_trim=start=2:duration=5,astats@")
    assert args[-3:] == ["-f", "null", "-"]
    assert analysis_args({"global": [], "input": [], "output": ["-map", "0:v"]})[:2] == ["-map", "0:a:0"]
    # no -map: FFmpeg picks the analysed stream by the rule it picked the converted one by
    assert analysis_args({"global": [], "input": [], "output": ["-ac", "1"]})[:4] == ["-vn", "-sn", "-dn", "-af"]


@pytest.mark.parametrize("tokens, expected", [
    ([], []),
    (["-loglevel", "error"], ["-loglevel", "info"]),
    (["-v", "repeat+warning"], ["-loglevel", "info"]),
    (["-v", "debug"], []),
    (["-loglevel", "level+info"], ["-loglevel", "-level+info"]),
])
def test_loglevel_raised_only_when_it_hides_the_measurements(tokens, expected):
    assert global_args(tokens) == expected


def test_silence_running_to_the_end_counts_without_an_end_line():
    log = (
        "Input #0, wav, from 'x.wav':\n  Duration: 00:00:10.00, bitrate: 768 kb/s\n"
        "  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 48000 Hz, stereo, s16, 1536 kb/s\n"
        "[silencedetect @ 0x1] silence_start: 2\n[silencedetect @ 0x1] silence_end: 3 | silence_duration: 1\n"
        "[silencedetect @ 0x1] silence_start: 6\n"
        "[ffleet_astats @ 0x2] Number of samples: 480000\n"
    )
    m = parse_measurements(log)
    assert m.channels == 2 and m.duration == 10.0
    assert m.silence_seconds == 5.0 and m.silence_ratio == 0.5


def test_missing_measurement_rejects_as_not_measured():
    req = parse_request({"name": "x", "input": {"path": "/a"}, "output": {"path": "/b"}, "quality": {"min_lufs": -30}})
    assert audio_quality.quality_reasons(req, None, 3.0) == ["not_measured"]
    assert parse_measurements("no analysis here") is None


@pytest.mark.parametrize("quality, field", [
    ({"min_seconds": 5, "max_seconds": 2}, "quality.min_seconds"),
    ({"min_lufs": -10, "max_lufs": -20}, "quality.min_lufs"),
    ({"measure": False, "reject_clipped": True}, "quality.measure"),
    ({"max_silence_ratio": 1.5}, "quality.max_silence_ratio"),
    ({"min_secs": 1}, "quality.min_secs"),
])
def test_bad_quality_fields_are_named(quality, field):
    with pytest.raises(RequestError) as exc:
        parse_request({"name": "x", "input": {"path": "/a"}, "output": {"path": "/b"}, "quality": quality})
    assert field in [f for f, _ in exc.value.problems], exc.value.problems


def test_true_peak_false_measures_sample_peak_only(signals, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "loud.wav").write_bytes((signals / "loud.wav").read_bytes())
    _, records = _run(tmp_path, inputs, quality={"measure": True, "true_peak": False})
    audio = records["loud.wav"]["extra"]["audio"]
    assert "true_peak_db" not in audio
    assert audio["peak_db"] == pytest.approx(20 * math.log10(0.9), abs=0.05)
    assert audio["lufs"] == pytest.approx(20 * math.log10(0.9) - 3.01, abs=0.5)


@pytest.mark.parametrize("prefix", ["ffleet_astats", "astats@ffleet_astats"])  # FFmpeg 6 / FFmpeg 5 log names
def test_astats_lines_parse_under_both_log_names(prefix):
    log = (f"[{prefix} @ 0x5] DC offset: -0.020000\n[{prefix} @ 0x5] Peak level dB: 0.000000\n"
           f"[{prefix} @ 0x5] Peak count: 12.000000\n[{prefix} @ 0x5] Number of samples: 1000\n")
    m = parse_measurements(log)
    assert m.dc_offset == -0.02 and m.dc_offset_flag is True
    assert m.clipped_samples == 12 and m.clipped is True


# --- the analysis benchmark's harness (not its figures: those are not checked) ----------------------

@pytest.mark.parametrize("mode", [[], ["--breakdown"]], ids=["five_ways", "breakdown"])
def test_analysis_bench_runs_every_way_it_prints(mode):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "analysis_overhead.py"), "--files", "1", "--seconds", "2", "--rounds", "1", *mode],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if " CPU " in line]
    expected = ["tap, no filter", "tap + astats", "tap + ebur128, true peak", "tap + all, sample peak", "tap as a raw PCM output"] if mode \
        else ["output, true_peak false", "source, true_peak"]
    assert rows[0].startswith("no analysis") and all(any(r.startswith(e) for r in rows) for e in expected), proc.stdout
    assert len(rows) == (8 if mode else 5) and all("ratio" in r for r in rows[1:])
