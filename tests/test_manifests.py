"""Training manifests: which records become rows, each format's schema, and each loaded by its own library."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import run_cli, write_json
from ffleet.demo import demo_request, make_corpus, make_tone
from ffleet.manifests import (
    AUDIOFOLDER_FILE, AUDIOFOLDER_DROPPED_FILE, AUDIOFOLDER_RUN_FILE, LHOTSE_RECORDINGS, LHOTSE_SUPERVISIONS, MANIFESTS_DIR, NEMO_FILE,
    ManifestWriter, clips, local_locator, output_root,
)
from ffleet.request import parse_request
from ffleet.results import FAILED, REJECTED, SKIPPED, SUCCEEDED, ItemResult
from ffleet.storage import LocalStorage


def _plain(key: str, out: str, seconds: float = 2.0, status: str = SUCCEEDED, **audio) -> ItemResult:
    return ItemResult(key=key, status=status, output_key=out, duration_out=seconds, sample_rate=16000, channels=1,
                      codec="flac", extra={"audio": audio} if audio else {})


def _segmented(key: str, folder: str, spans: list[tuple[float, float]], rejected: tuple[int, ...] = ()) -> ItemResult:
    """A record in the segments helper's shape: output_key is the folder, one entry per piece."""
    segments = []
    for i, (start, end) in enumerate(spans):
        s = {"index": i, "key": f"{folder}/{i:05d}.flac", "start": start, "end": end, "duration": end - start,
             "bytes_out": 1000, "audio": {"lufs": -20.0 - i}}
        if i in rejected:
            s["rejected_for"] = ["too_silent"]
        segments.append(s)
    return ItemResult(key=key, status=SUCCEEDED, output_key=folder, duration_out=spans[-1][1], sample_rate=16000,
                      channels=1, codec="flac", extra={"segments": segments})


# --- which records become rows ------------------------------------------------------------------

def test_only_succeeded_outputs_and_segments_not_rejected_become_clips():
    records = [
        _plain("a.wav", "out/a.flac", lufs=-21.5),
        _plain("b.wav", "out/b.flac", status=REJECTED),
        _plain("c.wav", "out/c.flac", status=FAILED),
        _plain("d.wav", "out/d.flac", status=SKIPPED),
        _segmented("long.wav", "out/long", [(0, 9.5), (9.5, 21.0), (21.0, 30.0)], rejected=(1,)),
    ]
    got = [(c.key, c.source_key, c.segment, c.start) for r in records for c in clips(r)]
    assert got == [("out/a.flac", "a.wav", None, None), ("out/long/00000.flac", "long.wav", 0, 0),
                   ("out/long/00002.flac", "long.wav", 2, 21.0)]


def test_a_segment_record_read_back_from_json_has_its_segments():
    """The worker writes `segments` in the record; read back, it lands in extra whether top-level or not."""
    r = _segmented("long.wav", "out/long", [(0, 5.0), (5.0, 9.0)])
    line = json.loads(r.to_json())
    assert "segments" in line and "extra" not in line  # the record's shape (docs/contracts.md)
    nested = {k: v for k, v in line.items() if k != "segments"} | {"extra": {"segments": line["segments"]}}
    for d in (line, nested):
        assert [c.key for c in clips(ItemResult.from_dict(d))] == ["out/long/00000.flac", "out/long/00001.flac"]


@pytest.mark.parametrize("prefix, root", [("out/", "out/"), ("out/x-", "out/"), ("x-", ""), ("", ""), ("a/b/", "a/b/")])
def test_output_root_is_the_folder_of_the_output_prefix(prefix, root):
    assert output_root(prefix) == root


# --- rows and files ------------------------------------------------------------------------------

def _write(tmp_path: Path, records: list[ItemResult], formats=("nemo", "audiofolder", "lhotse"), prefix: str = "") -> dict:
    outputs = LocalStorage(tmp_path / "out")
    results = LocalStorage(tmp_path / "results")
    writer = ManifestWriter(formats, tmp_path / "work", prefix, local_locator(outputs)).add_all(records)
    return writer.publish(results, "run-1/", outputs)


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_nemo_rows_follow_the_documented_schema(tmp_path):
    """NeMo (not installed here: it needs torch and more) reads one JSON object per line with
    audio_filepath and duration; extra keys are carried along. Checked against that schema."""
    info = _write(tmp_path, [_plain("a.wav", "sub/a.flac", 2.5, lufs=-21.5, dc_offset=0.0),
                             _segmented("l.wav", "sub/l", [(0, 4.0), (4.0, 7.5)])], formats=("nemo",))
    rows = _jsonl(tmp_path / "results/run-1" / MANIFESTS_DIR / NEMO_FILE)
    assert info == {"nemo": {"rows": 3, "files": [str(tmp_path / "results/run-1" / MANIFESTS_DIR / NEMO_FILE)]}}
    for row in rows:
        assert isinstance(row["audio_filepath"], str) and Path(row["audio_filepath"]).is_absolute()
        assert isinstance(row["duration"], float) and row["duration"] > 0
        assert "offset" not in row  # segments are cut files: NeMo reads each from its start
    assert rows[0] == {"audio_filepath": str((tmp_path / "out/sub/a.flac").resolve()), "duration": 2.5,
                       "sample_rate": 16000, "channels": 1, "lufs": -21.5, "dc_offset": 0.0, "source_key": "a.wav"}
    assert rows[2]["audio_filepath"].endswith("/out/sub/l/00001.flac")
    assert (rows[2]["source_key"], rows[2]["segment"], rows[2]["source_start"], rows[2]["source_end"]) == ("l.wav", 1, 4.0, 7.5)


def test_s3_outputs_are_named_by_uri(tmp_path):
    from ffleet.storage import S3Storage

    outputs = S3Storage("out-bucket", client=object())  # never called: only uri() is
    writer = ManifestWriter(["nemo", "lhotse"], tmp_path / "work", "o/", local_locator(outputs))
    writer.add(_plain("a.wav", "o/a.flac"))
    writer.publish(LocalStorage(tmp_path / "r"), "", outputs)
    assert _jsonl(tmp_path / "r" / MANIFESTS_DIR / NEMO_FILE)[0]["audio_filepath"] == "s3://out-bucket/o/a.flac"
    source = _jsonl(tmp_path / "r" / MANIFESTS_DIR / LHOTSE_RECORDINGS)[0]["sources"][0]
    assert source == {"type": "url", "channels": [0], "source": "s3://out-bucket/o/a.flac"}


def test_audiofolder_metadata_keeps_earlier_rows_and_replaces_rewritten_ones(tmp_path):
    """A re-drive (or a re-run that skipped what exists) must not drop the first run's rows from the
    output root's metadata.jsonl; a file (or segment folder) written again replaces its old rows."""
    first = [_plain("a.wav", "x/a.flac", 1.0), _plain("b.wav", "x/b.flac", 1.0),
             _segmented("l.wav", "x/l", [(0, 3.0), (3.0, 6.0), (6.0, 9.0)])]
    _write(tmp_path, first, formats=("audiofolder",), prefix="x/")
    meta = tmp_path / "out/x" / AUDIOFOLDER_FILE
    assert [r["file_name"] for r in _jsonl(meta)] == ["a.flac", "b.flac", "l/00000.flac", "l/00001.flac", "l/00002.flac"]
    unusable = ["not json, a line someone added", '{"file_name": "../../etc/passwd"}', "[1, 2]",
                '{"file_name": "/etc/passwd"}', '{"file_name": "a/./b.flac"}', '{"duration": 1}']
    with open(meta, "a", encoding="utf-8") as f:
        f.write("\n".join(unusable) + "\n")

    again = [_plain("b.wav", "x/b.flac", 1.5), _segmented("l.wav", "x/l", [(0, 4.5), (4.5, 9.0)])]
    info = _write(tmp_path, again, formats=("audiofolder",), prefix="x/")
    rows = _jsonl(meta)  # every line a row a loader can use: one bad line fails load_dataset whole
    assert [(r["file_name"], r["duration"]) for r in rows] == [
        ("a.flac", 1.0), ("b.flac", 1.5), ("l/00000.flac", 4.5), ("l/00001.flac", 4.5)]
    assert info["audiofolder"]["rows"] == 3
    # nothing is lost: the rows no loader could use are in the run's results, and the summary says so
    moved = tmp_path / "results/run-1" / MANIFESTS_DIR / AUDIOFOLDER_DROPPED_FILE
    assert moved.read_text(encoding="utf-8").splitlines() == unusable
    assert info["audiofolder"]["earlier_unusable_rows"] == len(unusable)
    assert len(_jsonl(tmp_path / "results/run-1" / MANIFESTS_DIR / AUDIOFOLDER_RUN_FILE)) == 3  # this run's own rows


def test_lhotse_rows_are_consistent(tmp_path):
    _write(tmp_path, [_plain("a.wav", "a.flac", 1.23456)], formats=("lhotse",))
    (rec,), (sup,) = (_jsonl(tmp_path / "results/run-1" / MANIFESTS_DIR / n) for n in (LHOTSE_RECORDINGS, LHOTSE_SUPERVISIONS))
    assert rec["num_samples"] == round(1.23456 * 16000) and rec["duration"] == rec["num_samples"] / 16000
    assert sup["recording_id"] == rec["id"] == "a.flac" and sup["duration"] == rec["duration"]


# --- a real run, loaded by each library ----------------------------------------------------------

@pytest.fixture(scope="module")
def manifest_run(tmp_path_factory):
    """`ffleet run` of a small corpus (3 broken files) with every manifest, and a folder of real segment
    files written through ManifestWriter in the segment record shape."""
    root = tmp_path_factory.mktemp("manifest-run")
    make_corpus(root / "input", count=6, seconds=(1, 2))
    request = demo_request(root / "input", root / "output", tolerated_percent=60, measure=True)
    request["results"] = {"manifests": ["nemo", "audiofolder", "lhotse"]}
    p = run_cli("run", str(write_json(root / "job.json", request)), "--json", "--no-progress")
    assert p.returncode == 0, p.stderr
    return root, json.loads(p.stdout)


def test_run_writes_every_manifest_and_names_them_in_the_summary(manifest_run):
    root, summary = manifest_run
    results = Path(summary["run"]["results"])
    assert summary["files"]["succeeded"] == 6 and summary["files"]["failed"] == 3
    assert {k: v["rows"] for k, v in summary["manifests"].items()} == {"nemo": 6, "audiofolder": 6, "lhotse": 6}
    assert summary["manifests"]["audiofolder"]["files"][0] == str(root / "output" / AUDIOFOLDER_FILE)
    assert json.loads((results / "summary.json").read_text())["manifests"] == summary["manifests"]
    for row in _jsonl(results / MANIFESTS_DIR / NEMO_FILE):
        assert Path(row["audio_filepath"]).is_file() and "lufs" in row  # measured fields come along


def test_audiofolder_loads_with_datasets(manifest_run, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, _ = manifest_run
    # "a downloaded output folder": a copy elsewhere, so no absolute path can be what makes it work
    import shutil

    copy = tmp_path / "downloaded"
    shutil.copytree(root / "output", copy)
    ds = datasets.load_dataset("audiofolder", data_dir=str(copy), split="train")
    assert ds.num_rows == 6
    assert {"audio", "duration", "sample_rate", "channels", "lufs", "source_key"} <= set(ds.column_names)
    ds = ds.cast_column("audio", datasets.Audio(decode=False))  # decoding needs librosa: not a dev dependency
    import soundfile

    for row in ds:
        path = Path(row["audio"]["path"])
        assert copy in path.parents
        info = soundfile.info(str(path))
        assert info.samplerate == row["sample_rate"] == 48000
        assert abs(info.duration - row["duration"]) < 0.05


def test_segment_rows_load_with_datasets(tmp_path, monkeypatch):
    """The segment record shape, on real files laid out as <stem>/<NNNNN><ext> under the output root."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    spans = [(0.0, 1.0), (1.0, 2.5), (2.5, 3.0)]
    for i, (a, b) in enumerate(spans):
        make_tone(out / "talks" / "long" / f"{i:05d}.flac", b - a, rate=16000, channels=1)
    make_tone(out / "talks" / "other.flac", 1.0, rate=16000, channels=1)  # a file no row names
    _write(tmp_path, [_segmented("talks/long.wav", "talks/long", spans, rejected=(2,))], formats=("audiofolder",))
    ds = datasets.load_dataset("audiofolder", data_dir=str(out), split="train")
    assert sorted(ds["source_start"]) == [0.0, 1.0] and ds.num_rows == 2


def test_lhotse_loads_the_manifests(manifest_run):
    lhotse = pytest.importorskip("lhotse")
    root, summary = manifest_run
    results = Path(summary["run"]["results"]) / MANIFESTS_DIR
    recordings = lhotse.load_manifest(results / LHOTSE_RECORDINGS)
    supervisions = lhotse.load_manifest(results / LHOTSE_SUPERVISIONS)
    assert isinstance(recordings, lhotse.RecordingSet) and isinstance(supervisions, lhotse.SupervisionSet)
    lhotse.validate_recordings_and_supervisions(recordings, supervisions)
    cuts = lhotse.CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    assert len(cuts) == 6
    rec = recordings[0]
    audio = rec.load_audio()  # reads the FLAC through Lhotse's own backends
    assert audio.shape[0] == 1 and abs(audio.shape[1] - rec.num_samples) <= rec.sampling_rate * 0.05


# --- the summarizer, in the cloud ----------------------------------------------------------------

@pytest.mark.parametrize("earlier_run", [True, False])
def test_summarizer_writes_the_manifests_under_the_run_and_metadata_at_the_output_root(earlier_run):
    """The summarize Lambda's logic against moto S3: manifests under <results_prefix>manifests/, the
    audiofolder metadata.jsonl at the output root (merged with an earlier run's, if any), s3:// URIs for NeMo."""
    import boto3
    from moto import mock_aws

    from conftest import EVENTS
    from ffleet.summarize import parse_event, summarize_event
    from test_summarize import RunFixture

    event = json.loads((EVENTS / "summarize.json").read_text())
    event["request"]["results"] = {"manifests": ["nemo", "audiofolder", "lhotse"]}
    bucket = event["map_result"]["ResultWriterDetails"]["Bucket"]
    prefix = event["results_prefix"].split(bucket + "/", 1)[1]
    out_bucket, out_prefix = event["request"]["output"]["s3_bucket"], event["request"]["output"]["s3_prefix"]
    records = [
        json.loads(_plain("m/1.wav", out_prefix + "m/1.flac", 3.0, lufs=-20.0).to_json()),
        json.loads(_plain("m/2.wav", out_prefix + "m/2.flac", status=REJECTED).to_json()),
        json.loads(_segmented("m/3.wav", out_prefix + "m/3", [(0, 2.0), (2.0, 5.0)]).to_json()),
    ]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for b in (bucket, out_bucket):
            s3.create_bucket(Bucket=b)
        if earlier_run:
            earlier = json.dumps({"file_name": "old/0.flac", "duration": 1.0}) + "\n"
            s3.put_object(Bucket=out_bucket, Key=out_prefix + AUDIOFOLDER_FILE, Body=earlier.encode())
        run = RunFixture(lambda k, d: s3.put_object(Bucket=bucket, Key=k, Body=d), bucket=bucket, prefix=prefix,
                         map_run=event["map_result"]["ResultWriterDetails"]["Key"].split("/")[-2])
        run.batch("b1", ["m/1.wav", "m/2.wav", "m/3.wav"], records=records).finish()
        summary = summarize_event(parse_event(event), s3).summary

        def lines(b: str, key: str) -> list[dict]:
            body = s3.get_object(Bucket=b, Key=key)["Body"].read()
            return [json.loads(x) for x in (gzip.decompress(body) if key.endswith(".gz") else body).decode().splitlines()]

        at = prefix + MANIFESTS_DIR
        nemo = lines(bucket, at + NEMO_FILE)
        metadata = lines(out_bucket, out_prefix + AUDIOFOLDER_FILE)
        run_rows = lines(bucket, at + AUDIOFOLDER_RUN_FILE)
        recordings, supervisions = lines(bucket, at + LHOTSE_RECORDINGS), lines(bucket, at + LHOTSE_SUPERVISIONS)
        written = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "summary.json")["Body"].read())
    assert [r["audio_filepath"] for r in nemo] == [f"s3://{out_bucket}/{out_prefix}m/1.flac",
                                                   f"s3://{out_bucket}/{out_prefix}m/3/00000.flac",
                                                   f"s3://{out_bucket}/{out_prefix}m/3/00001.flac"]
    assert [r["file_name"] for r in metadata] == ["old/0.flac"] * earlier_run + ["m/1.flac", "m/3/00000.flac", "m/3/00001.flac"]
    assert run_rows == metadata[earlier_run:]
    assert len(recordings) == len(supervisions) == 3 and recordings[0]["sources"][0]["type"] == "url"
    assert {k: v["rows"] for k, v in summary["manifests"].items()} == {"nemo": 3, "audiofolder": 3, "lhotse": 3}
    assert written["manifests"] == summary["manifests"]
    assert summary["manifests"]["audiofolder"]["files"][0] == f"s3://{out_bucket}/{out_prefix}{AUDIOFOLDER_FILE}"


def test_summarizer_that_cannot_write_the_manifests_still_writes_the_summary():
    import boto3
    from moto import mock_aws

    from conftest import EVENTS
    from ffleet.summarize import parse_event, summarize_event

    event = json.loads((EVENTS / "summarize.json").read_text())
    event["request"]["results"] = {"manifests": ["audiofolder"]}
    event["map_result"] = None
    bucket = event["results_prefix"].split("/")[2]
    prefix = event["results_prefix"].split(bucket + "/", 1)[1]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)  # and no output bucket: its metadata.jsonl cannot be written
        summary = summarize_event(parse_event(event), s3).summary
        written = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "summary.json")["Body"].read())
    assert "my-output-bucket" in summary["manifests"]["error"] and written["manifests"] == summary["manifests"]


def test_summarizer_without_manifests_writes_none():
    import boto3
    from moto import mock_aws

    from conftest import EVENTS
    from ffleet.summarize import parse_event, summarize_event

    event = json.loads((EVENTS / "summarize.json").read_text())
    bucket = event["map_result"]["ResultWriterDetails"]["Bucket"]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        event["map_result"] = None
        summary = summarize_event(parse_event(event), s3).summary
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "manifests" not in summary and not any("/manifests/" in k for k in keys)


# --- the setting survives the cloud's rewrites of the request ----------------------------------

def test_cloud_runs_redrives_and_manifest_runs_keep_the_manifests_setting():
    """The start Lambda replaces `results` with the stack's location; a re-drive and a run started from a
    manifest drop the request's `results`. The formats must survive all three (a re-drive's rows are
    what join the first run's metadata.jsonl)."""
    from ffleet.follow import redrive_request
    from ffleet.manifest_trigger import manifest_request
    from ffleet.trigger import execution_input

    data = {"name": "t", "input": {"s3_bucket": "in", "s3_prefix": "a/"}, "output": {"s3_bucket": "out", "s3_prefix": "o/"},
            "results": {"manifests": ["audiofolder", "nemo"]}}
    normalised = execution_input(parse_request(data), "t-1", "res", {"type": "jobs"})["request"]
    assert normalised["results"]["manifests"] == ["nemo", "audiofolder"]
    assert (normalised["results"]["s3_bucket"], normalised["results"]["s3_prefix"]) == ("res", "runs/t-1/")
    redrive = redrive_request(normalised, "s3://res/runs/t-1/failed-files.jsonl")
    assert redrive["results"] == {"manifests": ["nemo", "audiofolder"]}
    assert parse_request(redrive).manifest_formats == ["nemo", "audiofolder"]
    started = manifest_request(normalised, "in", "s3://res/manifests/x.csv")
    assert started.manifest_formats == ["nemo", "audiofolder"] and started.results.s3_bucket is None
    plain = {k: v for k, v in data.items() if k != "results"}
    assert execution_input(parse_request(plain), "t-1", "res", {"type": "jobs"})["request"]["results"]["manifests"] is None
    assert "results" not in redrive_request({**plain, "results": {"s3_bucket": "res"}}, "s3://res/x.jsonl")


def test_the_cli_summary_says_where_the_manifests_are():
    from ffleet.results import SummaryBuilder, format_summary

    summary = SummaryBuilder().summary(wall_seconds=1.0)
    assert "manifests" not in format_summary(summary)
    summary["manifests"] = {"nemo": {"rows": 5, "files": ["/r/manifests/nemo.jsonl"]},
                            "audiofolder": {"rows": 5, "files": ["/out/metadata.jsonl", "/r/manifests/x.jsonl"]}}
    assert "manifests  nemo 5 rows, audiofolder 5 rows (metadata.jsonl: /out/metadata.jsonl)" in format_summary(summary)


def _peak_bytes(tmp_path: Path, n: int) -> int:
    """Peak Python allocations while n records (a third of them segmented) go through every manifest,
    and the output root's metadata.jsonl already holds n rows of an earlier run."""
    import tracemalloc

    folder = tmp_path / str(n)
    outputs = LocalStorage(folder / "out")
    (folder / "out").mkdir(parents=True)
    with open(folder / "out" / AUDIOFOLDER_FILE, "w") as f:
        for i in range(n):
            f.write(json.dumps({"file_name": f"old/{i}.flac", "duration": 1.0}) + "\n")
    records = (_segmented(f"s/{i}.wav", f"s/{i}", [(0, 3.0), (3.0, 5.0)]) if i % 3 == 0
               else _plain(f"p/{i}.wav", f"p/{i}.flac", lufs=-20.0) for i in range(n))
    tracemalloc.start()
    writer = ManifestWriter(("nemo", "audiofolder", "lhotse"), folder / "work", "", local_locator(outputs))
    writer.add_all(records).publish(LocalStorage(folder / "results"), "", outputs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert writer.rows["nemo"] == n + (n + 2) // 3 and writer.kept_from_before == n
    return peak


def test_manifests_are_written_in_bounded_memory(tmp_path):
    small, large = _peak_bytes(tmp_path, 1_000), _peak_bytes(tmp_path, 10_000)
    # ten times the records (and the earlier rows to merge) must not take ten times the memory
    assert large < 1.5 * small, (small, large)
    print(f"peak Python allocations: {small / 1e6:.2f} MB for 1,000 records, {large / 1e6:.2f} MB for 10,000")


def test_local_run_to_a_bucket_names_outputs_by_uri_and_writes_metadata_there(tmp_path, s3_endpoint, tone_cache):
    """`ffleet run` with S3 outputs (and results in the output bucket): the manifests go up with the
    results, metadata.jsonl to the output root in the bucket, and paths are s3:// URIs."""
    s3 = s3_endpoint
    for b in ("media-in", "media-out"):
        s3.create_bucket(Bucket=b)
    for k in ("a/one.wav", "a/two words.wav"):
        s3.upload_file(str(tone_cache(".wav", 1.5)), "media-in", k)
    req = write_json(tmp_path / "job.json", {
        "name": "s3-manifests", "input": {"s3_bucket": "media-in", "s3_prefix": "a/"},
        "output": {"s3_bucket": "media-out", "s3_prefix": "out/16k-", "extension": ".flac", "file_options": "-ac 1 -ar 16000"},
        "results": {"manifests": ["nemo", "audiofolder"]}})
    p = run_cli("run", str(req), "--json", "--no-progress")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    metadata = s3.get_object(Bucket="media-out", Key="out/metadata.jsonl")["Body"].read().decode().splitlines()
    assert sorted(json.loads(line)["file_name"] for line in metadata) == ["16k-a/one.flac", "16k-a/two words.flac"]
    nemo_uri = summary["manifests"]["nemo"]["files"][0]
    assert nemo_uri.startswith("s3://media-out/ffleet-results/s3-manifests/") and nemo_uri.endswith("/manifests/nemo.jsonl")
    body = s3.get_object(Bucket="media-out", Key=nemo_uri.split("/", 3)[3])["Body"].read().decode()
    nemo = {row["source_key"]: row for row in map(json.loads, body.splitlines())}
    assert nemo["a/two words.wav"]["audio_filepath"] == "s3://media-out/out/16k-a/two words.flac"
    assert 1.4 < nemo["a/two words.wav"]["duration"] < 1.6 and nemo["a/two words.wav"]["sample_rate"] == 16000


def test_summarize_write_of_a_cloud_run_writes_its_manifests_again(s3_endpoint):
    """`ffleet summarize s3://…/runs/X/ --write` (after a summarizer that failed or timed out) reads the
    run's request.json and writes the manifests it asked for."""
    from ffleet.summarize import summarize_location
    from test_summarize import RunFixture

    s3 = s3_endpoint
    for b in ("res", "out-b"):
        s3.create_bucket(Bucket=b)
    run = RunFixture(lambda k, d: s3.put_object(Bucket="res", Key=k, Body=d), bucket="res", prefix="runs/x-1/")
    run.batch("b1", ["a.wav"], records=[json.loads(_plain("a.wav", "o/a.flac").to_json())]).finish()
    request = {"name": "x", "output": {"s3_bucket": "out-b", "s3_prefix": "o/"}, "results": {"manifests": ["audiofolder"]}}
    s3.put_object(Bucket="res", Key="runs/x-1/request.json", Body=json.dumps(request).encode())
    summary = summarize_location("s3://res/runs/x-1/", s3_client=s3, write=True).summary
    assert summary["manifests"]["audiofolder"]["rows"] == 1
    assert json.loads(s3.get_object(Bucket="out-b", Key="o/metadata.jsonl")["Body"].read())["file_name"] == "a.flac"
    assert "manifests" not in summarize_location("s3://res/runs/x-1/", s3_client=s3, write=False).summary
