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

# Values a deployed stack would substitute, from the template's parameter defaults (read below).
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


PSEUDO = {"AWS::Partition": "aws", "AWS::Region": FAKE_REGION, "AWS::AccountId": FAKE_ACCOUNT, "AWS::URLSuffix": "amazonaws.com"}


def resolve_sub(text: str, params: dict) -> str:
    """!Sub with pseudo parameters and parameter defaults (what a default deploy substitutes)."""
    return re.sub(r"\$\{([A-Za-z0-9_:]+)\}", lambda m: PSEUDO.get(m.group(1)) or str(params[m.group(1)]["Default"]), text)


def default_values(template: dict, arns: dict[str, str] | None = None) -> dict[str, str]:
    """Every substitution: template parameter defaults for !Ref Parameter, !Sub resolved with them,
    fake ARNs for resources (arns overrides any key)."""
    params = template["Parameters"]
    out: dict[str, str] = {}
    for key, value in substitutions(template).items():
        ref = value.get("Ref") if isinstance(value, dict) else None
        sub = value.get("Fn::Sub") if isinstance(value, dict) else None
        if arns and key in arns:
            out[key] = arns[key]
        elif ref in PSEUDO:
            out[key] = PSEUDO[ref]
        elif ref in params:
            out[key] = str(params[ref]["Default"])
        elif isinstance(sub, str):
            out[key] = resolve_sub(sub, params)
        elif key.endswith("JobQueueArn"):
            out[key] = f"arn:aws:batch:{FAKE_REGION}:{FAKE_ACCOUNT}:job-queue/{key}"
        else:
            out[key] = f"arn:aws:lambda:{FAKE_REGION}:{FAKE_ACCOUNT}:function:{key}"
    return out


@pytest.fixture(scope="session")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="session")
def asl(template) -> dict:
    return render_asl(default_values(template))
