"""output.segment: the cut plan, naming, exact cuts, re-runs, and quality filters per segment, on generated audio."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ffleet.ffmpeg import find_binaries
from ffleet.request import SegmentSpec, parse_request
from ffleet.results import FAILED, REJECTED, SKIPPED, SUCCEEDED, ItemResult, SummaryBuilder
from ffleet.runner import run_request
from ffleet.segments import MARKER_NAME, plan

RATE = 48000
# "Speech" (a 440 Hz tone) with pauses of digital silence at 7-8 s, 15-16.5 s and 27-28 s; 40 s long.
TALK = "0.3*sin(2*PI*440*t)*not(between(t,7,8)+between(t,15,16.5)+between(t,27,28))"
# With max_seconds 12: cuts in the middle of each pause (7.5, 15.75, 27.5), then no pause is left
# within 12 s of 27.5 and 40 - 39.5 would leave less than min_seconds, so the cut moves back to 38.
TALK_CUTS = [0.0, 7.5, 15.75, 27.5, 38.0, 40.0]
# Loud (-13.5 LUFS), then quiet (-37 LUFS, above the -40 dB pause level), then loud talk, with
# pauses between: cut at 9 and 18, the quiet piece fails min_lufs -30.
LOUD_QUIET = "if(between(t,9,18),0.02,0.3)*sin(2*PI*440*t)*not(between(t,8.5,9.5)+between(t,17.5,18.5))"


def _make(folder: Path, name: str, expr: str, seconds: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    subprocess.run([find_binaries().ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    f"aevalsrc='{expr}':s={RATE}:d={seconds}", "-c:a", "pcm_s16le", "-y", str(path)],
                   check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("talk")
    _make(folder / "in" / "rec", "talk.wav", TALK, 40)
    return folder


def _request(root: Path, segment: dict | None = None, ext: str = ".flac", quality: dict | None = None,
             options: str = "-ac 1 -ar 16000", **output) -> dict:
    req = {"name": "segments-test", "input": {"path": str(root / "in")},
           "output": {"path": str(root / "out"), "extension": ext, "file_options": options,
                      "segment": {"max_seconds": 12, **(segment or {})}, **output}}
    if quality:
        req["quality"] = quality
    return req


def _run(req: dict) -> tuple[dict, dict[str, dict]]:
    outcome = run_request(parse_request(req), workers=2)
    run_dir = Path(outcome.results_uri.removeprefix("file://"))
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    return outcome.summary, {json.loads(line)["key"]: json.loads(line) for line in lines}


def _pcm(path: Path, rate: int = 16000) -> bytes:
    return subprocess.run([find_binaries().ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
                           "-ac", "1", "-ar", str(rate), "-f", "s16le", "-"], check=True, capture_output=True).stdout


def _stored(root: Path) -> dict[str, float]:
    return {p.relative_to(root / "out").as_posix(): p.stat().st_mtime_ns for p in (root / "out").rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# The request and the names


# ---------------------------------------------------------------------------------------------
# The plan


def _plan(seconds: float, pauses: list[tuple[float, float]], **segment) -> tuple[list, list]:
    rate = 1000
    p = plan(round(seconds * rate), rate, pauses, SegmentSpec(**segment))
    return [(a / rate, b / rate) for a, b in p.pieces], [(a / rate, b / rate) for a, b in p.dropped]


def test_plan_cuts_in_the_last_pause_before_max_seconds():
    pieces, dropped = _plan(40, [(7, 8), (15, 16.5), (27, 28)], max_seconds=12)
    assert [a for a, _ in pieces] + [pieces[-1][1]] == TALK_CUTS and not dropped
    # a pause that runs past max_seconds: the cut goes at max_seconds, inside the pause
    assert _plan(25, [(9, 14)], max_seconds=10)[0][0] == (0, 10)


def test_plan_fixed_length():
    pieces, dropped = _plan(65, [(7, 8)], max_seconds=30, at_silence=False)
    assert pieces == [(0, 30), (30, 60), (60, 65)] and not dropped


def test_plan_never_leaves_a_short_piece_it_can_avoid():
    # the pause at 29 would leave 1.5 s after it: the earlier pause takes the cut, the tail joins its neighbour
    assert _plan(30.5, [(10, 10.5), (28.8, 29.2)], max_seconds=30)[0] == [(0, 10.25), (10.25, 30.5)]
    # a pause 1 s in would make a 1 s piece: not used
    assert _plan(40, [(0.8, 1.2)], max_seconds=30, at_silence=True)[0][0] == (0, 30)
    # fixed length: 61 s in 30 s pieces would end with 1 s; the last cut moves back to keep min_seconds
    assert _plan(61, [], max_seconds=30, at_silence=False)[0] == [(0, 30), (30, 59), (59, 61)]


def test_plan_drops_what_cannot_be_joined():
    assert _plan(1.5, [], max_seconds=30) == ([], [(0, 1.5)])  # the whole input is shorter than min_seconds
    # max_seconds < 2 x min_seconds: 5.5 s cannot be two pieces of 3-5 s; the 0.5 s left is dropped
    assert _plan(5.5, [], max_seconds=5, min_seconds=3, at_silence=False) == ([(0, 5)], [(5, 5.5)])


# ---------------------------------------------------------------------------------------------
# End to end (real FFmpeg)


def test_cut_at_pauses_exactly(talk, tmp_path):
    root = tmp_path
    (root / "in").symlink_to(talk / "in")
    summary, records = _run(_request(root))
    rec = records["rec/talk.wav"]
    assert rec["status"] == SUCCEEDED and rec["output_key"] == "rec/talk/"
    keys = [s["key"] for s in rec["segments"]]
    assert keys == [f"rec/talk/{i:05d}.flac" for i in range(5)]
    assert sorted(p for p in _stored(root) if not p.endswith(MARKER_NAME)) == keys
    starts = [s["start"] for s in rec["segments"]] + [rec["segments"][-1]["end"]]
    assert starts == pytest.approx(TALK_CUTS, abs=0.05)  # silencedetect finds the pauses to the sample
    for s in rec["segments"]:
        assert s["duration"] == pytest.approx(s["end"] - s["start"], abs=1e-3)
        assert s["bytes_out"] == (root / "out" / s["key"]).stat().st_size
    # the pieces, end to end, are the plain conversion's samples: cut exactly, nothing lost or doubled
    whole = _pcm(talk / "in" / "rec" / "talk.wav")
    pieces = [_pcm(root / "out" / k) for k in keys]
    assert b"".join(pieces) == whole
    for s, pcm in zip(rec["segments"], pieces):  # and each piece holds exactly the samples of its span
        assert len(pcm) // 2 == round(s["end"] * 16000) - round(s["start"] * 16000)
    assert rec["bytes_out"] == sum(s["bytes_out"] for s in rec["segments"])
    assert summary["audio_seconds"]["output"] == pytest.approx(40.0, abs=0.01)
    assert summary["bytes"]["output"] == rec["bytes_out"]


def test_rerun_skips_a_whole_set_and_rebuilds_a_partial_one(talk, tmp_path):
    root = tmp_path
    (root / "in").symlink_to(talk / "in")
    _run(_request(root))
    first = _stored(root)
    _, records = _run(_request(root))
    rec = records["rec/talk.wav"]
    assert rec["status"] == SKIPPED and len(rec["segments"]) == 5 and _stored(root) == first
    # a piece gone: the whole set is made again (every piece rewritten), not just the missing one
    (root / "out" / "rec/talk/00002.flac").unlink()
    _, records = _run(_request(root))
    assert records["rec/talk.wav"]["status"] == SUCCEEDED
    again = _stored(root)
    assert again.keys() == first.keys() and all(again[k] != first[k] for k in first)
    # other settings: rebuilt, and the earlier set's extra pieces are removed (never a mixed set)
    _, records = _run(_request(root, {"max_seconds": 30}))
    rec = records["rec/talk.wav"]
    assert rec["status"] == SUCCEEDED and [s["key"] for s in rec["segments"]] == ["rec/talk/00000.flac", "rec/talk/00001.flac"]
    assert sorted(_stored(root)) == ["rec/talk/.ffleet-segments.json", "rec/talk/00000.flac", "rec/talk/00001.flac"]


def test_fixed_length_pieces(talk, tmp_path):
    root = tmp_path
    (root / "in").symlink_to(talk / "in")
    _, records = _run(_request(root, {"max_seconds": 12, "at_silence": False}))
    durations = [s["duration"] for s in records["rec/talk.wav"]["segments"]]
    assert durations == pytest.approx([12, 12, 12, 4], abs=1e-3)


def test_quality_filters_apply_per_segment(tmp_path):
    root = tmp_path
    _make(root / "in", "mixed.wav", LOUD_QUIET, 27)
    _make(root / "in", "quiet.wav", "0.001*sin(2*PI*440*t)", 5)
    summary, records = _run(_request(root, {"max_seconds": 10}, quality={"min_lufs": -30}))
    rec = records["mixed.wav"]
    assert rec["status"] == SUCCEEDED
    verdicts = [s.get("rejected_for") for s in rec["segments"]]
    assert verdicts == [None, ["too_quiet"], None]
    quiet = rec["segments"][1]
    assert [s["start"] for s in rec["segments"]] == pytest.approx([0, 9, 18], abs=0.05)
    assert quiet["audio"]["lufs"] < -30 < rec["segments"][0]["audio"]["lufs"]
    assert "bytes_out" not in quiet and not (root / "out" / quiet["key"]).exists()  # rejected: not stored
    assert rec["bytes_out"] == sum(s["bytes_out"] for s in rec["segments"] if "bytes_out" in s)
    assert rec["duration_out"] == pytest.approx(rec["segments"][0]["duration"] + rec["segments"][2]["duration"], abs=1e-3)
    # every piece of an input rejected: the input counts as rejected
    assert records["quiet.wav"]["status"] == REJECTED and records["quiet.wav"]["reason"] == "too_quiet"
    assert summary["files"]["rejected"] == 1 and summary["files"]["succeeded"] == 1


def test_silence_share_is_per_segment(tmp_path):
    root = tmp_path
    # 6 s of tone, then 4 s at -70 dBFS (silence for the measurements, not a pause at -80 dB)
    _make(root / "in", "tail.wav", "if(lt(t,6),0.3,0.0003)*sin(2*PI*440*t)", 16)
    _, records = _run(_request(root, {"max_seconds": 10, "silence_db": -80, "at_silence": False},
                               quality={"max_silence_ratio": 0.5}))
    first, second = records["tail.wav"]["segments"]
    assert first["audio"]["silence_ratio"] == pytest.approx(0.4, abs=0.02) and "rejected_for" not in first
    assert second["audio"]["silence_ratio"] == pytest.approx(1.0, abs=0.02) and second["rejected_for"] == ["too_silent"]


def test_lossy_output_is_cut_at_packets(talk, tmp_path):
    root = tmp_path
    (root / "in").symlink_to(talk / "in")
    _, records = _run(_request(root, ext=".mp3"))
    rec = records["rec/talk.wav"]
    assert rec["status"] == SUCCEEDED and len(rec["segments"]) == 5, rec.get("detail")
    starts = [s["start"] for s in rec["segments"]]
    # an mp3 packet at 16 kHz is 576 samples (36 ms): each cut lands on the first packet at or after it
    assert starts[:4] == pytest.approx(TALK_CUTS[:4], abs=0.04)
    assert all(b >= a for a, b in zip(TALK_CUTS[:4], starts))
    # the fixed cut counts back from the output's end, which holds the encoder's padding (~0.1 s here)
    assert starts[4] == pytest.approx(TALK_CUTS[4], abs=0.2)
    assert rec["duration_out"] == pytest.approx(40, abs=0.2)


def test_a_corrupt_input_fails_alone(talk, tmp_path):
    root = tmp_path
    (root / "in" / "rec").mkdir(parents=True)
    shutil.copyfile(talk / "in" / "rec" / "talk.wav", root / "in" / "rec" / "talk.wav")
    (root / "in" / "rec" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x07" * 200)
    summary, records = _run(_request(root))
    assert records["rec/broken.wav"]["status"] == FAILED and "segments" not in records["rec/broken.wav"]
    assert records["rec/talk.wav"]["status"] == SUCCEEDED and len(records["rec/talk.wav"]["segments"]) == 5
    assert not (root / "out" / "rec" / "broken").exists()
    assert summary["files"] == {**summary["files"], "succeeded": 1, "failed": 1}


def test_record_shape_round_trips():
    r = ItemResult(key="a.wav", status=SUCCEEDED, output_key="a/", bytes_out=3, duration_out=1.0,
                   extra={"segments": [{"index": 0, "key": "a/00000.flac", "start": 0.0, "end": 1.0,
                                        "duration": 1.0, "bytes_out": 3}]})
    line = json.loads(r.to_json())
    assert line["segments"][0]["key"] == "a/00000.flac" and "extra" not in line  # a top-level field
    back = ItemResult.from_dict(line)
    assert back.extra["segments"] == r.extra["segments"]
    assert SummaryBuilder(dataset=False).add_all([back]).summary(wall_seconds=1)["bytes"]["output"] == 3


def test_pauses_found_in_the_source_when_the_output_cannot_be_tapped(talk, tmp_path):
    # an output -ss keeps the analysis off the output's filter chain: silencedetect reads the decoded
    # input, on the input's timeline, and the pauses move 2 s earlier on the output's
    root = tmp_path
    (root / "in").symlink_to(talk / "in")
    _, records = _run(_request(root, options="-ac 1 -ar 16000 -ss 2"))
    rec = records["rec/talk.wav"]
    cuts = [s["start"] for s in rec["segments"]] + [rec["segments"][-1]["end"]]
    assert cuts == pytest.approx([0, 5.5, 13.75, 25.5, 36, 38], abs=0.05)


def test_cloud_worker_cuts_into_s3_and_rebuilds_there(s3_endpoint, talk):
    """`ffleet worker` as the container runs it (Debian's FFmpeg 5.1 where installed), against moto S3."""
    from conftest import run_cli
    from test_batch_worker import IMAGE_ENV

    client = s3_endpoint
    for bucket in ("seg-in", "seg-out", "seg-results"):
        client.create_bucket(Bucket=bucket)
    body = (talk / "in" / "rec" / "talk.wav").read_bytes()
    client.put_object(Bucket="seg-in", Key="media/talk.wav", Body=body)
    request = {"name": "segments-worker", "input": {"s3_bucket": "seg-in", "s3_prefix": "media/"},
               "output": {"s3_bucket": "seg-out", "s3_prefix": "out/", "extension": ".flac",
                          "file_options": "-ac 1 -ar 16000", "segment": {"max_seconds": 12}},
               "quality": {"min_lufs": -30}}

    def run(execution: str) -> dict:  # each run is a new execution (a retried job would report "resumed")
        batch = {"BatchInput": {"request": request, "results_prefix": f"s3://seg-results/runs/{execution}/",
                                "batch_id": "b1"}, "Items": [{"Key": "media/talk.wav", "Size": len(body)}]}
        proc = run_cli("worker", env={**IMAGE_ENV, "FFLEET_BATCH_JSON": json.dumps(batch), "FFLEET_WORKERS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        text = client.get_object(Bucket="seg-results", Key=f"runs/{execution}/records/b1.jsonl")["Body"].read().decode()
        return json.loads(text.splitlines()[0]), [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def stored() -> set[str]:
        return {o["Key"] for o in client.list_objects_v2(Bucket="seg-out").get("Contents", [])}

    rec, log = run("exec-1")
    # the job's log line for the file counts the pieces; the record lists them
    assert next(line for line in log if line.get("event") == "file")["segments"] == 5
    pieces = {f"out/media/talk/{i:05d}.flac" for i in range(5)}
    assert rec["status"] == SUCCEEDED and {s["key"] for s in rec["segments"]} == pieces
    assert all(s["audio"]["lufs"] > -30 and "rejected_for" not in s for s in rec["segments"])
    assert stored() == pieces | {"out/media/talk/" + MARKER_NAME}
    assert run("exec-2")[0]["status"] == SKIPPED
    # one piece gone: rebuilt whole; a piece-named object ffleet never recorded (someone else's, or
    # another input where outputs share the inputs' bucket) is left alone
    client.put_object(Bucket="seg-out", Key="out/media/talk/00042.flac", Body=b"not ffleet's")
    client.delete_object(Bucket="seg-out", Key="out/media/talk/00001.flac")
    assert run("exec-3")[0]["status"] == SUCCEEDED
    assert stored() == pieces | {"out/media/talk/00042.flac", "out/media/talk/" + MARKER_NAME}
    # a set made with other settings has more pieces; the set that replaces it removes the extra ones
    request["output"]["segment"] = {"max_seconds": 4}
    more = {s["key"] for s in run("exec-4")[0]["segments"]}
    assert len(more) > len(pieces) and stored() == more | {"out/media/talk/00042.flac", "out/media/talk/" + MARKER_NAME}
    request["output"]["segment"] = {"max_seconds": 12}
    assert run("exec-5")[0]["status"] == SUCCEEDED
    assert stored() == pieces | {"out/media/talk/00042.flac", "out/media/talk/" + MARKER_NAME}


def test_a_rebuild_that_died_half_way_is_cleaned_up_by_the_next(tmp_path):
    from ffleet.segments import _replace_set
    from ffleet.storage import LocalStorage

    store = LocalStorage(tmp_path)
    folder = tmp_path / "talk"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i:05d}.flac").write_bytes(b"old")
    (folder / "00042.flac").write_bytes(b"a user's")
    # the marker a rebuild writes first: it died after storing some of the keys it names
    (folder / MARKER_NAME).write_text(json.dumps({"rebuilding": True, "keys": [f"talk/{i:05d}.flac" for i in range(8)]
                                                   + ["../outside.flac", "talk/sub/00001.flac", "talk/notes.txt"]}))
    (tmp_path / "outside.flac").write_bytes(b"x")
    new = []
    for i in range(3):
        (tmp_path / f"new{i}.flac").write_bytes(b"new")
        new.append((tmp_path / f"new{i}.flac", f"talk/{i:05d}.flac"))
    _replace_set(store, "talk/", ".flac", new)
    assert {p.name for p in folder.iterdir()} == {"00000.flac", "00001.flac", "00002.flac", "00042.flac", MARKER_NAME}
    assert (tmp_path / "outside.flac").exists()  # a marker names only pieces of its own folder


def test_the_dataset_card_counts_pieces():
    from ffleet.dataset import DatasetCardBuilder

    pieces = [{"index": 0, "key": "a/00000.flac", "start": 0.0, "end": 25.0, "duration": 25.0, "bytes_out": 9,
               "audio": {"lufs": -20.0, "measured_at": "output"}},
              {"index": 1, "key": "a/00001.flac", "start": 25.0, "end": 28.0, "duration": 3.0,
               "audio": {"lufs": -50.0, "measured_at": "output"}, "rejected_for": ["too_quiet"]}]
    r = ItemResult(key="a.wav", status=SUCCEEDED, output_key="a/", duration_in=28.0, duration_out=25.0,
                   sample_rate=16000, codec="flac", extra={"segments": pieces})
    card = DatasetCardBuilder()
    card.add(r)
    c = card.card()
    assert c["files"] == {"kept": 1, "rejected": 1, "measured": 2}
    assert c["rejected_by_reason"] == {"too_quiet": 1}
    hist = c["histograms"]["duration_seconds"]
    assert hist["kept"][hist["bins"].index("20-30 s")] == 1 and hist["rejected"][hist["bins"].index("2-5 s")] == 1
    assert c["hours"]["input"] == pytest.approx(28 / 3600, abs=1e-4)


def test_long_recordings_are_cut_in_several_runs(talk, tmp_path, monkeypatch):
    # PIECES_PER_RUN bounds a run's open files; 2 makes the 5 pieces take 3 cutting and 3 measuring runs
    import ffleet.segments

    monkeypatch.setattr(ffleet.segments, "PIECES_PER_RUN", 2)
    root = tmp_path
    (root / "in").symlink_to(talk / "in")
    _, records = _run(_request(root, quality={"measure": True}))
    rec = records["rec/talk.wav"]
    keys = [s["key"] for s in rec["segments"]]
    assert len(keys) == 5 and b"".join(_pcm(root / "out" / k) for k in keys) == _pcm(talk / "in" / "rec" / "talk.wav")
    for s in rec["segments"]:  # each piece measured by its own chain: its own length and silence
        assert s["audio"]["duration"] == pytest.approx(s["duration"], abs=1e-3)
        assert s["audio"]["lufs"] == pytest.approx(-13.5, abs=1.0)
    assert [s["audio"]["silence_seconds"] for s in rec["segments"]] == pytest.approx([0.5, 1.25, 1.25, 0.5, 0], abs=0.05)


def test_more_pieces_than_five_digits_can_name_fail_the_file(talk, tmp_path, monkeypatch):
    # 10**5 pieces of 1 s is a 28-hour recording; one digit (10 names) makes the 5-piece talk stand in
    import ffleet.segments

    monkeypatch.setattr(ffleet.segments, "SEGMENT_DIGITS", 0)
    (tmp_path / "in").symlink_to(talk / "in")
    _, records = _run(_request(tmp_path))
    rec = records["rec/talk.wav"]
    assert rec["status"] == FAILED and "makes 5 segments; at most 1 are named" in rec["detail"]
    assert not (tmp_path / "out" / "rec" / "talk").exists()


def test_pieces_are_encoded_with_the_users_encoder_options(talk, tmp_path):
    sizes = {}
    for level in (0, 12):
        root = tmp_path / str(level)
        root.mkdir()
        (root / "in").symlink_to(talk / "in")
        _, records = _run(_request(root, options=f"-ac 1 -ar 16000 -compression_level {level} -af volume=0.5"))
        rec = records["rec/talk.wav"]
        sizes[level] = rec["bytes_out"]
        # the -af acted once, on the whole output: the pieces hold its samples, not halved again
        whole = _pcm(talk / "in" / "rec" / "talk.wav")
        pieces = b"".join(_pcm(root / "out" / s["key"]) for s in rec["segments"])
        assert len(pieces) == len(whole) and pieces != whole
        assert max(abs(int.from_bytes(pieces[i:i + 2], "little", signed=True)) for i in range(0, 64000, 2)) > 4000
    assert sizes[12] < sizes[0]  # FLAC's -compression_level reached the pieces' encoder


def test_pieces_are_read_back_in_one_ffmpeg(tmp_path):
    from ffleet.ffmpeg import ProcessRegistry, input_guard
    from ffleet.segments import read_pieces

    paths = [_make(tmp_path, f"{i:05d}.wav", "0.1*sin(2*PI*440*t)", seconds) for i, seconds in enumerate((1.5, 2.25))]
    bad = tmp_path / "00002.wav"
    bad.write_bytes(b"RIFF" + b"\x00" * 100)
    infos, cpu = read_pieces([*paths, bad], input_guard([]), find_binaries(), ProcessRegistry(), timeout=60)
    assert [i.duration for i in infos[:2]] == [1.5, 2.25] and all(i.has_audio for i in infos[:2])
    assert infos[1].sample_rate == RATE and infos[1].channels == 1
    assert infos[2] is None and cpu > 0
