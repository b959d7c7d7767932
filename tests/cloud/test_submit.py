"""`ffleet submit REQUEST --stack NAME`: looks the trigger bucket up from the stack outputs and uploads under jobs/."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_json

STACK_TEMPLATE = {
    "Resources": {"Trigger": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "ffleet-trigger-test"}}},
    "Outputs": {
        "TriggerBucketName": {"Value": {"Ref": "Trigger"}},
        "ResultsBucketName": {"Value": "ffleet-results-test"},
    },
}


def _request(**over) -> dict:
    req = {
        "name": "podcasts",
        "input": {"s3_bucket": "in", "s3_prefix": "media/"},
        "output": {"s3_bucket": "out", "s3_prefix": "mono/", "file_options": "-ac 1"},
    }
    req.update(over)
    return req


@pytest.fixture
def stack(s3_endpoint, moto_server):
    import boto3

    cfn = boto3.client("cloudformation", endpoint_url=moto_server, region_name="us-east-1")
    cfn.create_stack(StackName="ffleet-test", TemplateBody=json.dumps(STACK_TEMPLATE))
    yield cfn
    cfn.delete_stack(StackName="ffleet-test")


def test_submit_uploads_the_normalised_request_under_jobs(stack, s3_endpoint, tmp_path, moto_server):
    path = write_json(tmp_path / "req.json", _request(**{"global": {"options": "null"}}))
    proc = run_cli("submit", str(path), "--stack", "ffleet-test", env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 0, proc.stderr
    keys = [o["Key"] for o in s3_endpoint.list_objects_v2(Bucket="ffleet-trigger-test")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("jobs/podcasts/") and keys[0].endswith(".json")
    body = json.loads(s3_endpoint.get_object(Bucket="ffleet-trigger-test", Key=keys[0])["Body"].read())
    assert body["name"] == "podcasts" and body["global"]["options"] is None
    assert f"s3://ffleet-trigger-test/{keys[0]}" in proc.stdout
    assert ".rejected.json" in proc.stdout


def test_submit_twice_makes_two_runs(stack, s3_endpoint, tmp_path, moto_server):
    path = write_json(tmp_path / "req.json", _request())
    for _ in range(2):
        assert run_cli("submit", str(path), "--stack", "ffleet-test", env={"AWS_ENDPOINT_URL": moto_server}).returncode == 0
    assert len(s3_endpoint.list_objects_v2(Bucket="ffleet-trigger-test")["Contents"]) == 2


def test_submit_refuses_an_invalid_request_before_uploading(stack, s3_endpoint, tmp_path, moto_server):
    path = write_json(tmp_path / "req.json", _request(compute="quantum"))
    proc = run_cli("submit", str(path), "--stack", "ffleet-test", env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 2 and "compute" in proc.stderr
    assert "Contents" not in s3_endpoint.list_objects_v2(Bucket="ffleet-trigger-test")


def test_submit_refuses_local_folders(stack, tmp_path, moto_server):
    path = write_json(tmp_path / "req.json", _request(input={"path": str(tmp_path)}))
    proc = run_cli("submit", str(path), "--stack", "ffleet-test", env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 2 and "input.path" in proc.stderr


def test_submit_names_a_missing_stack(s3_endpoint, tmp_path, moto_server):
    path = write_json(tmp_path / "req.json", _request())
    proc = run_cli("submit", str(path), "--stack", "no-such-stack", env={"AWS_ENDPOINT_URL": moto_server})
    assert proc.returncode == 2 and "no-such-stack" in proc.stderr
