"""The shipped ASL executed by moto's Step Functions engine: S3 event -> start handler -> map -> Batch -> summarize.

What moto lacks is adapted here, in the test only (each adaptation says why):
- ItemBatcher: moto does not parse it. The test replaces it with an ItemSelector that builds the same
  {"BatchInput": ..., "Items": [...]} shape for a batch of one item (MaxItemsPerBatch = 1).
- batch:submitJob.sync: moto's Step Functions passes the ASL's PascalCase names (JobName,
  ContainerOverrides.Environment) to boto3, which wants camelCase; the test converts them.
- AWS Batch: moto's simple backend marks every job SUCCEEDED at once. The test hooks submit_job to run a
  stand-in worker (reads the batch object, writes records/<batch_id>.jsonl) and fails the job on request.
- ReaderConfig InputType JSONL: unknown to moto; the JSON Lines branch is renamed to JSON and not run.
- ResultWriter Parameters: moto evaluates their paths against the children's results, AWS against
  the Map state's input; the test evaluates them against the state input.
- ResultWriter files: moto writes only manifest.json; the test also writes SUCCEEDED_0.json with one
  entry per child (its Output and Status), as AWS does, so the summarizer sees each failed batch.
- lambda:invoke: moto would need a container engine; the test calls the summarize handler in-process
  (functions/summarize/app.py when present, else a stand-in defined below).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import time
import uuid
from pathlib import Path

import pytest

from cloudkit import REPO, default_values, load_template, render_asl
from conftest import EVENTS
from ffleet.results import ItemResult

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402

MOTO_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "batch": {"use_docker": False}}
REGION = "us-east-1"
TRIGGER, RESULTS, MEDIA, OUT = "ffleet-trigger", "ffleet-results", "media-in", "media-out"
FAIL_MARK = "corrupt-infra"  # a key containing this makes the stand-in Batch job fail
BLOCKED_MARK = "no-capacity"  # ... and this makes it fail as the queue's JobStateTimeLimitActions cancel it
CANCELLED_REASON = "Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"


class FakeContext:
    function_name = "ffleet-start"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:ffleet-start"
    aws_request_id = "test-request"


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def adapt_for_moto(definition: dict, keep_result_writer: bool = True) -> dict:
    """The moto adaptations listed in the module docstring, applied to a rendered definition."""
    d = copy.deepcopy(definition)
    for state in d["States"].values():
        if state.get("Type") != "Map":
            continue
        if not keep_result_writer:
            # moto's ResultWriter writes only manifest.json, not the children's outputs; without it
            # the Map returns those outputs inline, so a test can read what each child recorded.
            state.pop("ResultWriter")
        batcher = state.pop("ItemBatcher")
        # moto: no ItemBatcher; build the batch shape per item instead (a batch of one), keeping
        # the shipped ItemSelector as the item's shape.
        selector = state.get("ItemSelector")
        items = {"Items": [selector]} if selector else {"Items.$": "States.Array($$.Map.Item.Value)"}
        state["ItemSelector"] = {"BatchInput": batcher["BatchInput"], **items}
        reader = state["ItemReader"].get("ReaderConfig", {})
        if reader.get("InputType") == "JSONL":
            reader["InputType"] = "JSON"  # moto does not know JSONL; this branch is not executed here
    return d


def _camel(obj):
    if isinstance(obj, dict):
        return {k[:1].lower() + k[1:]: _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _pascal(obj: dict) -> dict:
    return {k[:1].upper() + k[1:]: v for k, v in obj.items()}


@pytest.fixture
def summarize_handler(monkeypatch):
    """The real summarize handler if this checkout has it, else a stand-in that honours the contract."""
    real = REPO / "functions" / "summarize" / "app.py"
    if real.exists():
        module = _load_module(real, f"summarize_app_{uuid.uuid4().hex}")
        return module.handler

    def stand_in(event, context):  # stand-in: functions/summarize/app.py is not in this checkout yet
        import boto3

        s3 = boto3.client("s3", region_name=REGION)
        assert set(event) >= {"execution_name", "results_prefix", "request", "map_result"}, event
        bucket, prefix = event["results_prefix"][5:].split("/", 1)
        records = []
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "records/").get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
            records += [json.loads(line) for line in body.splitlines() if line.strip()]
        summary = {"files": len(records), "map_result": event["map_result"]}
        s3.put_object(Bucket=bucket, Key=prefix + "summary.json", Body=json.dumps(summary).encode())
        return summary

    return stand_in


@pytest.fixture
def cloud(request, monkeypatch, summarize_handler):
    """moto S3 + Batch + Step Functions with the shipped (adapted) state machine; yields a namespace."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ffleet")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ffleet")
    with mock_aws(config=MOTO_CONFIG):
        import boto3

        s3 = boto3.client("s3", region_name=REGION)
        for b in (TRIGGER, RESULTS, MEDIA, OUT):
            s3.create_bucket(Bucket=b)
        s3.put_bucket_versioning(Bucket=TRIGGER, VersioningConfiguration={"Status": "Enabled"})

        batch = boto3.client("batch", region_name=REGION)
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        ce = batch.create_compute_environment(computeEnvironmentName="ffleet-ce", type="UNMANAGED", serviceRole=role)
        arns = {}
        for kind in ("Intel", "Amd", "Arm", "Nvidia", "Fargate", "FargateArm"):
            q = batch.create_job_queue(jobQueueName=f"q{kind}", state="ENABLED", priority=1,
                                       computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}])
            jd = batch.register_job_definition(jobDefinitionName=f"jd{kind}", type="container",
                                               containerProperties={"image": "ffleet", "command": ["ffleet", "worker"],
                                                                    "vcpus": 1, "memory": 512})
            # a second revision replaces the first, as a stack update does: jobs go to the latest ACTIVE one
            jd2 = batch.register_job_definition(jobDefinitionName=f"jd{kind}", type="container",
                                                containerProperties={"image": "ffleet:2", "command": ["ffleet", "worker"],
                                                                     "vcpus": 1, "memory": 512})
            batch.deregister_job_definition(jobDefinition=jd["jobDefinitionArn"])
            arns[f"{kind}JobQueueArn"] = q["jobQueueArn"]
            arns[f"{kind}JobDefinitionName"] = f"jd{kind}"
            arns[f"{kind}Revision"] = jd2["jobDefinitionArn"]
        arns["SummarizeFunctionArn"] = f"arn:aws:lambda:{REGION}:123456789012:function:ffleet-summarize"

        template = load_template()
        definition = adapt_for_moto(render_asl(default_values(template, arns)), getattr(request, "param", True))
        sfn = boto3.client("stepfunctions", region_name=REGION)
        sm = sfn.create_state_machine(name="ffleet-pipeline", definition=json.dumps(definition), roleArn=role)["stateMachineArn"]

        submitted: list[dict] = []
        _hook_moto(monkeypatch, submitted, summarize_handler)

        monkeypatch.setenv("STATE_MACHINE_ARN", sm)
        monkeypatch.setenv("RESULTS_BUCKET", RESULTS)
        monkeypatch.setenv("INPUT_BUCKET", MEDIA)
        monkeypatch.setenv("OUTPUT_BUCKET", OUT)
        start = _load_module(REPO / "functions" / "start" / "app.py", f"start_app_{uuid.uuid4().hex}")

        class NS:
            pass

        ns = NS()
        ns.s3, ns.sfn, ns.sm, ns.start, ns.submitted, ns.arns = s3, sfn, sm, start, submitted, arns
        yield ns


def _hook_moto(monkeypatch, submitted: list, summarize_handler):
    from moto.batch_simple.models import BatchSimpleBackend
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.result_writer_decl import ResultWriter
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_batch import (
        StateTaskServiceBatch,
    )

    original_eval = StateTaskServiceBatch._eval_service_task

    def eval_camel(self, env, resource_runtime_part, normalised_parameters, state_credentials):
        # moto: boto3's Batch API wants camelCase; the ASL (like AWS) uses PascalCase both ways.
        original_eval(self, env, resource_runtime_part, _camel(normalised_parameters), state_credentials)
        env.stack.append(_pascal(env.stack.pop()))

    original_resolver = StateTaskServiceBatch._build_sync_resolver

    def resolver_pascal(self, *args, **kwargs):
        resolve = original_resolver(self, *args, **kwargs)

        def resolve_pascal():
            job = resolve()
            return None if job is None else _pascal(job)

        return resolve_pascal

    monkeypatch.setattr(StateTaskServiceBatch, "_eval_service_task", eval_camel)
    monkeypatch.setattr(StateTaskServiceBatch, "_build_sync_resolver", resolver_pascal)

    original_submit = BatchSimpleBackend.submit_job
    original_finish = BatchSimpleBackend._mark_job_as_finished
    failing: dict[str, str | None] = {}  # job names whose stand-in worker "crashed" -> status reason

    def submit_and_work(self, job_name, job_def_id, job_queue, *args, container_overrides=None, **kw):
        env = {e["name"]: e["value"] for e in (container_overrides or {}).get("environment", [])}
        outcome = _stand_in_worker(env["FFLEET_BATCH_URI"])
        if outcome:
            failing[job_name] = CANCELLED_REASON if outcome == "cancelled" else None
        submitted.append({"job_name": job_name, "job_queue": job_queue, "job_definition": job_def_id, "env": env,
                          "timeout": kw.get("timeout")})
        return original_submit(self, job_name, job_def_id, job_queue, *args, container_overrides=container_overrides, **kw)

    def finish(self, include_start_attempt, job):
        original_finish(self, include_start_attempt, job)
        if job.job_name in failing:
            job.job_stopped = False  # moto marked it SUCCEEDED; stop it again as FAILED
            job._mark_stopped(success=False)  # an infrastructure fault: the worker exited non-zero
            if failing[job.job_name]:
                job.job_stopped_reason = failing[job.job_name]

    monkeypatch.setattr(BatchSimpleBackend, "_mark_job_as_finished", finish)
    monkeypatch.setattr(BatchSimpleBackend, "submit_job", submit_and_work)

    def invoke_in_process(parameters, region, state_credentials):
        # moto: invoking a Lambda needs a container engine; call the handler here instead.
        payload = json.loads(parameters["Payload"])
        return {"StatusCode": 200, "Payload": summarize_handler(payload, FakeContext())}

    monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", invoke_in_process)

    def result_writer_on_state_input(self, env):
        # moto evaluates ResultWriter's Parameters against the children's results; AWS evaluates
        # them against the Map state's input, which is where the ASL's $.results paths point.
        results = env.stack.pop()
        env.stack.append(env.states.get_input())
        self.parargs.eval(env=env)
        parameters = env.stack.pop()
        env.stack.pop()
        env.stack.extend([results, parameters])
        self.resource_eval.eval_resource(env=env)
        # moto writes only manifest.json; write the children's entries as AWS does (SUCCEEDED_0.json)
        details = env.stack[-1]["ResultWriterDetails"]
        import boto3

        s3 = boto3.client("s3", region_name=REGION)
        folder = details["Key"].rsplit("/", 1)[0]
        entries = [{"ExecutionArn": f"{env.stack[-1]['MapRunArn']}:{i}", "Input": "{}", "Output": json.dumps(o),
                    "Status": "SUCCEEDED"} for i, o in enumerate(results)]
        body = json.dumps(entries).encode()
        s3.put_object(Bucket=details["Bucket"], Key=f"{folder}/SUCCEEDED_0.json", Body=body)
        manifest = json.loads(s3.get_object(Bucket=details["Bucket"], Key=details["Key"])["Body"].read())
        manifest["ResultFiles"]["SUCCEEDED"] = [{"Key": f"{folder}/SUCCEEDED_0.json", "Size": len(body)}]
        s3.put_object(Bucket=details["Bucket"], Key=details["Key"], Body=json.dumps(manifest).encode())

    monkeypatch.setattr(ResultWriter, "_eval_body", result_writer_on_state_input)


def _stand_in_worker(batch_uri: str) -> str | None:
    """Stand-in for `ffleet worker` (no container here): read and filter the batch object as the worker
    does (batch_worker.parse_batch), and write one record per file it would process; no FFmpeg.

    Returns "failed" when the job should fail (an item key contains FAIL_MARK), "cancelled" when the
    queue should cancel it (BLOCKED_MARK), else None."""
    import boto3

    from ffleet.batch_worker import parse_batch

    s3 = boto3.client("s3", region_name=REGION)
    bucket, key = batch_uri[5:].split("/", 1)
    batch = parse_batch(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()), batch_uri)
    keys = [item.key for item in batch.items]
    if any(BLOCKED_MARK in k for k in keys):
        return "cancelled"
    if any(FAIL_MARK in k for k in keys):
        return "failed"
    rb, rp = batch.results_prefix[5:].split("/", 1)
    lines = [ItemResult(key=k, status="succeeded", output_key="out/" + k, duration_out=1.5, sample_rate=48000,
                        channels=1).to_json() + "\n" for k in keys]
    s3.put_object(Bucket=rb, Key=f"{rp}records/{batch.batch_id}.jsonl", Body="".join(lines).encode())
    return None


def _request(**processing) -> dict:
    return {
        "name": "podcast-episodes",
        "compute": "arm",
        "input": {"s3_bucket": MEDIA, "s3_prefix": "in/", "file_options": "null"},
        "output": {"s3_bucket": OUT, "s3_prefix": "out/", "file_options": "-ac 1 -ar 48000"},
        "global": {"options": "null"},
        "processing": {"files_per_job": 1, "tolerated_failure_percent": 50, **processing},
    }


def _put_request(cloud, key: str, request: dict) -> dict:
    """Upload a request and return the S3 event AWS would send (key URL-encoded, '+' for space)."""
    from urllib.parse import quote_plus

    resp = cloud.s3.put_object(Bucket=TRIGGER, Key=key, Body=json.dumps(request).encode())
    event = json.loads((EVENTS / "s3-put.json").read_text())
    obj = event["Records"][0]["s3"]["object"]
    event["Records"][0]["s3"]["bucket"]["name"] = TRIGGER
    obj["key"] = quote_plus(key, safe="/")
    obj["versionId"] = resp.get("VersionId", "")
    obj["eTag"] = resp["ETag"].strip('"')
    return event


def _wait(sfn, arn: str) -> dict:
    # moto runs the execution in a thread; poll until it leaves RUNNING (bounded, not timed).
    for _ in range(600):
        desc = sfn.describe_execution(executionArn=arn)
        if desc["status"] != "RUNNING":
            return desc
        time.sleep(0.1)
    raise AssertionError(f"{arn} still RUNNING")


def _history_names(sfn, arn: str) -> list[str]:
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    return [e.get("stateEnteredEventDetails", {}).get("name") for e in events if "stateEnteredEventDetails" in e]


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_s3_event_runs_the_map_and_summarizes(cloud):
    for name in ("in/a.wav", "in/b c.wav", f"in/{FAIL_MARK}.wav"):
        cloud.s3.put_object(Bucket=MEDIA, Key=name, Body=b"RIFF")
    # listed by the map, skipped by the worker: a console folder marker and a file of another extension
    cloud.s3.put_object(Bucket=MEDIA, Key="in/", Body=b"")
    cloud.s3.put_object(Bucket=MEDIA, Key="in/notes.txt", Body=b"not media")
    request = _request()
    request["input"]["extensions"] = [".wav"]
    event = _put_request(cloud, "jobs/podcast episodes (ep 1).json", request)

    out = cloud.start.handler(event, FakeContext())
    assert len(out["started"]) == 1 and not out["rejected"], out
    arn = out["started"][0]["execution_arn"]
    desc = _wait(cloud.sfn, arn)
    assert desc["status"] == "SUCCEEDED", desc
    names = _history_names(cloud.sfn, arn)
    assert "Use arm queue" in names and "Process prefix" in names and "Summarize run" in names

    exec_name = arn.rsplit(":", 1)[1]
    run = f"runs/{exec_name}/"
    # one job per listed object (batch of one under moto), each on the arm queue and definition from the template
    assert len(cloud.submitted) == 5
    assert {s["job_queue"] for s in cloud.submitted} == {cloud_arn(cloud, "qArm")}
    batch_keys = [k for k in _keys(cloud.s3, RESULTS, run + "batches/")]
    assert len(batch_keys) == 5
    assert {s["env"]["FFLEET_BATCH_URI"] for s in cloud.submitted} == {f"s3://{RESULTS}/{k}" for k in batch_keys}
    batch = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=batch_keys[0])["Body"].read())
    assert set(batch) == {"BatchInput", "Items"}
    assert set(batch["BatchInput"]) == {"request", "results_prefix", "batch_id"}
    assert batch["BatchInput"]["results_prefix"] == f"s3://{RESULTS}/{run}"
    assert batch_keys[0] == f"{run}batches/{batch['BatchInput']['batch_id']}.json"

    # the failed job was caught and recorded; the map went on and the summary was written
    output = json.loads(desc["output"])
    assert output["map_result"]["ResultWriterDetails"]["Key"].startswith(run)
    assert len(_keys(cloud.s3, RESULTS, run + "records/")) == 4  # the marker's and notes.txt's are empty
    summary = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=run + "summary.json")["Body"].read())
    # The files the worker skipped are not counted at all. The failed job's file failed with it; one of
    # three is within the request's 50 %, so the execution SUCCEEDED.
    assert summary["files"] == {"total": 3, "succeeded": 2, "failed": 1, "skipped": 0, "rejected": 0, "not_done": 0}
    assert [(f["key"], f["reason"]) for f in summary["failures"]] == [(f"in/{FAIL_MARK}.wav", "batch_job_failed")]
    assert summary["within_tolerance"] is True and output["summary"]["summary"]["within_tolerance"] is True
    # each job went to the latest ACTIVE revision, by name, with a time limit from the request
    assert {s["job_definition"] for s in cloud.submitted} == {"jdArm"}
    assert {s["timeout"]["attemptDurationSeconds"] for s in cloud.submitted} == {output["job_timing"]["attempt_seconds"]}


def test_manifests_asked_for_in_the_request_reach_the_summarizer(cloud):
    """results.manifests travels from the dropped request through the start Lambda and the map to the
    summarizer, which writes them under the run and metadata.jsonl at the output root."""
    for name in ("in/a.wav", "in/b.wav"):
        cloud.s3.put_object(Bucket=MEDIA, Key=name, Body=b"RIFF")
    request = _request()
    request["results"] = {"manifests": ["audiofolder", "nemo"]}
    out = cloud.start.handler(_put_request(cloud, "jobs/with-manifests.json", request), FakeContext())
    arn = out["started"][0]["execution_arn"]
    assert _wait(cloud.sfn, arn)["status"] == "SUCCEEDED"
    run = f"runs/{arn.rsplit(':', 1)[1]}/"
    assert _keys(cloud.s3, RESULTS, run + "manifests/") == [run + "manifests/audiofolder-metadata.jsonl", run + "manifests/nemo.jsonl"]
    metadata = cloud.s3.get_object(Bucket=OUT, Key="out/metadata.jsonl")["Body"].read().decode().splitlines()
    assert sorted(json.loads(line)["file_name"] for line in metadata) == ["in/a.wav", "in/b.wav"]
    nemo = cloud.s3.get_object(Bucket=RESULTS, Key=run + "manifests/nemo.jsonl")["Body"].read().decode().splitlines()
    assert sorted(json.loads(line)["audio_filepath"] for line in nemo) == [f"s3://{OUT}/out/in/a.wav", f"s3://{OUT}/out/in/b.wav"]


def cloud_arn(cloud, queue_name: str) -> str:
    import boto3

    return boto3.client("batch", region_name=REGION).describe_job_queues(jobQueues=[queue_name])["jobQueues"][0]["jobQueueArn"]


@pytest.mark.parametrize("cloud", [False], indirect=True, ids=["inline-map-output"])
def test_failed_batch_is_recorded_with_its_error(cloud):
    cloud.s3.put_object(Bucket=MEDIA, Key="in/good.wav", Body=b"RIFF")
    cloud.s3.put_object(Bucket=MEDIA, Key=f"in/{FAIL_MARK}.wav", Body=b"RIFF")
    out = cloud.start.handler(_put_request(cloud, "jobs/fail.json", _request()), FakeContext())
    arn = out["started"][0]["execution_arn"]
    desc = _wait(cloud.sfn, arn)
    assert desc["status"] == "SUCCEEDED", desc
    children = json.loads(desc["output"])["map_result"]
    by_status = {c["status"]: c for c in children}
    assert sorted(by_status) == ["FAILED", "SUCCEEDED"], children
    failed = by_status["FAILED"]
    assert failed["error"] == "States.TaskFailed" and failed["batch_uri"].startswith(f"s3://{RESULTS}/runs/")
    assert by_status["SUCCEEDED"]["job_id"]


def test_duplicate_event_starts_nothing_new(cloud):
    cloud.s3.put_object(Bucket=MEDIA, Key="in/a.wav", Body=b"RIFF")
    event = _put_request(cloud, "jobs/again.json", _request())
    first = cloud.start.handler(event, FakeContext())
    _wait(cloud.sfn, first["started"][0]["execution_arn"])
    second = cloud.start.handler(event, FakeContext())
    assert second["started"] == [] and len(second["already_running"]) == 1
    assert second["already_running"][0]["execution_arn"] == first["started"][0]["execution_arn"]
    assert len(cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"]) == 1
    assert len(cloud.submitted) == 1


def test_invalid_request_is_rejected_and_starts_nothing(cloud):
    bad = json.loads((EVENTS / "invalid-request.json").read_text())
    event = _put_request(cloud, "jobs/bad request.json", bad)
    out = cloud.start.handler(event, FakeContext())
    assert out["started"] == [] and len(out["rejected"]) == 1
    note = json.loads(cloud.s3.get_object(Bucket=TRIGGER, Key="jobs/bad request.json.rejected.json")["Body"].read())
    fields = {e["field"] for e in note["errors"]}
    assert {"name", "compute"} <= fields, note
    assert cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"] == []
    # the rejection note lands under jobs/ too; its own S3 event must not be treated as a request
    again = cloud.start.handler(_put_event_for_existing(cloud, "jobs/bad request.json.rejected.json"), FakeContext())
    assert again["ignored"] and not again["rejected"] and not again["started"]


def _put_event_for_existing(cloud, key: str) -> dict:
    from urllib.parse import quote_plus

    event = json.loads((EVENTS / "s3-put.json").read_text())
    event["Records"][0]["s3"]["bucket"]["name"] = TRIGGER
    event["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
    return event


@pytest.mark.parametrize("cloud", [False], indirect=True, ids=["inline-map-output"])
def test_csv_manifest_branch(cloud):
    cloud.s3.put_object(Bucket=MEDIA, Key="lists/todo.csv", Body=b"key,note\nin/x.wav,first\nin/y z.wav,second\n")
    req = _request()
    req["input"] = {"s3_bucket": MEDIA, "manifest": f"s3://{MEDIA}/lists/todo.csv"}
    out = cloud.start.handler(_put_request(cloud, "jobs/manifest.json", req), FakeContext())
    desc = _wait(cloud.sfn, out["started"][0]["execution_arn"])
    assert desc["status"] == "SUCCEEDED", desc
    assert "Process CSV manifest" in _history_names(cloud.sfn, desc["executionArn"])
    children = json.loads(desc["output"])["map_result"]
    assert [c["status"] for c in children] == ["SUCCEEDED", "SUCCEEDED"]
    items = []
    for c in children:
        bucket, key = c["batch_uri"][5:].split("/", 1)
        items += json.loads(cloud.s3.get_object(Bucket=bucket, Key=key)["Body"].read())["Items"]
    assert sorted(i["key"] for i in items) == ["in/x.wav", "in/y z.wav"]


def test_every_file_failing_at_tolerance_zero_ends_failed(cloud):
    """3 of 3 Batch jobs fail, tolerance 0: the execution FAILED, as `ffleet run` would exit 1, with a
    Cause naming the failed percentage and where summary.json is."""
    for n in range(3):
        cloud.s3.put_object(Bucket=MEDIA, Key=f"in/{FAIL_MARK}-{n}.wav", Body=b"RIFF")
    out = cloud.start.handler(_put_request(cloud, "jobs/all-fail.json", _request(tolerated_failure_percent=0)), FakeContext())
    arn = out["started"][0]["execution_arn"]
    desc = _wait(cloud.sfn, arn)
    assert desc["status"] == "FAILED", desc
    events = cloud.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    (failed,) = [e["executionFailedEventDetails"] for e in events if e["type"] == "ExecutionFailed"]
    run = f"s3://{RESULTS}/runs/{arn.rsplit(':', 1)[1]}/"
    assert failed["error"] == "ffleet.FailuresAboveTolerance"
    assert "3 of 3 files failed" in failed["cause"] and "100.00%" in failed["cause"] and "tolerated 0%" in failed["cause"]
    assert run + "summary.json" in failed["cause"]
    summary = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=run[len(f"s3://{RESULTS}/"):] + "summary.json")["Body"].read())
    assert summary["within_tolerance"] is False and summary["files"]["failed"] == 3


def test_a_batch_the_queue_cancelled_is_reported_with_its_reason(cloud):
    """A job that waited in RUNNABLE without capacity is cancelled by the queue; the summary says so."""
    cloud.s3.put_object(Bucket=MEDIA, Key=f"in/{BLOCKED_MARK}.wav", Body=b"RIFF")
    cloud.s3.put_object(Bucket=MEDIA, Key="in/fine.wav", Body=b"RIFF")
    out = cloud.start.handler(_put_request(cloud, "jobs/blocked.json", _request()), FakeContext())
    arn = out["started"][0]["execution_arn"]
    desc = _wait(cloud.sfn, arn)
    assert desc["status"] == "SUCCEEDED", desc  # 1 of 2 failed, within the request's 50 %
    run = f"runs/{arn.rsplit(':', 1)[1]}/"
    summary = json.loads(cloud.s3.get_object(Bucket=RESULTS, Key=run + "summary.json")["Body"].read())
    (failure,) = summary["failures"]
    assert failure["key"] == f"in/{BLOCKED_MARK}.wav" and failure["reason"] == "batch_job_failed"
    assert failure["detail"].startswith("cancelled while waiting in RUNNABLE")
    assert "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY" in failure["detail"]


@pytest.mark.parametrize("field", ["input.s3_bucket", "output.s3_bucket", "input.manifest"])
def test_a_request_for_another_bucket_is_rejected_up_front(cloud, field):
    req = _request()
    if field == "input.s3_bucket":
        req["input"]["s3_bucket"], allowed = "someone-elses-media", MEDIA
    elif field == "output.s3_bucket":
        req["output"]["s3_bucket"], allowed = "someone-elses-output", OUT
    else:
        req["input"] = {"s3_bucket": MEDIA, "manifest": "s3://someone-elses-media/list.csv"}
        allowed = MEDIA
    out = cloud.start.handler(_put_request(cloud, "jobs/elsewhere.json", req), FakeContext())
    assert out["started"] == [] and len(out["rejected"]) == 1
    note = json.loads(cloud.s3.get_object(Bucket=TRIGGER, Key="jobs/elsewhere.json.rejected.json")["Body"].read())
    (error,) = note["errors"]
    assert error["field"] == field and repr(allowed) in error["message"], error
    assert cloud.sfn.list_executions(stateMachineArn=cloud.sm)["executions"] == []
