"""A request as text and as a file: size limits, unreadable JSON, key parts, empty values, output
extensions and the field each problem is reported against (issue 20: each rule on both sides)."""
import json
import os

import pytest

from ffleet.request import MAX_REQUEST_BYTES, RequestError, decode_json, load_request, parse_request, parse_request_text

BASE = {"name": "t", "input": {"s3_bucket": "in", "s3_prefix": "media/"}, "output": {"s3_bucket": "out", "s3_prefix": "o/"}}


def padded(size: int) -> bytes:
    """BASE as JSON, padded with spaces to exactly `size` bytes."""
    text = json.dumps(BASE).encode()
    return text[:-1] + b" " * (size - len(text)) + b"}"


def problems(call, *args) -> list[tuple[str, str]]:
    with pytest.raises(RequestError) as err:
        call(*args)
    return err.value.problems


def test_a_request_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    assert parse_request_text(padded(MAX_REQUEST_BYTES), "job.json").name == "t"
    [(field, message)] = problems(parse_request_text, padded(MAX_REQUEST_BYTES + 1), "job.json")
    assert field == "(request)"
    assert message.startswith(f"job.json is {MAX_REQUEST_BYTES + 1:,} bytes; a request may be at most {MAX_REQUEST_BYTES:,} bytes")
    # a str counts its UTF-8 bytes, not its characters
    assert parse_request_text(padded(MAX_REQUEST_BYTES).decode(), "s").name == "t"
    assert problems(parse_request_text, padded(MAX_REQUEST_BYTES + 1).decode(), "s")[0][0] == "(request)"


def test_a_request_file_names_its_path_and_its_real_size(tmp_path):
    exact = tmp_path / "exact.json"
    exact.write_bytes(padded(MAX_REQUEST_BYTES))
    assert load_request(exact).name == "t"
    big = tmp_path / "big.json"
    big.write_bytes(padded(MAX_REQUEST_BYTES + 10_000))
    [(field, message)] = problems(load_request, big)
    assert field == "(request)" and message.startswith(f"{big} is {MAX_REQUEST_BYTES + 10_000:,} bytes")


def test_a_request_file_that_is_not_utf8_is_a_request_error(tmp_path):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"name": "caf\xe9"}')
    [(field, message)] = problems(load_request, latin1)
    assert field == "(request)" and str(latin1) in message


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000, "is nested too deeply to be a job request"),
    ('{"name": ' + "9" * 5000 + "}", "cannot be read: Exceeds the limit (4300 digits) for integer string conversion"),
])
def test_json_that_cannot_be_read_is_reported_against_the_request(text, words):
    [(field, message)] = problems(decode_json, text, "job.json")
    assert field == "(request)" and message.startswith("job.json ") and words in message
    assert ";" not in message  # Python's hint after the ';' (sys.set_int_max_str_digits) is left out


@pytest.mark.parametrize("field, value, accepted", [
    ("s3_prefix", "a/b/", True),
    ("s3_prefix", "a.b/..c/", True),  # dots inside a name are fine
    ("s3_prefix", "a/./b/", False),
    ("s3_prefix", "a/../b/", False),
    ("s3_prefix", "./a", False),
    ("s3_prefix", "../", False),
    ("s3_prefix", "a/..", False),  # the last part alone
    ("s3_prefix", "a/x..", True),
    ("s3_prefix", "a\x01b/", False),
    ("s3_suffix", "-v2", True),
    ("s3_suffix", "..", False),
    ("s3_suffix", ".", True),  # a suffix is no path segment of its own: "a.flac." is one name
    ("s3_suffix", "-\x7f", False),
])
def test_output_key_parts(field, value, accepted):
    data = {**BASE, "output": {**BASE["output"], field: value}}
    if accepted:
        assert getattr(parse_request(data).output, field) == value
    else:
        [(where, message)] = problems(parse_request, data)
        assert where == f"output.{field}"
        assert ("control characters" if any(c in value for c in "\x01\x7f") else "'.' or '..' path segments") in message


def test_results_prefix_is_checked_like_an_output_prefix():
    assert parse_request({**BASE, "results": {"s3_bucket": "r", "s3_prefix": None}}).results.s3_prefix is None
    [(where, message)] = problems(parse_request, {**BASE, "results": {"s3_bucket": "r", "s3_prefix": "a/../"}})
    assert where == "results.s3_prefix" and "path segments" in message


@pytest.mark.parametrize("value, words", [("", "must not be empty"), ("   ", "must not be empty"), ("a\x00b", "NUL character")])
def test_empty_or_nul_values_are_refused_naming_the_field(value, words):
    [(where, message)] = problems(parse_request, {**BASE, "input": {"s3_bucket": value}})
    assert where == "input.s3_bucket" and words in message


@pytest.mark.parametrize("output, field", [
    ({"extension": ".m3u8"}, "output.extension"),
    ({"s3_suffix": ".m3u8"}, "output.s3_suffix"),
    ({"extension": ".flac", "s3_suffix": ".m3u8"}, "output.s3_suffix"),
])
def test_a_refused_output_extension_names_the_field_that_made_it(output, field):
    [(where, message)] = problems(parse_request, {**BASE, "output": {**BASE["output"], **output}})
    assert where == field and "m3u8" in message


@pytest.mark.parametrize("output", [{"extension": ".flac"}, {"s3_suffix": "-v2"}, {"extension": ".flac", "s3_suffix": "-v2"}])
def test_allowed_output_extensions_pass(output):
    assert parse_request({**BASE, "output": {**BASE["output"], **output}}).output.s3_bucket == "out"


def test_to_json_dict_is_plain_json():
    data = parse_request({**BASE, "output": {**BASE["output"], "segment": {"max_seconds": 12}}}).to_json_dict()
    assert json.loads(json.dumps(data)) == data and "global" in data and "global_" not in data  # by alias
    assert data["output"]["segment"]["max_seconds"] == 12


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_file_is_refused_after_one_byte_past_the_limit():
    # /dev/zero has no size to report: the bytes read are counted instead
    [(field, message)] = problems(load_request, "/dev/zero")
    assert (field, message) == ("(request)", f"/dev/zero is {MAX_REQUEST_BYTES + 1:,} bytes; a request may be at most "
                                             "262,144 bytes (256 KiB, the Step Functions input limit)")
