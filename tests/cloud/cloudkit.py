"""Helpers for the cloud tests: the template, the ASL and its substitutions, rendered as CloudFormation would."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
ASL = REPO / "statemachine" / "pipeline.asl.json"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_:]+)\}")

# Values a deployed stack would substitute; numbers are the template's parameter defaults (read below).
FAKE_ACCOUNT, FAKE_REGION = "123456789012", "us-east-1"


def load_template() -> dict:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.load(str(TEMPLATE))


def substitutions(template: dict) -> dict:
    return template["Resources"]["PipelineStateMachine"]["Properties"]["DefinitionSubstitutions"]


def asl_placeholders(text: str | None = None) -> set[str]:
    return set(PLACEHOLDER.findall(text if text is not None else ASL.read_text()))


def render_asl(values: dict[str, str], text: str | None = None) -> dict:
    """Substitute like Step Functions does (plain text replacement), then parse."""
    text = text if text is not None else ASL.read_text()
    missing = asl_placeholders(text) - set(values)
    assert not missing, f"no value for {sorted(missing)}"
    return json.loads(PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text))


def default_values(template: dict, arns: dict[str, str] | None = None) -> dict[str, str]:
    """Every substitution: template parameter defaults for !Ref Parameter, fake ARNs for resources."""
    params = template["Parameters"]
    out: dict[str, str] = {}
    for key, value in substitutions(template).items():
        ref = value.get("Ref") if isinstance(value, dict) else None
        if ref == "AWS::Partition":
            out[key] = "aws"
        elif ref in params:
            out[key] = str(params[ref]["Default"])
        elif arns and key in arns:
            out[key] = arns[key]
        elif key.endswith("JobQueueArn"):
            out[key] = f"arn:aws:batch:{FAKE_REGION}:{FAKE_ACCOUNT}:job-queue/{key}"
        elif key.endswith("JobDefinitionArn"):
            out[key] = f"arn:aws:batch:{FAKE_REGION}:{FAKE_ACCOUNT}:job-definition/{key}:1"
        else:
            out[key] = f"arn:aws:lambda:{FAKE_REGION}:{FAKE_ACCOUNT}:function:{key}"
    return out


@pytest.fixture(scope="session")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="session")
def asl(template) -> dict:
    return render_asl(default_values(template))
