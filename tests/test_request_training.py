"""The request fields of training-ready output (issue 17): output.segment and results.manifests."""
import pytest

from ffleet.request import RequestError, parse_request


def test_segment_fields_are_validated_by_name():
    base = {"name": "x", "input": {"path": "/tmp/in-x"}, "output": {"path": "/tmp/out-x"}}
    for segment, field, words in [
        ({"max_seconds": 0}, "output.segment.max_seconds", "greater than or equal to 1"),
        ({"max_seconds": 30, "min_seconds": 30}, "output.segment.min_seconds", "less than max_seconds"),
        ({"silence_db": 3}, "output.segment.silence_db", "less than or equal to 0"),
        ({"min_silence_seconds": 0}, "output.segment.min_silence_seconds", "greater than or equal to 0.01"),
        ({"max_seconds": 5, "min_silence_seconds": 6}, "output.segment.min_silence_seconds", "less than max_seconds"),
        ({"max_second": 5}, "output.segment.max_second", "unknown field"),
    ]:
        with pytest.raises(RequestError) as err:
            parse_request({**base, "output": {**base["output"], "segment": segment}})
        assert [(f, words in m) for f, m in err.value.problems] == [(field, True)], err.value.problems
    spec = parse_request({**base, "output": {**base["output"], "segment": {}}}).output.segment
    assert (spec.max_seconds, spec.min_seconds, spec.at_silence, spec.silence_db, spec.min_silence_seconds) == (30, 2, True, -40, 0.3)


def test_manifests_request_field_is_validated():
    base = {"name": "t", "input": {"path": "/in"}, "output": {"path": "/out"}}
    ok = parse_request({**base, "results": {"manifests": ["lhotse", "nemo", "nemo"]}})
    assert ok.manifest_formats == ["nemo", "lhotse"]  # in a fixed order, each once
    assert ok.results_location() == {"path": "/out.ffleet-results"}  # manifests alone do not move the results
    with pytest.raises(RequestError) as err:
        parse_request({**base, "results": {"manifests": ["nemo", "kaldi"]}})
    assert err.value.problems[0][0] == "results.manifests" and "'kaldi'" in err.value.problems[0][1]
    assert parse_request(base).manifest_formats == []


# Each bound of output.segment on both sides: (the segment given, the field, accepted?); decimals step by a thousandth.
SEGMENT_BOUNDS = [
    ({"max_seconds": 1, "min_seconds": 0.5}, "max_seconds", True),
    ({"max_seconds": 0.999, "min_seconds": 0.5}, "max_seconds", False),
    ({"max_seconds": 3600}, "max_seconds", True),
    ({"max_seconds": 3600.001}, "max_seconds", False),
    ({"min_seconds": 0}, "min_seconds", True),
    ({"min_seconds": -0.001}, "min_seconds", False),
    ({"max_seconds": 5, "min_seconds": 4.999}, "min_seconds", True),
    ({"silence_db": -90}, "silence_db", True),
    ({"silence_db": -90.001}, "silence_db", False),
    ({"silence_db": 0}, "silence_db", True),
    ({"silence_db": 0.001}, "silence_db", False),
    ({"min_silence_seconds": 0.01}, "min_silence_seconds", True),
    ({"min_silence_seconds": 0.009}, "min_silence_seconds", False),
    ({"min_silence_seconds": 10}, "min_silence_seconds", True),
    ({"min_silence_seconds": 10.001}, "min_silence_seconds", False),
    ({"max_seconds": 5, "min_silence_seconds": 4.999}, "min_silence_seconds", True),
]


@pytest.mark.parametrize("segment,name,accepted", SEGMENT_BOUNDS, ids=[f"{s}" for s, _, _ in SEGMENT_BOUNDS])
def test_segment_bound(segment, name, accepted):
    data = {"name": "t", "input": {"path": "/in"}, "output": {"path": "/out", "segment": segment}}
    if accepted:
        assert getattr(parse_request(data).output.segment, name) == segment[name]
    else:
        with pytest.raises(RequestError) as err:
            parse_request(data)
        assert [f for f, _ in err.value.problems] == [f"output.segment.{name}"]


@pytest.mark.parametrize("name", ["nemo", "audiofolder", "lhotse"])
def test_each_manifest_format_is_accepted_alone(name):
    data = {"name": "t", "input": {"path": "/in"}, "output": {"path": "/out"}, "results": {"manifests": [name]}}
    assert parse_request(data).manifest_formats == [name]
