"""The job request: the original format keeps working, additions are optional, bad input is named."""
import json

import pytest

from conftest import EVENTS
from ffleet.request import RequestError, parse_request, parse_request_text

ORIGINAL = json.loads((EVENTS / "original-request.json").read_text())


def req(**changes):
    data = json.loads(json.dumps(ORIGINAL))
    for dotted, value in changes.items():
        target = data
        *path, last = dotted.split("__")
        for p in path:
            target = target.setdefault(p, {})
        if value is ...:
            target.pop(last, None)
        else:
            target[last] = value
    return data


def problems(data) -> dict[str, str]:
    with pytest.raises(RequestError) as exc:
        parse_request(data)
    return dict(exc.value.problems)


def test_original_format_is_accepted_unchanged():
    r = parse_request(ORIGINAL)
    assert r.name == "pytest-sdk-audio" and r.compute == "intel"
    assert r.input.s3_bucket == "my-input-bucket" and r.input.s3_prefix == "media-assets/"
    assert r.input.file_options is None  # the literal string "null" means unset
    assert r.global_.options is None
    assert r.output.file_options == "-ac 1 -ar 48000"
    assert r.option_tokens() == {"global": [], "input": [], "output": ["-ac", "1", "-ar", "48000"]}
    # first-time-user defaults
    assert r.output.overwrite is False
    assert r.processing.tolerated_failure_percent == 0
    assert r.processing.files_per_job >= 100


def test_normalised_request_round_trips():
    r = parse_request(ORIGINAL)
    again = parse_request(r.to_json_dict())
    assert again == r


@pytest.mark.parametrize("compute", ["intel", "amd", "arm", "nvidia", "fargate", "fargate-arm"])
def test_every_compute_type(compute):
    assert parse_request(req(compute=compute)).compute == compute


def test_unknown_compute_is_named():
    p = problems(req(compute="xilinx"))
    assert "compute" in p and "intel" in p["compute"]


def test_missing_required_fields_are_named():
    p = problems(req(input=..., name=...))
    assert set(p) == {"input", "name"}


def test_unknown_field_is_named():
    p = problems(req(output__s3_sufix=".x"))
    assert "output.s3_sufix" in p and "unknown field" in p["output.s3_sufix"]


def test_bad_option_names_field_and_token():
    p = problems(req(output__file_options="-ac 1 /etc/passwd"))
    assert "output.file_options" in p
    assert "'/etc/passwd'" in p["output.file_options"]


def test_malformed_json_is_reported_not_raised():
    with pytest.raises(RequestError) as exc:
        parse_request_text(b'{"name": "x",', source="job.json")
    field, message = exc.value.problems[0]
    assert "job.json is not valid JSON" in message and "line 1" in message


def test_non_object_json():
    with pytest.raises(RequestError):
        parse_request_text("[1, 2]")


@pytest.mark.parametrize("name", ["", "has space", "x" * 81, "-leading-dash", "semi;colon"])
def test_bad_names(name):
    assert "name" in problems(req(name=name))


def test_optional_additions():
    r = parse_request(req(
        input__extensions=["wav", ".MP3"], output__extension="flac", output__overwrite=True,
        processing={"files_per_job": 50, "max_concurrency": 10, "tolerated_failure_percent": 2.5,
                    "timeout_seconds_per_file": 30},
    ))
    assert r.input.extensions == [".wav", ".mp3"]
    assert r.output.extension == ".flac"
    assert r.processing.files_per_job == 50 and r.processing.tolerated_failure_percent == 2.5


def test_manifest_instead_of_prefix():
    r = parse_request(req(input__s3_prefix=..., input__manifest="s3://my-input-bucket/lists/redo.jsonl"))
    assert r.input.manifest.endswith("redo.jsonl")
    p = problems(req(input__manifest="s3://b/m.csv"))  # prefix and manifest both given
    assert "input" in p and "not both" in p["input"]


def test_local_paths(tmp_path):
    r = parse_request(req(input={"path": str(tmp_path / "in")}, output={"path": str(tmp_path / "out")}))
    assert r.results_location() == {"path": str(tmp_path / "out.ffleet-results")}


@pytest.mark.parametrize("processing,field", [
    ({"files_per_job": 0}, "processing.files_per_job"),
    ({"tolerated_failure_percent": 101}, "processing.tolerated_failure_percent"),
    ({"timeout_seconds_per_file": -1}, "processing.timeout_seconds_per_file"),
    ({"max_concurrency": 20000}, "processing.max_concurrency"),
])
def test_processing_bounds(processing, field):
    assert field in problems(req(processing=processing))


# --- outputs must never overwrite inputs; results never land inside the input prefix -----------

def test_outputs_inside_input_prefix_refused():
    p = problems(req(output__s3_bucket="my-input-bucket", output__s3_prefix="media-assets/out/"))
    assert "output.s3_prefix" in p and "inside the input prefix" in p["output.s3_prefix"]


def test_same_bucket_empty_output_prefix_refused():
    p = problems(req(output__s3_bucket="my-input-bucket", output__s3_prefix=""))
    assert "output.s3_prefix" in p


def test_same_bucket_sibling_prefix_allowed():
    r = parse_request(req(output__s3_bucket="my-input-bucket", output__s3_prefix="processed/"))
    assert r.results_location() == {"s3_bucket": "my-input-bucket", "s3_prefix": "ffleet-results/pytest-sdk-audio/"}


def test_results_inside_input_prefix_refused():
    # input prefix "" in the output bucket: results (and outputs) would be inputs of the next run
    p = problems(req(input__s3_bucket="shared", input__s3_prefix="", output__s3_bucket="other",
                     results={"s3_bucket": "shared", "s3_prefix": "results/"}))
    assert "results.s3_prefix" in p


def test_local_output_inside_input_refused(tmp_path):
    p = problems(req(input={"path": str(tmp_path)}, output={"path": str(tmp_path / "out")}))
    assert "output.path" in p


def test_manifest_same_bucket_same_keys_refused():
    p = problems(req(input__s3_prefix=..., input__manifest="s3://my-input-bucket/m.csv",
                     output__s3_bucket="my-input-bucket", output__s3_prefix=""))
    assert "output.s3_prefix" in p


def test_input_needs_a_source():
    p = problems(req(input={"s3_prefix": "x/"}))
    assert "input" in p and "s3_bucket" in p["input"]
