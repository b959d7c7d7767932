"""`sam local invoke` of both functions with the events in events/, in Docker, against a moto server: SAM's wiring (handlers, layers, environment), with a stand-in of the Lambda base image.

Run by scripts/image-test, which builds the stand-in (Debian's Python 3.13 + awslambdaric under
public.ecr.aws/lambda/python:3.13-<arch>; registries are not reachable here); skipped elsewhere.
What this cannot check: AWS's own runtime (Amazon Linux 2023, AWS's pinned boto3).
The template is used through a copy that differs in two ways, both for this test only: the
functions' architecture is the stand-in's, and AWS_ENDPOINT_URL is declared (`sam local invoke
--env-vars` sets only variables the template declares).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import imagekit
from cloudkit import REPO, load_template
from conftest import EVENTS
from ffleet.results import ItemResult

pytestmark = [pytest.mark.image, pytest.mark.skipif(not imagekit.LAMBDA_BASE, reason=imagekit.NO_IMAGE)]


def _sam() -> str:
    here = Path(sys.executable).parent / "sam"
    found = str(here) if here.exists() else shutil.which("sam")
    if not found:
        pytest.fail("sam is not installed: pip install -e '.[dev]' provides it")
    return found


def _absolute(value, base: Path):
    return str(base / value) if isinstance(value, str) and not value.startswith(("s3://", "/")) else value


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """`sam build` of a copy of template.yaml for the stand-in's architecture, with AWS_ENDPOINT_URL declared."""
    if not imagekit.LAMBDA_BASE or not imagekit.BRIDGE:
        pytest.skip("no Lambda base stand-in or Docker bridge: scripts/image-test prepares them (root, Docker)")
    arch = imagekit.LAMBDA_BASE.rsplit("-", 1)[1]
    work = tmp_path_factory.mktemp("sam")
    template = json.loads(json.dumps(load_template()))
    template["Globals"]["Function"]["Architectures"] = [arch]
    template["Globals"]["Function"]["Environment"]["Variables"]["AWS_ENDPOINT_URL"] = ""
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = _absolute(props[key], REPO)
        if resource.get("Type") == "AWS::Serverless::LayerVersion":
            props["CompatibleArchitectures"] = [arch]
            resource.setdefault("Metadata", {})["BuildArchitecture"] = arch
    (work / "template.json").write_text(json.dumps(template))
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    # sam build uses a local python3.13; pyenv provides it on these machines
    env.setdefault("PYENV_VERSION", "3.11.7:3.12.1:3.13.0")
    started = time.monotonic()
    proc = subprocess.run([_sam(), "build", "--template", str(work / "template.json"), "--build-dir", str(work / "build")],
                          capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    imagekit.report(f"sam build ({arch}): {time.monotonic() - started:.0f} s")
    return work / "build" / "template.yaml"


@pytest.fixture(scope="module")
def moto_on_bridge():
    """A moto server on the Docker bridge address: SAM runs the function on the bridge network
    (it ignores --docker-network host), where the host is this address. Yields (url, clients)."""
    import boto3

    server, url = imagekit.start_moto_server(imagekit.BRIDGE)
    clients = {name: boto3.client(name, endpoint_url=url, region_name="us-east-1") for name in ("s3", "stepfunctions")}
    yield url, clients
    server.stop()


def _invoke(built: Path, function: str, event: dict, variables: dict, tmp_path: Path) -> dict:
    """`sam local invoke` as the README shows a user, plus --skip-pull-image (the stand-in is local);
    returns the handler's result. SAM exits 0 when the handler raises: its output is checked too."""
    (tmp_path / "event.json").write_text(json.dumps(event))
    (tmp_path / "env.json").write_text(json.dumps({"Parameters": variables}))
    started = time.monotonic()
    proc = subprocess.run(
        [_sam(), "local", "invoke", function, "--template", str(built), "--event", str(tmp_path / "event.json"),
         "--env-vars", str(tmp_path / "env.json"), "--skip-pull-image", "--region", "us-east-1"],
        # SAM's own AWS calls (it asks STS for the account id) go to moto too: no 10 s timeout offline
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_ENDPOINT_URL": variables["AWS_ENDPOINT_URL"]},
    )
    imagekit.report(f"sam local invoke {function}: {time.monotonic() - started:.1f} s")
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both[-4000:]
    assert '"errorType"' not in both, both[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_start_function_starts_an_execution(built, moto_on_bridge, tmp_path):
    url, c = moto_on_bridge
    s3, sfn = c["s3"], c["stepfunctions"]
    event = json.loads((EVENTS / "s3-put.json").read_text())
    bucket = event["Records"][0]["s3"]["bucket"]["name"]
    request = json.loads((EVENTS / "original-request.json").read_text())
    results = "ffleet-results-image-test"
    for b in (bucket, results, request["input"]["s3_bucket"], request["output"]["s3_bucket"]):
        s3.create_bucket(Bucket=b)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = "jobs/podcast episodes (ep 1).json"  # the event's key, URL-decoded ('+' is a space)
    put = s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(request).encode())
    obj = event["Records"][0]["s3"]["object"]
    obj["versionId"], obj["eTag"] = put["VersionId"], put["ETag"].strip('"')
    machine = sfn.create_state_machine(
        name="ffleet-pipeline", roleArn="arn:aws:iam::123456789012:role/sfn",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}),
    )["stateMachineArn"]

    out = _invoke(built, "StartFunction", event,
                  {"AWS_ENDPOINT_URL": url, "STATE_MACHINE_ARN": machine, "RESULTS_BUCKET": results,
                   # the stack's own buckets: the start function refuses a request for any other
                   "INPUT_BUCKET": request["input"]["s3_bucket"], "OUTPUT_BUCKET": request["output"]["s3_bucket"]},
                  tmp_path)
    assert len(out["started"]) == 1 and not out["rejected"], out
    executions = sfn.list_executions(stateMachineArn=machine)["executions"]
    assert [e["executionArn"] for e in executions] == [out["started"][0]["execution_arn"]]
    execution_input = json.loads(sfn.describe_execution(executionArn=executions[0]["executionArn"])["input"])
    assert execution_input["request"]["name"] == request["name"], execution_input


def test_summarize_function_writes_the_summary(built, moto_on_bridge, tmp_path):
    url, c = moto_on_bridge
    s3 = c["s3"]
    event = json.loads((EVENTS / "summarize.json").read_text())
    bucket, prefix = event["results_prefix"][len("s3://"):].split("/", 1)
    s3.create_bucket(Bucket=bucket)
    records = [
        ItemResult(key="media-assets/a.wav", status="succeeded", output_key="output/a.flac"),
        ItemResult(key="media-assets/b.wav", status="failed", reason="corrupt_input", detail="Invalid data"),
    ]
    s3.put_object(Bucket=bucket, Key=f"{prefix}records/b1.jsonl",
                  Body="".join(r.to_json() + "\n" for r in records).encode())
    writer = event["map_result"]["ResultWriterDetails"]
    manifest = {"DestinationBucket": bucket, "MapRunArn": event["map_result"]["MapRunArn"],
                "ResultFiles": {"FAILED": [], "PENDING": [], "SUCCEEDED": []}}
    s3.put_object(Bucket=writer["Bucket"], Key=writer["Key"], Body=json.dumps(manifest).encode())

    out = _invoke(built, "SummarizeFunction", event, {"AWS_ENDPOINT_URL": url}, tmp_path)
    assert out["files"]["total"] == 2 and out["files"]["succeeded"] == 1 and out["files"]["failed"] == 1, out
    summary = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}summary.json")["Body"].read())
    assert summary["files"] == out["files"]
    assert summary["failures_by_reason"] == {"corrupt_input": 1}
