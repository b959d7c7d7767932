"""The SAM template and the ASL: linters, sam build, and the checks the linters do not make (IAM, ARNs, retries)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkit import ASL, PLACEHOLDER, REPO, TEMPLATE, asl, asl_placeholders, default_values, render_asl, substitutions, template  # noqa: F401 (fixtures)
from ffleet.request import COMPUTE_TYPES, parse_request
from ffleet.results import SummaryBuilder
from ffleet.summarize import RunSummary
from ffleet.trigger import execution_input

VENV_BIN = Path(sys.executable).parent
SAM_ENV = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PYENV_VERSION": "3.11.7:3.12.1:3.13.0", "AWS_DEFAULT_REGION": "us-east-1"}


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; run scripts/setup --dev")
    return found


# ------------------------------------------------------------------ linters and build


def test_cfn_lint_passes():
    proc = subprocess.run([_tool("cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.cloud
def test_sam_validate_lint_passes():
    proc = subprocess.run([_tool("sam"), "validate", "--lint", "--template", str(TEMPLATE)],
                          capture_output=True, text=True, cwd=REPO, env=SAM_ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _asl_validator() -> list[str]:
    if not shutil.which("node"):
        pytest.skip("node is not installed, so asl-validator cannot run (scripts/setup --dev installs it with npm)")
    local = REPO / "node_modules" / ".bin" / "asl-validator"
    if not local.exists():
        if not shutil.which("npm"):
            pytest.skip("npm is not installed, so asl-validator cannot be installed")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=REPO, check=True, timeout=600)
    return [str(local)]


@pytest.mark.cloud
def test_asl_validator_accepts_the_rendered_definition(template, tmp_path):
    rendered = tmp_path / "pipeline.json"
    rendered.write_text(json.dumps(render_asl(default_values(template))))
    proc = subprocess.run([*_asl_validator(), "--json-path", str(rendered)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.cloud
def test_asl_validator_reads_the_stored_file_as_it_is():
    """Editors, Workflow Studio and asl-validator read statemachine/pipeline.asl.json unsubstituted."""
    json.loads(ASL.read_text())  # valid JSON as stored: no bare ${...} numbers
    proc = subprocess.run([*_asl_validator(), "--json-path", str(ASL)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_placeholders_stand_only_for_whole_strings():
    """A ${...} outside a string (a number) would make the stored file invalid JSON again."""
    raw = json.loads(ASL.read_text())
    for path, key, value in _walk(raw):
        if isinstance(value, str) and "${" in value:
            assert key in ("Resource", "job_queue", "job_definition", "FunctionName"), (path, value)


@pytest.mark.cloud
def test_asl_validator_catches_a_broken_definition(template, tmp_path):
    """The check above can fail: a dangling Next is reported."""
    broken = render_asl(default_values(template))
    broken["States"]["Done"] = {"Type": "Pass", "Next": "Nowhere"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    proc = subprocess.run([*_asl_validator(), "--json-path", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0


@pytest.mark.slow
@pytest.mark.cloud
def test_sam_build_packages_the_shared_library(tmp_path):
    """sam build for arm64/python3.13: the library layer carries src/ffleet, the dependency layer pydantic."""
    work = tmp_path / "app"
    work.mkdir()
    for item in ("template.yaml", "statemachine", "functions", "layers", "src", "events"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    summarize = work / "functions" / "summarize" / "app.py"
    if not summarize.exists():
        # stand-in: functions/summarize/app.py is written by another part of the project
        summarize.parent.mkdir(parents=True, exist_ok=True)
        summarize.write_text('"""Stand-in summarize handler for the build test."""\n\ndef handler(event, context):\n    return event\n')
    proc = subprocess.run([_tool("sam"), "build", "--build-dir", str(work / "build")],
                          capture_output=True, text=True, cwd=work, env=SAM_ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    build = work / "build"
    assert (build / "StartFunction" / "app.py").exists()
    assert (build / "FfleetLibraryLayer" / "python" / "ffleet" / "trigger.py").exists()
    assert (build / "FfleetLibraryLayer" / "python" / "ffleet" / "request.py").exists()
    assert not (build / "StartFunction" / "ffleet").exists(), "the library must come from the layer, not a copy"
    core = list((build / "DependenciesLayer" / "python" / "pydantic_core").glob("*.so"))
    assert core and all("313" in p.name and "aarch64" in p.name for p in core), core
    assert (build / "DependenciesLayer" / "python" / "aws_lambda_powertools").is_dir()
    # boto3 and botocore ship together, at the pinned pair, so neither the runtime's boto3 nor its botocore is mixed in
    deps = build / "DependenciesLayer" / "python"
    for package, line in _requirements().items():
        if package in ("boto3", "botocore"):
            version = line.split("==")[1]
            assert (deps / f"{package}-{version}.dist-info").is_dir(), sorted(p.name for p in deps.glob(f"{package}-*"))


# ------------------------------------------------------------------ the ASL


def test_every_placeholder_has_a_substitution_and_back(template):
    used, given = asl_placeholders(), set(substitutions(template))
    assert used - given == set(), f"placeholders without a substitution: {sorted(used - given)}"
    assert given - used == set(), f"substitutions the ASL never uses: {sorted(given - used)}"


def test_every_compute_type_has_a_queue_and_definition(template, asl):
    subs = substitutions(template)
    choice = asl["States"]["Choose compute"]["Choices"]
    assert sorted(c["StringEquals"] for c in choice) == sorted(COMPUTE_TYPES)
    for c in choice:
        picked = asl["States"][c["Next"]]
        assert picked["Type"] == "Pass" and picked["ResultPath"] == "$.batch"
        stem = "".join(part.capitalize() for part in c["StringEquals"].split("-"))
        assert {f"{stem}JobQueueArn", f"{stem}JobDefinitionName"} <= set(subs)


def test_jobs_are_submitted_to_a_job_definition_name_not_a_revision(template, asl):
    """!Ref on a job definition is an ARN with its revision; a stack update deregisters that revision,
    and the rest of a running execution would submit to an INACTIVE one. A name means the latest ACTIVE."""
    subs = substitutions(template)
    resources = template["Resources"]
    for kind in COMPUTE_TYPES:
        stem = "".join(part.capitalize() for part in kind.split("-"))
        value = subs[f"{stem}JobDefinitionName"]
        assert value == resources[f"{stem}JobDefinition"]["Properties"]["JobDefinitionName"], (kind, value)
        assert "Ref" not in value and "Fn::GetAtt" not in value
        assert f"{stem}JobDefinition" in resources["PipelineStateMachine"]["DependsOn"]
        rendered = asl["States"][f"Use {kind} queue"]["Result"]["job_definition"]
        assert rendered == f"ffleet-{kind}" and ":" not in rendered  # no revision, no ARN


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), k, v
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _all_states(definition: dict):
    for name, state in definition["States"].items():
        yield name, state
        proc = state.get("ItemProcessor") or state.get("Iterator")
        if proc:
            yield from _all_states(proc)


def test_no_arn_is_built_from_the_request(asl):
    raw = json.loads(ASL.read_text())
    for path, key, value in _walk(raw):
        if key.endswith(".$") and isinstance(value, str):
            assert "arn:" not in value, f"{'/'.join(map(str, path))} builds an ARN at run time: {value}"
    # The queue and definition reach the Batch task only from the Pass states that hold template values.
    writers = [(n, s) for n, s in _all_states(raw) if s.get("ResultPath") == "$.batch"]
    assert len(writers) == len(COMPUTE_TYPES)
    # whole-string placeholders become "@Name"
    marked = json.loads(re.sub(r'"\$\{(\w+)\}"', r'"@\1"', ASL.read_text()))
    for name, _ in writers:
        result = marked["States"][name]["Result"]
        assert result["job_queue"].startswith("@") and result["job_queue"].endswith("JobQueueArn"), (name, result)
        assert result["job_definition"].startswith("@") and result["job_definition"].endswith("JobDefinitionName"), (name, result)
    for name, state in _all_states(asl):
        if state.get("Resource", "").endswith("batch:submitJob.sync"):
            params = state["Parameters"]
            assert params["JobQueue.$"] == "$.job.queue" and params["JobDefinition.$"] == "$.job.definition"
            assert "JobQueue" not in params and "JobDefinition" not in params
        if state.get("Type") == "Map":
            bi = state["ItemBatcher"]["BatchInput"]
            assert bi["job_queue.$"] == "$.batch.job_queue" and bi["job_definition.$"] == "$.batch.job_definition"
        if name.startswith("Name this batch"):
            job = state["Parameters"]["job"]
            assert (job["queue.$"], job["definition.$"]) == ("$.BatchInput.job_queue", "$.BatchInput.job_definition")


def test_submit_retry_backs_off_on_transient_errors_only(asl):
    """The original blog's tuned policy, written in the ASL (numbers cannot be substituted into a file that
    must stay valid JSON as stored)."""
    submits = [s for _, s in _all_states(asl) if s.get("Resource", "").endswith("submitJob.sync")]
    assert len(submits) == 3
    for state in submits:
        (retry,) = state["Retry"]
        assert (retry["IntervalSeconds"], retry["BackoffRate"], retry["MaxAttempts"], retry["MaxDelaySeconds"],
                retry["JitterStrategy"]) == (180, 3, 10, 300, "FULL")
        assert all(e.startswith("Batch.") for e in retry["ErrorEquals"]), retry["ErrorEquals"]
        assert "180 s, x3, 10 attempts, at most 300 s" in state["Comment"]
    # nowhere does a Retry catch everything or a failed job (the worker fails a job only for infra faults,
    # and Batch's retryStrategy already retries Spot reclaim)
    for name, state in _all_states(asl):
        for retry in state.get("Retry", []):
            assert not {"States.ALL", "States.TaskFailed"} & set(retry["ErrorEquals"]), name


def test_failed_batch_is_caught_and_recorded(asl):
    for name, state in _all_states(asl):
        if state.get("Resource", "").endswith("submitJob.sync"):
            (catch,) = state["Catch"]
            assert catch["ErrorEquals"] == ["States.ALL"] and catch["ResultPath"] == "$.error"
            target = next(s for n, s in _all_states(asl) if n == catch["Next"])
            assert target["Type"] == "Pass" and target.get("End") is True
            assert target["Parameters"]["status"] == "FAILED" and target["Parameters"]["batch_uri.$"] == "$.object.uri"


def test_the_three_maps_process_items_identically(asl):
    maps = {n: s for n, s in asl["States"].items() if s["Type"] == "Map"}
    assert set(maps) == {"Process prefix", "Process CSV manifest", "Process JSON Lines manifest"}
    strip = re.compile(r" \((prefix|CSV|JSON Lines)\)")
    shapes = {json.dumps({k: v for k, v in s.items() if k not in ("ItemReader", "ItemSelector", "Comment")}, sort_keys=True)
              for s in maps.values()}
    assert len({strip.sub("", s) for s in shapes}) == 1
    assert maps["Process CSV manifest"]["ItemReader"]["ReaderConfig"] == {"InputType": "CSV", "CSVHeaderLocation": "FIRST_ROW"}
    assert maps["Process JSON Lines manifest"]["ItemReader"]["ReaderConfig"] == {"InputType": "JSONL"}
    assert maps["Process prefix"]["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"
    for m in maps.values():
        assert m["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        assert m["ItemBatcher"]["MaxItemsPerBatchPath"] == "$.processing.files_per_job"
        assert m["MaxConcurrencyPath"] == "$.processing.max_concurrency"
        # Every failed job is caught inside the child, so a map-level tolerance would never fire; the
        # summary's within_tolerance decides the execution's status instead (docs/cloud.md).
        assert not {"ToleratedFailurePercentage", "ToleratedFailurePercentagePath"} & set(m)


def _lookup(doc, path: str):
    node = doc
    for part in path[2:].split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


@pytest.mark.parametrize("source", ["prefix", "s3://in/list.csv", "s3://in/failed.jsonl"])
def test_top_level_paths_exist_in_the_start_lambdas_input(asl, source):
    """Every $.path the top-level states read is in what the start Lambda sends (or set on the way)."""
    inp = {"s3_bucket": "in", "s3_prefix": "media/"} if source == "prefix" else {"s3_bucket": "in", "manifest": source}
    req = parse_request({"name": "n", "input": inp, "output": {"s3_bucket": "out", "s3_prefix": "o/"}})
    doc = execution_input(req, "n-1", "res", {"type": "s3"})
    doc["batch"] = {"job_queue": "q", "job_definition": "d"}  # set by the "Use ... queue" Pass states
    # set by "Summarize run": what the summarize handler returns
    doc["summary"] = {"summary": RunSummary(SummaryBuilder().summary(wall_seconds=0.0, results="s3://res/runs/n-1/")).short()}
    wanted = {"prefix": "Process prefix", "csv": "Process CSV manifest", "jsonl": "Process JSON Lines manifest"}
    chosen = wanted[doc["source"]["type"]]
    for name, state in asl["States"].items():
        if state["Type"] == "Map" and name != chosen:
            continue
        # the children read their own input; ResultSelector reads a task's result; ResultPath writes
        skip = {"ItemProcessor", "ItemSelector", "ResultSelector", "ResultPath", "Catch"}
        for path, key, value in _walk({k: v for k, v in state.items() if k not in skip}):
            if isinstance(value, str) and value.startswith("$.") and not value.startswith("$.map_result"):
                _lookup(doc, value)  # raises KeyError naming the missing path
            if key == "Variable" and not value.startswith("$.map_result"):
                _lookup(doc, value)


def test_summarize_gets_the_contract_event(asl):
    payload = asl["States"]["Summarize run"]["Parameters"]["Payload"]
    assert {k.removesuffix(".$") for k in payload} == {"execution_name", "results_prefix", "request", "map_result"}
    assert asl["States"]["Summarize run"]["Parameters"]["FunctionName"].startswith("arn:aws:lambda:")
    for m in ("Process prefix", "Process CSV manifest", "Process JSON Lines manifest"):
        assert asl["States"][m]["ResultPath"] == "$.map_result" and asl["States"][m]["Next"] == "Summarize run"
        assert asl["States"][m]["ResultWriter"]["Parameters"] == {"Bucket.$": "$.results.bucket", "Prefix.$": "$.results.writer_prefix"}


# ------------------------------------------------------------------ the template


def _resources(template, kind):
    return {n: r for n, r in template["Resources"].items() if r["Type"] == kind}


def test_buckets_are_locked_down(template):
    buckets = _resources(template, "AWS::S3::Bucket")
    assert set(buckets) == {"TriggerBucket", "ResultsBucket"}
    policies = _resources(template, "AWS::S3::BucketPolicy")
    for name, bucket in buckets.items():
        p = bucket["Properties"]
        assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
        assert p["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert any("AbortIncompleteMultipartUpload" in r for r in p["LifecycleConfiguration"]["Rules"])
        (policy,) = [pol for pol in policies.values() if pol["Properties"]["Bucket"] == {"Ref": name}]
        (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_job_definitions_run_the_worker_and_retry_only_spot_reclaim_and_infrastructure_faults(template):
    defs = _resources(template, "AWS::Batch::JobDefinition")
    assert len(defs) == len(COMPUTE_TYPES)
    for name, jd in defs.items():
        p = jd["Properties"]
        assert p["ContainerProperties"]["Command"] == ["ffleet", "worker"], name
        assert p["Timeout"]["AttemptDurationSeconds"] == {"Ref": "JobAttemptDurationSeconds"}
        rules = p["RetryStrategy"]["EvaluateOnExit"]
        assert rules[0] == {"OnStatusReason": "Host EC2*", "Action": "RETRY"}
        assert rules[-1] == {"OnReason": "*", "Action": "EXIT"}
        assert all(r["Action"] == "RETRY" for r in rules[:-1])
        # `ffleet worker` exits 1 only for infrastructure faults (docs/contracts.md); 2 (an invalid
        # batch) and anything else must not be retried
        assert {"OnExitCode": "1", "Action": "RETRY"} in rules, name
        assert not any(r.get("OnExitCode") not in (None, "1") for r in rules), name
        kinds = {r["Type"] for r in p["ContainerProperties"]["ResourceRequirements"]}
        assert {"VCPU", "MEMORY"} <= kinds
        assert ("GPU" in kinds) == (name == "NvidiaJobDefinition")


def _instance_defaults(template, kind: str) -> list[str]:
    ce = template["Resources"][f"{kind}ComputeEnvironment"]["Properties"]["ComputeResources"]
    assert ce["InstanceTypes"] == {"Ref": f"{kind}InstanceTypes"}, kind
    param = template["Parameters"][f"{kind}InstanceTypes"]
    assert param["Type"] == "CommaDelimitedList"
    return param["Default"].split(",")


def test_instance_types_are_parameters_with_widely_offered_defaults(template):
    """Batch fails the whole stack (ClientException) on one type the region does not offer: the newest
    families (c7i/m7i, c7a/m7a, c8g/m8g, g6, ...) are for users to add where offered, not defaults."""
    newest = re.compile(r"^[a-z]+(7|8)[a-z]*$|^g6")
    for kind in ("Intel", "Amd", "Arm", "Nvidia"):
        defaults = _instance_defaults(template, kind)
        assert defaults and not [t for t in defaults if newest.match(t)], (kind, defaults)
    assert set(_instance_defaults(template, "Nvidia")) <= {"g4dn", "g5", "g6"}  # NVENC (not Hopper)
    assert all(re.match(r"^[a-z]\d+g", t) for t in _instance_defaults(template, "Arm"))
    assert all(re.match(r"^[a-z]\d+i$", t) for t in _instance_defaults(template, "Intel"))
    assert all(re.match(r"^[a-z]\d+a$", t) for t in _instance_defaults(template, "Amd"))


def test_state_machine_logs_errors_by_default_and_traces(template):
    """ALL with execution data logs every map child's batch several times; ERROR is the default."""
    p = template["Resources"]["PipelineStateMachine"]["Properties"]
    assert p["Logging"]["Level"] == {"Ref": "StateMachineLogLevel"} and p["Tracing"] == {"Enabled": True}
    level = template["Parameters"]["StateMachineLogLevel"]
    assert level["Default"] == "ERROR" and set(level["AllowedValues"]) == {"ALL", "ERROR", "FATAL", "OFF"}
    assert p["DefinitionUri"] == "statemachine/pipeline.asl.json"


def test_triggers(template):
    events = template["Resources"]["StartFunction"]["Properties"]["Events"]
    rules = events["RequestDropped"]["Properties"]["Filter"]["S3Key"]["Rules"]
    assert {r["Name"]: r["Value"] for r in rules} == {"prefix": "jobs/"}  # any extension: a wrong one is rejected
    assert events["Scheduled"]["Properties"]["State"] == {"Ref": "ScheduleState"}
    assert template["Parameters"]["ScheduleState"]["Default"] == "DISABLED"
    g = template["Globals"]["Function"]
    assert g["Runtime"] == "python3.13" and g["Architectures"] == ["arm64"] and g["Tracing"] == "Active"
    assert set(g["Environment"]["Variables"]) >= {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}


def test_dashboard_body_is_json(template):
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    titles = " ".join(w["properties"]["title"] for w in widgets)
    for needed in ("Map run progress", "Batch jobs by state", "Files"):
        assert needed in titles


# ------------------------------------------------------------------ IAM over the transformed template


@pytest.fixture(scope="module")
def transformed(template):
    """The template after the SAM transform (what CloudFormation deploys), local paths replaced."""
    from unittest.mock import MagicMock

    from samtranslator.translator.transform import transform

    t = json.loads(json.dumps(template))
    for name, res in t["Resources"].items():
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://bucket/{name}"
        if "DefinitionUri" in props:
            props["DefinitionUri"] = {"Bucket": "bucket", "Key": "pipeline.asl.json"}
    loader = MagicMock()
    loader.load.return_value = {}
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(t, {"AWS::Region": "us-east-1"}, loader)


# Actions that have no resource-level permissions in IAM, so "*" is the narrowest resource.
STAR_ONLY = re.compile(
    r"^(batch:DescribeJobs|xray:\w+|logs:(Create|Get|Update|Delete|List)LogDeliver(y|ies)|"
    r"logs:PutResourcePolicy|logs:DescribeResourcePolicies|logs:DescribeLogGroups)$"
)
ALLOWED_MANAGED = {
    "AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess",
    "AmazonEC2ContainerServiceforEC2Role", "AmazonECSTaskExecutionRolePolicy",
}


def _statements(role: dict):
    for policy in role["Properties"].get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            if st["Effect"] == "Allow":
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                yield st, actions, resources


def iam_problems(resources: dict) -> list[str]:
    problems = []
    for name, role in resources.items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            text = json.dumps(arn)
            if not any(text.rstrip('"').endswith(m) or f"/{m}" in text for m in ALLOWED_MANAGED):
                problems.append(f"{name}: unexpected managed policy {text}")
        for st, actions, res in _statements(role):
            for action in actions:
                if "*" in action:
                    problems.append(f"{name}: wildcard action {action}")
            if "*" in res and not all(STAR_ONLY.match(a) for a in actions):
                problems.append(f"{name}: Resource '*' for {actions}")
    return problems


def test_no_role_is_broader_than_it_needs(transformed):
    assert iam_problems(transformed["Resources"]) == []


def test_the_iam_check_can_fail():
    role = {"Type": "AWS::IAM::Role", "Properties": {"Policies": [{"PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}]}}]}}
    assert len(iam_problems({"R": role})) == 2


def _role_text(transformed, role: str) -> tuple[set[str], str]:
    actions, texts = set(), []
    for st, acts, res in _statements(transformed["Resources"][role]):
        actions |= set(acts)
        texts.append(json.dumps(res))
    return actions, " ".join(texts)


def test_state_machine_role_has_what_sync_batch_and_distributed_map_need(transformed):
    actions, text = _role_text(transformed, "StateMachineRole")
    assert {"batch:SubmitJob", "batch:DescribeJobs", "batch:TerminateJob", "events:PutTargets", "events:PutRule",
            "events:DescribeRule", "states:StartExecution", "states:DescribeExecution", "states:StopExecution",
            "s3:ListBucket", "s3:GetObject", "s3:PutObject", "lambda:InvokeFunction"} <= actions
    assert "StepFunctionsGetEventsForBatchJobsRule" in text
    assert "stateMachine:${NamePrefix}-pipeline" in text
    assert not {"s3:DeleteObject", "iam:PassRole", "batch:CreateJobQueue"} & actions


def test_job_role_reads_inputs_writes_outputs_and_results_only(transformed):
    for st, acts, res in _statements(transformed["Resources"]["JobRole"]):
        text = json.dumps(res)
        assert all(a.startswith("s3:") for a in acts), acts
        # deleting only in the output bucket, where PutObject may already replace any object: a
        # rebuilt segment set removes the pieces of the set it replaces (README, segments)
        if "s3:DeleteObject" in acts:
            assert "OutputBucketName" in text and "InputBucketName" not in text and "ResultsBucket" not in text, text
        if "InputBucketName" in text:
            assert acts == ["s3:GetObject"], (st["Sid"], acts)
        else:
            assert "OutputBucketName" in text or "ResultsBucket" in text, text


def test_start_function_only_reads_requests_and_starts_the_pipeline(transformed):
    actions, text = _role_text(transformed, "StartFunctionRole")
    # sqs:SendMessage: the async on-failure destination (SAM adds it for EventInvokeConfig)
    assert actions == {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "states:StartExecution", "sqs:SendMessage"}
    assert "trigger" in text and "PipelineStateMachine" in text and "FailedRequestsQueue" in text


def test_comments_only_where_step_functions_accepts_them(asl):
    """asl-validator lets a Comment through anywhere; Step Functions takes it on states and the top level."""
    for name, state in _all_states(asl):
        for field in ("ItemBatcher", "ItemReader", "ResultWriter"):
            assert "Comment" not in state.get(field, {}), (name, field)
        for rule in state.get("Retry", []) + state.get("Catch", []):
            assert "Comment" not in rule, name


# ------------------------------------------------------------------ defects of issue 14, one test each


def test_a_run_not_within_tolerance_ends_failed_naming_the_percentage_and_the_summary(asl):
    """The execution's status means what `ffleet run`'s exit code means: after the summary, a Choice
    on within_tolerance, and a Fail whose Cause is the summarizer's verdict."""
    states = asl["States"]
    assert states["Summarize run"]["Next"] == "Did the map finish?"
    assert states["Did the map finish?"]["Default"] == "Within tolerance?"
    (choice,) = states["Within tolerance?"]["Choices"]
    assert choice == {"Variable": "$.summary.summary.within_tolerance", "BooleanEquals": True, "Next": "Done"}
    fail = states[states["Within tolerance?"]["Default"]]
    assert fail["Type"] == "Fail" and fail["Error"] == "ffleet.FailuresAboveTolerance"
    assert fail["CausePath"] == "$.summary.summary.verdict"
    assert states["Map did not finish"]["CausePath"] == "$.summary.summary.verdict"
    assert states["Done"]["Type"] == "Succeed"


def test_verdict_names_the_failed_percentage_tolerance_and_summary():
    from ffleet.results import ItemResult

    builder = SummaryBuilder()
    for key in ("a.wav", "b.wav", "c.wav"):
        builder.add(ItemResult(key=key, status="failed", reason="batch_job_failed"))
    summary = RunSummary(builder.summary(wall_seconds=0.0, tolerated_failure_percent=0.0), summary_uri="s3://r/runs/x/summary.json")
    short = summary.short()
    assert short["within_tolerance"] is False
    assert "3 of 3 files failed" in short["verdict"] and "100.00%" in short["verdict"]
    assert "not within the tolerated 0%" in short["verdict"] and "s3://r/runs/x/summary.json" in short["verdict"]


BLOCKED_REASONS = {"CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
                   "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"}


def test_no_job_waits_forever(template, asl):
    """Queues cancel jobs blocked in RUNNABLE for the reasons Batch documents; each job has a time limit
    from the request; the map child waits for it at most a finite time."""
    queues = _resources(template, "AWS::Batch::JobQueue")
    assert len(queues) == len(COMPUTE_TYPES)
    for name, q in queues.items():
        actions = q["Properties"]["JobStateTimeLimitActions"]
        assert {a["Reason"] for a in actions} == BLOCKED_REASONS, name
        for a in actions:
            assert a["State"] == "RUNNABLE" and a["Action"] == "CANCEL", name
            wait = a["MaxTimeSeconds"]
            if isinstance(wait, dict):
                param = template["Parameters"][wait["Ref"]]
                assert param["MinValue"] >= 600 and param["MaxValue"] <= 86400 and 600 <= param["Default"] <= 86400
            else:
                assert 600 <= wait <= 86400
    submits = [s for _, s in _all_states(asl) if s.get("Resource", "").endswith("submitJob.sync")]
    assert len(submits) == 3
    for s in submits:
        assert s["TimeoutSecondsPath"] == "$.job.wait_seconds"
        assert s["Parameters"]["Timeout"] == {"AttemptDurationSeconds.$": "$.job.attempt_seconds"}
    env = template["Resources"]["StartFunction"]["Properties"]["Environment"]["Variables"]
    assert env["JOB_VCPUS"] == {"Ref": "JobVcpus"} and env["CAPACITY_WAIT_SECONDS"] == {"Ref": "CapacityWaitSeconds"}


def test_job_timing_follows_the_request():
    from ffleet.joblimits import ATTEMPT_OVERHEAD_SECONDS, StackLimits, job_timing

    def req(compute="arm", **processing):
        return parse_request({"name": "n", "compute": compute, "input": {"s3_bucket": "in", "s3_prefix": "m/"},
                              "output": {"s3_bucket": "out", "s3_prefix": "o/"}, "processing": processing})

    limits = StackLimits(job_vcpus=4, job_attempts=3, capacity_wait_seconds=3600, cpu_max_vcpus=256)
    t = job_timing(req(files_per_job=10, timeout_seconds_per_file=60, max_concurrency=64), limits)
    assert t["attempt_seconds"] == 3 * 60 + ATTEMPT_OVERHEAD_SECONDS  # 10 files on 4 FFmpeg processes: 3 rounds
    # 64 jobs of 4 vCPUs fit in 256: one wave, every attempt, plus the longest RUNNABLE wait
    assert t["task_timeout_seconds"] == 3600 + 3 * t["attempt_seconds"]
    # twice the jobs the compute environment runs at once: a job may wait behind a whole wave
    more = job_timing(req(files_per_job=10, timeout_seconds_per_file=60, max_concurrency=128), limits)
    assert more["task_timeout_seconds"] == 3600 + 2 * 3 * t["attempt_seconds"]
    gpu = job_timing(req("nvidia", files_per_job=10, timeout_seconds_per_file=60, max_concurrency=64),
                     StackLimits(job_vcpus=4, gpu_max_vcpus=64))
    assert gpu["task_timeout_seconds"] > t["task_timeout_seconds"]  # 16 GPU jobs at once, not 64
    with pytest.raises(ValueError, match="JOB_VCPUS"):
        StackLimits.from_env({"JOB_VCPUS": "four"})


def test_worker_image_docs_use_the_script_and_ecr_empties_on_delete(template):
    repo = template["Resources"]["WorkerRepository"]["Properties"]
    assert repo["EmptyOnDelete"] is True  # sam delete fails on a repository that holds images
    doc = (REPO / "docs" / "cloud.md").read_text()
    assert "container/build-and-push.sh" in doc
    # the Dockerfile copies pyproject.toml and src/ from the repository root: container/ as the context cannot build
    assert not re.search(r"docker (buildx )?build[^\n]*\scontainer/?\s*(#|$)", doc, re.M)
    script = (REPO / "container" / "build-and-push.sh").read_text()
    assert 'cd "$(dirname "$0")/.."' in script and "--file container/Dockerfile" in script and "--push ." in script
    # the tags the job definitions use when the image parameters are empty
    assert "moving=latest" in script and "moving=nvidia" in script and '--tag "$repo:$moving"' in script
    jd = template["Resources"]["NvidiaJobDefinition"]["Properties"]["ContainerProperties"]["Image"]
    assert ":nvidia" in json.dumps(jd)


def test_summarizer_has_room_in_tmp_for_its_ledger(template):
    props = template["Resources"]["SummarizeFunction"]["Properties"]
    assert props["EphemeralStorage"] == {"Size": {"Ref": "SummarizerEphemeralStorageMiB"}}
    param = template["Parameters"]["SummarizerEphemeralStorageMiB"]
    assert param["Default"] == 10240 and param["MaxValue"] == 10240 and param["MinValue"] == 512
    assert "ledger" in (REPO / "docs" / "cloud.md").read_text()


def test_start_function_knows_the_stacks_buckets(template):
    env = template["Resources"]["StartFunction"]["Properties"]["Environment"]["Variables"]
    assert env["INPUT_BUCKET"] == {"Ref": "InputBucketName"} and env["OUTPUT_BUCKET"] == {"Ref": "OutputBucketName"}


def test_failed_async_invocations_land_in_a_queue_with_an_alarm(template):
    props = template["Resources"]["StartFunction"]["Properties"]
    on_failure = props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailedRequestsQueue", "Arn"]}}
    queue = template["Resources"]["FailedRequestsQueue"]["Properties"]
    assert queue["MessageRetentionPeriod"] == 1209600 and queue["SqsManagedSseEnabled"] is True
    alarm = template["Resources"]["FailedRequestsAlarm"]["Properties"]
    assert alarm["Namespace"] == "AWS/SQS" and alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailedRequestsQueue", "QueueName"]}}]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
    assert "failed-requests" in (REPO / "docs" / "cloud.md").read_text()


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "layers" / "deps" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, spec = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(==|>=|<|~=|$)?\s*(.*)$", line).groups()
            pins[name.split("[")[0].lower()] = line
    return pins


def test_dependencies_layer_pins_boto3_and_botocore_as_a_pair():
    """aws-xray-sdk brings botocore into the layer, which comes before the runtime on sys.path: without
    boto3 beside it, the runtime's boto3 runs on a botocore it was never released with."""
    pins = _requirements()
    boto3 = re.fullmatch(r"boto3==(\d+)\.(\d+)\.(\d+)", pins.get("boto3", ""))
    botocore = re.fullmatch(r"botocore==(\d+)\.(\d+)\.(\d+)", pins.get("botocore", ""))
    assert boto3 and botocore, pins
    # boto3 X.Y.Z requires botocore >=X.Y.Z,<X.(Y+1)
    assert boto3.group(1, 2) == botocore.group(1, 2), pins
    assert tuple(map(int, botocore.groups())) >= tuple(map(int, boto3.groups())), pins


# Fargate's vCPU/memory pairs (MiB), from the Fargate task size table.
FARGATE_PAIRS = {1: range(2048, 8193, 1024), 2: range(4096, 16385, 1024), 4: range(8192, 30721, 1024),
                 8: range(16384, 61441, 4096), 16: range(32768, 122881, 8192)}


def _rules_accept(template, values: dict[str, str]) -> bool:
    """Evaluate the template's Rules (Equals, Contains) as CloudFormation does, on string parameter values."""
    def ev(node):
        if isinstance(node, dict):
            (fn, args), = node.items()
            if fn == "Ref":
                return values[args]
            if fn == "Fn::Equals":
                return str(ev(args[0])) == str(ev(args[1]))
            if fn == "Fn::Contains":
                return str(ev(args[1])) in [str(ev(a)) for a in args[0]]
            raise AssertionError(f"rule function {fn} not understood by this test")
        return node
    for rule in template["Rules"].values():
        if "RuleCondition" in rule and not ev(rule["RuleCondition"]):
            continue
        if not all(ev(a["Assert"]) for a in rule["Assertions"]):
            return False
    return True


def test_fargate_vcpu_and_memory_must_be_a_valid_pair(template):
    params = template["Parameters"]
    vcpus = params["JobVcpus"]["AllowedValues"]
    assert set(vcpus) <= set(FARGATE_PAIRS)
    assert _rules_accept(template, {"JobVcpus": str(params["JobVcpus"]["Default"]), "JobMemoryMiB": str(params["JobMemoryMiB"]["Default"])})
    assert not _rules_accept(template, {"JobVcpus": "8", "JobMemoryMiB": "8192"})  # the example
    for cpu in vcpus:
        for mem in range(512, 122881, 512):
            assert _rules_accept(template, {"JobVcpus": str(cpu), "JobMemoryMiB": str(mem)}) == (mem in FARGATE_PAIRS[cpu]), (cpu, mem)


def test_created_vpc_has_an_s3_gateway_endpoint_and_can_keep_workers_private(template):
    r = template["Resources"]
    endpoint = r["S3GatewayEndpoint"]["Properties"]
    assert endpoint["VpcEndpointType"] == "Gateway" and endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"}
    assert endpoint["RouteTableIds"] == {"Fn::If": ["PrivateWorkers", [{"Ref": "PublicRouteTable"}, {"Ref": "PrivateRouteTable"}],
                                                    [{"Ref": "PublicRouteTable"}]]}
    assert template["Parameters"]["WorkerSubnets"]["AllowedValues"] == ["PUBLIC", "PRIVATE"]
    for sub in ("PrivateSubnetA", "PrivateSubnetB"):
        assert r[sub]["Condition"] == "PrivateWorkers" and r[sub]["Properties"]["MapPublicIpOnLaunch"] is False
    assert r["PrivateDefaultRoute"]["Properties"]["NatGatewayId"] == {"Ref": "NatGateway"}
    private = [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    for name, ce in _resources(template, "AWS::Batch::ComputeEnvironment").items():
        subnets = ce["Properties"]["ComputeResources"]["Subnets"]
        assert subnets["Fn::If"][0] == "PrivateWorkers" and subnets["Fn::If"][1] == private, name
    for name, jd in _resources(template, "AWS::Batch::JobDefinition").items():
        net = jd["Properties"]["ContainerProperties"].get("NetworkConfiguration")
        if net:  # Fargate: a public IP only in the created VPC's public subnets
            assert net["AssignPublicIp"] == {"Fn::If": ["PublicWorkers", "ENABLED", "DISABLED"]}, name
    conditions = template["Conditions"]
    assert conditions["PrivateWorkers"] == {"Fn::And": [{"Condition": "CreateVpc"}, {"Fn::Equals": [{"Ref": "WorkerSubnets"}, "PRIVATE"]}]}


def test_the_start_function_validates_threads_for_the_batch_jobs_cpus(template):
    """The policy caps -threads at FFLEET_TARGET_CPUS when set: the Lambda has fewer CPUs than a job."""
    env = template["Resources"]["StartFunction"]["Properties"]["Environment"]["Variables"]
    assert env["FFLEET_TARGET_CPUS"] == {"Ref": "JobVcpus"}


def test_summarizer_reaches_only_runs_and_the_output_roots_metadata(transformed):
    """results.manifests: the summarizer writes under runs/ and audiofolder's metadata.jsonl at the output
    root (reading the earlier one first); it may write no other output object, and delete nothing."""
    seen = {}
    for st, acts, res in _statements(transformed["Resources"]["SummarizeFunctionRole"]):
        text = json.dumps(res)
        assert "s3:DeleteObject" not in acts
        if "OutputBucketName" in text:
            seen[st["Sid"]] = (sorted(acts), text)
    assert seen["AudiofolderMetadataAtOutputRoot"][0] == ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
    assert seen["AudiofolderMetadataAtOutputRoot"][1].endswith('${OutputBucketName}/*metadata.jsonl"}]')
    assert seen["TellMissingMetadata"][0] == ["s3:ListBucket"] and "/" not in seen["TellMissingMetadata"][1].split("s3:::")[1]
    assert set(seen) == {"AudiofolderMetadataAtOutputRoot", "TellMissingMetadata"}
