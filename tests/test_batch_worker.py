"""`ffleet worker`, run as the container runs it (same command line and environment) against moto S3."""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from ffleet.batch_worker import (
    DEFAULT_STOP_GRACE_SECONDS,
    EXIT_INFRASTRUCTURE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    InvalidBatch,
    ecs_cpu_limit,
    job_workers,
    parse_batch,
    stop_grace_from_env,
)
from ffleet.ffmpeg import find_binaries
from ffleet.cpus import cgroup_cpu_limit
from ffleet.worker import default_workers

IN, OUT, RESULTS = "media-in", "media-out", "ffleet-results"
# What container/Dockerfile sets: Debian's ffmpeg and ffprobe (bookworm's 5.1, as on this machine).
# Where Debian's build is not installed, the tests fall back to the default binaries.
IMAGE_ENV = (
    {"FFLEET_FFMPEG": "/usr/bin/ffmpeg", "FFLEET_FFPROBE": "/usr/bin/ffprobe"}
    if Path("/usr/bin/ffmpeg").exists() and Path("/usr/bin/ffprobe").exists() else {}
)
PREFIX = f"s3://{RESULTS}/runs/exec-1/"


def _request(**output) -> dict:
    return {
        "name": "worker-test",
        "compute": "intel",
        "input": {"s3_bucket": IN, "s3_prefix": "media/", "file_options": "null",
                  "extensions": [".wav", ".mp3", ".flac"]},
        "output": {"s3_bucket": OUT, "s3_prefix": "out/", "extension": ".flac",
                   "file_options": "-ac 1 -ar 16000 -c:a flac", **output},
        "global": {"options": "null"},
    }


def _batch(items: list[dict], request: dict | None = None, batch_id: str = "batch-0001") -> dict:
    return {"BatchInput": {"request": request or _request(), "results_prefix": PREFIX, "batch_id": batch_id},
            "Items": items}


def _put_batch(client, batch: dict) -> str:
    key = f"runs/exec-1/batches/{batch['BatchInput']['batch_id']}.json"
    client.put_object(Bucket=RESULTS, Key=key, Body=json.dumps(batch).encode())
    return f"s3://{RESULTS}/{key}"


def _records(client, batch_id: str = "batch-0001") -> dict[str, dict]:
    body = client.get_object(Bucket=RESULTS, Key=f"runs/exec-1/records/{batch_id}.jsonl")["Body"].read().decode()
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    by_key = {r["key"]: r for r in lines}
    assert len(by_key) == len(lines), "a key is recorded twice"
    return by_key


def _out_keys(client) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=OUT).get("Contents", [])}


def _log_lines(stdout: str) -> list[dict]:
    # every line on stdout must be a JSON object: CloudWatch Logs Insights reads them as such
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _buckets(client, *names: str) -> None:
    for name in names:
        client.create_bucket(Bucket=name)


def _upload(client, files: dict[str, Path | bytes]) -> list[dict]:
    items = []
    for key, src in files.items():
        body = src if isinstance(src, bytes) else src.read_bytes()
        client.put_object(Bucket=IN, Key=key, Body=body)
        items.append({"Key": key, "Size": len(body)})
    return items


CORRUPT = b"this is not audio at all\n" * 200


def test_batch_from_s3_with_a_corrupt_file(s3_endpoint, tone_cache, tmp_path):
    client = s3_endpoint
    _buckets(client, IN, OUT, RESULTS)
    items = _upload(client, {
        "media/a.wav": tone_cache(".wav", 1.5),
        "media/sub dir/b+c.mp3": tone_cache(".mp3", 1.0),
        "media/d.flac": tone_cache(".flac", 1.0),
        "media/broken.mp3": CORRUPT,
        "media/notes.txt": b"not media",
    })
    items[2] = {"key": items[2]["Key"]}  # a manifest row: no Size
    items.append({"Key": "media/", "Size": 0})  # the console's folder marker
    uri = _put_batch(client, _batch(items))

    proc = run_cli("worker", env={**IMAGE_ENV, "FFLEET_BATCH_URI": uri, "FFLEET_WORKERS": "2", "AWS_BATCH_JOB_ID": "job-1"})

    assert proc.returncode == EXIT_OK, proc.stderr
    records = _records(client)
    assert set(records) == {"media/a.wav", "media/sub dir/b+c.mp3", "media/d.flac", "media/broken.mp3"}
    assert records["media/broken.mp3"]["status"] == "failed"
    assert records["media/broken.mp3"]["reason"] == "corrupt_input"
    assert records["media/broken.mp3"]["detail"]
    good = [k for k in records if k != "media/broken.mp3"]
    assert all(records[k]["status"] == "succeeded" for k in good), records
    assert _out_keys(client) == {"out/media/a.flac", "out/media/sub dir/b+c.flac", "out/media/d.flac"}
    # the output is what the request asked for, by ffprobe rather than by the worker's word
    local = tmp_path / "a.flac"
    client.download_file(OUT, "out/media/a.flac", str(local))
    probe = subprocess.run(
        [find_binaries().ffprobe, "-v", "error", "-print_format", "json", "-show_streams", str(local)],
        capture_output=True, text=True, check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == ("flac", "16000", 1)

    logs = _log_lines(proc.stdout)
    files = [line for line in logs if line.get("event") == "file"]
    assert sorted(line["key"] for line in files) == sorted(records)
    assert all(line["batch_id"] == "batch-0001" and line["job_id"] == "job-1" for line in files)
    start = next(line for line in logs if line.get("event") == "batch_start")
    assert start["ignored_keys"] == 2 and start["workers"] == 2
    summary = [line for line in logs if line.get("event") == "batch_summary"]
    assert len(summary) == 1
    assert summary[0]["exit_code"] == 0
    assert summary[0]["files"]["succeeded"] == 3 and summary[0]["files"]["failed"] == 1
    assert summary[0]["failures_by_reason"] == {"corrupt_input": 1}


def test_inline_batch_and_a_retry_overwrites_its_records(s3_endpoint, tone_cache):
    client = s3_endpoint
    _buckets(client, IN, OUT, RESULTS)
    items = _upload(client, {f"media/t{i}.wav": tone_cache(".wav", 1.0, freq=300 + i) for i in range(3)})
    env = {"FFLEET_BATCH_JSON": json.dumps(_batch(items)), "FFLEET_WORKERS": "2"}

    first = run_cli("worker", env=env)
    assert first.returncode == EXIT_OK, first.stderr
    assert {r["status"] for r in _records(client).values()} == {"succeeded"}

    again = run_cli("worker", env={**env, "AWS_BATCH_JOB_ATTEMPT": "2"})
    assert again.returncode == EXIT_OK, again.stderr
    records = _records(client)  # asserts one line per key: overwritten, not appended
    assert len(records) == 3
    # the retry skipped every finished file and kept the first attempt's record of it
    assert all(r["status"] == "succeeded" and r["extra"]["resumed"] is True for r in records.values())
    files = [line for line in _log_lines(again.stdout) if line.get("event") == "file"]
    assert len(files) == 3 and all(line["resumed"] is True and line["attempt"] == 2 for line in files)


def test_invalid_request_fails_naming_the_field(s3_endpoint):
    client = s3_endpoint
    _buckets(client, RESULTS)
    bad = _request(file_options="-ac 1 -vstats_file /etc/passwd")
    uri = _put_batch(client, _batch([{"Key": "media/a.wav"}], request=bad))

    proc = run_cli("worker", env={"FFLEET_BATCH_URI": uri})

    assert proc.returncode == EXIT_INVALID
    assert "BatchInput.request.output.file_options" in proc.stderr and "-vstats_file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert client.list_objects_v2(Bucket=RESULTS, Prefix="runs/exec-1/records/").get("KeyCount", 0) == 0


def test_missing_results_bucket_is_an_infrastructure_fault(s3_endpoint, tone_cache):
    client = s3_endpoint
    _buckets(client, IN, OUT)  # no results bucket
    items = _upload(client, {"media/a.wav": tone_cache(".wav", 1.0)})

    proc = run_cli("worker", env={"FFLEET_BATCH_JSON": json.dumps(_batch(items))})

    assert proc.returncode == EXIT_INFRASTRUCTURE
    assert RESULTS in proc.stderr and "NoSuchBucket" in proc.stderr
    assert _out_keys(client) == set()  # it stopped before doing work it could not record


def test_unreadable_batch_object_is_an_infrastructure_fault(s3_endpoint):
    client = s3_endpoint
    _buckets(client, RESULTS)

    proc = run_cli("worker", env={"FFLEET_BATCH_URI": f"s3://{RESULTS}/runs/exec-1/batches/missing.json"})

    assert proc.returncode == EXIT_INFRASTRUCTURE
    assert "missing.json" in proc.stderr


def test_a_missing_output_bucket_is_found_before_the_first_conversion(s3_endpoint, tone_cache):
    """It was found only after every file had been converted (each upload then failed alone)."""
    client = s3_endpoint
    _buckets(client, IN, RESULTS)  # no output bucket
    items = _upload(client, {f"media/t{i}.wav": tone_cache(".wav", 0.5, freq=200 + i) for i in range(3)})

    proc = run_cli("worker", env={"FFLEET_BATCH_JSON": json.dumps(_batch(items)), "FFLEET_WORKERS": "1"})

    assert proc.returncode == EXIT_INVALID, proc.stderr  # a retry meets the same missing bucket
    assert "output location cannot be written" in proc.stderr and OUT in proc.stderr, proc.stderr
    assert not any(line.get("event") == "file" for line in _log_lines(proc.stdout))  # nothing converted


def test_uploads_failing_mid_batch_stop_it_after_repeated_storage_faults(s3_endpoint, tone_cache):
    """The output bucket exists but refuses every upload (a proxy answers 500 to each PUT into it)."""
    from faults.s3_proxy import FaultyS3Proxy

    client = s3_endpoint
    _buckets(client, IN, OUT, RESULTS)
    items = _upload(client, {f"media/t{i}.wav": tone_cache(".wav", 0.5, freq=200 + i) for i in range(8)})

    with FaultyS3Proxy(client.meta.endpoint_url, always_fail_method="PUT", always_fail_path=f"/{OUT}/") as proxy:
        proc = run_cli("worker", env={"FFLEET_BATCH_JSON": json.dumps(_batch(items)), "FFLEET_WORKERS": "1",
                                      "AWS_ENDPOINT_URL": proxy.url, "FFLEET_S3_MAX_ATTEMPTS": "2"})

    assert proc.returncode == EXIT_INFRASTRUCTURE, proc.stderr
    records = _records(client)
    assert len(records) == 8
    storage = [r for r in records.values() if r.get("reason") == "storage_error"]
    assert len(storage) >= 5 and all(OUT in r["detail"] for r in storage)
    not_done = [r for r in records.values() if r["status"] == "not_done"]
    assert not_done and len(storage) + len(not_done) == 8
    assert any(line.get("event") == "circuit_open" for line in _log_lines(proc.stdout))


def _popen_worker(env: dict) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.Popen([sys.executable, "-m", "ffleet.cli", "worker"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # two worker runs and 3 s files read in real time
def test_sigterm_mid_batch_stops_cleanly_and_a_rerun_finishes(s3_endpoint, tone_cache):
    client = s3_endpoint
    _buckets(client, IN, OUT, RESULTS)
    files = {"media/a-first.wav": tone_cache(".wav", 0.5)}
    files.update({f"media/slow-{i}.wav": tone_cache(".wav", 3.0, freq=500 + i) for i in range(3)})
    items = _upload(client, files)
    # -re reads the input in real time, so each slow file takes at least 3 s of wall time however
    # fast the machine: the SIGTERM, sent when the first file is logged, lands while they are pending.
    request = _request()
    request["input"]["file_options"] = "-re"
    uri = _put_batch(client, _batch(items, request=request))

    proc = _popen_worker({**IMAGE_ENV, "FFLEET_BATCH_URI": uri, "FFLEET_WORKERS": "1"})
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("event") == "file":
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    logs = seen + _log_lines(rest)

    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    records = _records(client)
    # the file logged first succeeded. One thread converts while another reads back and stores, so
    # one slow file may have finished its conversion too before the stop; the rest were stopped
    done = {key for key, r in records.items() if r["status"] == "succeeded"}
    assert seen[-1]["key"] in done and len(done) <= 2, records
    for key in set(files) - done:
        assert records[key]["status"] == "not_done" and records[key]["reason"] == "interrupted", records[key]
    assert _out_keys(client) == {"out/" + key.replace(".wav", ".flac") for key in done}  # nothing for the unfinished files
    summary = next(line for line in logs if line.get("event") == "batch_summary")
    assert summary["interrupted"] is True and summary["files"]["not_done"] == 4 - len(done)

    rerun = run_cli("worker", env={**IMAGE_ENV, "FFLEET_BATCH_URI": uri, "FFLEET_WORKERS": "3"})

    assert rerun.returncode == EXIT_OK, rerun.stderr
    records = _records(client)
    assert all(r["status"] == "succeeded" for r in records.values()), records
    assert all(records[key]["extra"] == {"resumed": True} for key in done)  # skipped, not re-encoded
    assert all("resumed" not in r.get("extra", {}) for k, r in records.items() if k not in done)
    assert len(_out_keys(client)) == 4


STUCK_DOWNLOAD = """
import sys, threading
from ffleet import storage
fetch = storage.S3Storage.fetch
def stuck_fetch(self, key, dest):
    if "stuck" in key:
        threading.Event().wait()  # a download that never ends, which no SIGTERM can interrupt
    return fetch(self, key, dest)
storage.S3Storage.fetch = stuck_fetch
from ffleet.batch_worker import main
sys.exit(main())
"""


def test_records_are_written_within_the_grace_period_even_if_a_transfer_hangs(s3_endpoint, tone_cache):
    client = s3_endpoint
    _buckets(client, IN, OUT, RESULTS)
    items = _upload(client, {"media/a-first.wav": tone_cache(".wav", 0.5), "media/b-stuck.wav": tone_cache(".wav", 0.5),
                             "media/c-last.wav": tone_cache(".wav", 0.5)})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FFLEET_BATCH_JSON": json.dumps(_batch(items)),
           "FFLEET_WORKERS": "1", "FFLEET_STOP_GRACE_SECONDS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", STUCK_DOWNLOAD], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if json.loads(line).get("event") == "file":
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)

    assert proc.returncode == EXIT_INTERRUPTED, err
    records = _records(client)
    assert records["media/a-first.wav"]["status"] == "succeeded"
    assert records["media/b-stuck.wav"]["status"] == "not_done" and "after the stop" in records["media/b-stuck.wav"]["detail"]
    # the last one waited for its turn at FFmpeg (a thread fetches while another converts), or was
    # never taken: either way not done, and said so
    last = records["media/c-last.wav"]
    assert last["status"] == "not_done" and ("after the stop" in last["detail"] or last["detail"] == "stopped before this file started")
    assert _out_keys(client) == {"out/media/a-first.flac"}
    summary = [json.loads(line) for line in rest.splitlines() if '"batch_summary"' in line]
    assert len(summary) == 1 and summary[0]["files"]["not_done"] == 2


# --- parts, without subprocesses -------------------------------------------------------------


def test_an_empty_batch_writes_empty_records(s3_endpoint):
    import io

    from ffleet.batch_worker import main

    client = s3_endpoint
    _buckets(client, RESULTS)
    out = io.StringIO()
    batch = _batch([{"Key": "media/"}, {"Key": "media/readme.txt"}])  # nothing the request selects

    assert main({"FFLEET_BATCH_JSON": json.dumps(batch), "FFLEET_WORKERS": "1"}, stream=out) == EXIT_OK
    assert _records(client) == {}
    summary = [line for line in _log_lines(out.getvalue()) if line.get("event") == "batch_summary"]
    assert summary[0]["files"]["total"] == 0 and summary[0]["exit_code"] == 0


def test_parse_batch_names_the_bad_item():
    with pytest.raises(InvalidBatch, match=r"Items\[1\]"):
        parse_batch(_batch([{"Key": "media/a.wav"}, {"Size": 3}]), "b.json")
    with pytest.raises(InvalidBatch, match="BatchInput.results_prefix"):
        parse_batch({"BatchInput": {"request": _request(), "results_prefix": "/tmp/x", "batch_id": "b"}, "Items": []}, "b")
    with pytest.raises(InvalidBatch, match="BatchInput.batch_id"):
        parse_batch(_batch([], batch_id="../evil"), "b")
    batch = parse_batch(_batch([{"Key": "media/a.wav", "Size": 5}, {"key": "media/a.wav"}, {"key": "media/x.txt"}]), "b")
    assert [(i.key, i.size) for i in batch.items] == [("media/a.wav", 5)]
    assert batch.ignored == 2
    assert batch.records_uri == f"{PREFIX}records/batch-0001.jsonl"


def test_cgroup_cpu_limit(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3  # 2.5 CPUs of quota: 3 FFmpegs keep it busy
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None


def test_default_workers_is_capped_by_a_container_quota(tmp_path):
    """`ffleet run` in a container started with --cpus 1 runs one FFmpeg, however many CPUs the host shows."""
    cpus = len(os.sched_getaffinity(0))
    assert default_workers(tmp_path) == cpus  # no quota file: every usable CPU
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert default_workers(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(cpus + 3) * 100000} 100000\n")
    assert default_workers(tmp_path) == cpus  # a quota above the CPUs does not add FFmpegs


@pytest.fixture
def ecs_metadata():
    """A stand-in for the ECS container metadata endpoint; set `.cpu` to the container's CPU units."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"Name": "worker", "Limits": {"CPU": server.cpu, "Memory": 4096}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.cpu = 2048
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.uri = f"http://127.0.0.1:{server.server_port}/v4/abc"
    yield server
    server.shutdown()


def test_workers_follow_the_job_not_the_host(ecs_metadata, tmp_path):
    env = {"ECS_CONTAINER_METADATA_URI_V4": ecs_metadata.uri}
    assert ecs_cpu_limit(env) == 2
    ecs_metadata.cpu = 0  # no limit set: no information
    assert ecs_cpu_limit(env) is None
    ecs_metadata.cpu = 1024
    assert job_workers(env, cgroup_root=tmp_path) == 1
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    ecs_metadata.cpu = 8192
    assert job_workers(env, cgroup_root=tmp_path) == 1  # the quota is smaller than the shares
    assert job_workers({**env, "FFLEET_WORKERS": "5"}, cgroup_root=tmp_path) == 5
    assert ecs_cpu_limit({"ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/nothing"}, timeout=0.5) is None
    with pytest.raises(InvalidBatch, match="FFLEET_WORKERS"):
        job_workers({"FFLEET_WORKERS": "all"})


def test_stop_grace_from_the_environment():
    assert stop_grace_from_env({}) == DEFAULT_STOP_GRACE_SECONDS < 30  # ECS kills 30 s after SIGTERM
    assert stop_grace_from_env({"FFLEET_STOP_GRACE_SECONDS": "2.5"}) == 2.5
    for bad in ("soon", "-1"):
        with pytest.raises(InvalidBatch, match="FFLEET_STOP_GRACE_SECONDS"):
            stop_grace_from_env({"FFLEET_STOP_GRACE_SECONDS": bad})


@pytest.mark.parametrize("code, outcome", [
    ("NoSuchKey", {}), ("404", {}),
    ("AccessDenied", {}),  # a missing key, for a role without s3:ListBucket
    ("NoSuchBucket", "cannot read s3://results/records/b1.jsonl: NoSuchBucket The bucket is gone"),
])
def test_previous_records_of_a_missing_key_are_none(code, outcome):
    from botocore.exceptions import ClientError

    from ffleet.batch_worker import BatchError, read_previous_records
    from ffleet.storage import S3Storage

    class Client:
        def get_object(self, Bucket, Key):
            raise ClientError({"Error": {"Code": code, "Message": "The bucket is gone"}}, "GetObject")

    store = S3Storage("results", client=Client())
    if isinstance(outcome, dict):
        assert read_previous_records(store, "records/b1.jsonl") == outcome
    else:
        with pytest.raises(BatchError) as exc:
            read_previous_records(store, "records/b1.jsonl")
        assert str(exc.value) == outcome
