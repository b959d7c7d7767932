"""Fault: S3 throttles (503 SlowDown) and fails (500) while a run lists, checks, fetches and uploads."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from s3_proxy import FaultyS3Proxy

from conftest import run_cli, write_json

N_FILES = 6


def _setup(s3, tone_cache) -> list[str]:
    s3.create_bucket(Bucket="media-in")
    s3.create_bucket(Bucket="media-out")
    keys = [f"media/clip {i}.wav" for i in range(N_FILES)]
    for k in keys:
        s3.upload_file(str(tone_cache(".wav", 1.0)), "media-in", k)
    return keys


def _request(tmp_path, tolerated=0):
    return write_json(tmp_path / "job.json", {
        "name": "flaky", "input": {"s3_bucket": "media-in", "s3_prefix": "media/"},
        "output": {"s3_bucket": "media-out", "s3_prefix": "o/", "extension": ".flac", "file_options": "-ac 1"},
        "processing": {"tolerated_failure_percent": tolerated},
    })


def _run(req, proxy_url, **env):
    p = run_cli("run", str(req), "--json", "--no-progress", "--workers", "2",
                env={"AWS_ENDPOINT_URL": proxy_url, **env})
    assert "Traceback" not in p.stderr, p.stderr
    return p


def _records(s3, name="flaky") -> list[dict]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="media-out", Prefix=f"ffleet-results/{name}/").get("Contents", [])]
    rec = [k for k in keys if k.endswith("records.jsonl")]
    assert len(rec) == 1, keys
    body = s3.get_object(Bucket="media-out", Key=rec[0])["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


@pytest.mark.parametrize("plan", [
    # a burst at the start (the listing is retried), then every fifth request all through the run
    {"fail_first": 3, "fail_every": 5},
    # S3 did the work, but the client saw a 500/503 and must retry a request that already succeeded
    {"fail_every": 5, "fail_after_forward": True},
], ids=["refused", "after-commit"])
def test_run_retries_and_every_file_is_done_once(tmp_path, s3_endpoint, moto_server, tone_cache, plan):
    """S3 answers 503 SlowDown / 500 to some requests. ffleet must retry them (botocore adaptive
    retries) and end with every file succeeded exactly once: one output object and one record per
    input key, no failures, exit 0."""
    s3 = s3_endpoint
    keys = _setup(s3, tone_cache)
    with FaultyS3Proxy(moto_server, **plan) as proxy:
        p = _run(_request(tmp_path), proxy.url)
    assert proxy.injected_total >= 3, "the fault plan did not trigger: the test proves nothing"
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["files"]["total"] == N_FILES and s["files"]["succeeded"] == N_FILES, s
    records = _records(s3)
    assert Counter(r["key"] for r in records) == Counter(keys)  # each key once, no duplicates
    assert {r["status"] for r in records} == {"succeeded"}
    outputs = [o["Key"] for o in s3.list_objects_v2(Bucket="media-out", Prefix="o/")["Contents"]]
    assert sorted(outputs) == sorted("o/" + k.replace(".wav", ".flac") for k in keys)
    if not plan.get("fail_after_forward"):
        # a request refused before S3 saw it is never half-done: each output was PUT once
        puts = Counter(path for (method, path), n in proxy.forwarded.items() if method == "PUT" for _ in range(n))
        assert all(v == 1 for path, v in puts.items() if "/media-out/o/" in path), puts


def test_uploads_that_keep_failing_are_storage_errors_and_a_rerun_finishes(tmp_path, s3_endpoint, moto_server, tone_cache):
    """S3 answers 500 to every PUT for longer than the retries last. Each file must fail with reason
    storage_error (the infrastructure's fault, not the file's), no output object may exist, the
    run exits non-zero without a traceback, the records (which could not be uploaded either) are
    kept in a local folder the error message names, and a re-run once S3 recovers does every file."""
    s3 = s3_endpoint
    keys = _setup(s3, tone_cache)
    req = _request(tmp_path)
    with FaultyS3Proxy(moto_server, always_fail_method="PUT") as proxy:
        p = _run(req, proxy.url, FFLEET_S3_MAX_ATTEMPTS="2")
    assert proxy.injected[("PUT", 500)] >= N_FILES
    assert p.returncode != 0
    assert "o/" not in {o["Key"][:2] for o in s3.list_objects_v2(Bucket="media-out").get("Contents", [])}
    # the results could not be uploaded either: the CLI must say so and keep them locally
    m = re.search(r"kept in (\S+)", p.stderr)
    assert m and "s3://media-out/" in p.stderr, p.stderr
    kept = Path(m.group(1))
    try:
        recs = [json.loads(line) for line in (kept / "records.jsonl").read_text().splitlines()]
        assert sorted(r["key"] for r in recs) == sorted(keys)
        assert {(r["status"], r["reason"]) for r in recs} == {("failed", "storage_error")}
        assert json.loads((kept / "summary.json").read_text())["files"]["failed"] == N_FILES
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    p2 = _run(req, s3_endpoint.meta.endpoint_url)
    assert p2.returncode == 0, p2.stderr
    s2 = json.loads(p2.stdout)
    assert s2["files"]["succeeded"] == N_FILES
    assert len(s3.list_objects_v2(Bucket="media-out", Prefix="o/")["Contents"]) == len(keys)
