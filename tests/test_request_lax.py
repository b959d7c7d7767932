"""The request reads values as pydantic's lax mode did, and says so in pydantic's words (issue 15:
request.py no longer imports pydantic, and requests that worked with it must keep working)."""
import math

import pytest

from ffleet.request import Field, JobRequest, RequestError, SegmentSpec, parse_request

BASE = {"name": "t", "input": {"s3_bucket": "in", "s3_prefix": "media/"}, "output": {"s3_bucket": "out"}}


def req(section: str, **fields) -> dict:
    return {**BASE, section: {**BASE.get(section, {}), **fields}}


def value(section: str, name: str, given):
    return getattr(getattr(parse_request(req(section, **{name: given})), section), name)


def problems(data) -> dict[str, str]:
    with pytest.raises(RequestError) as exc:
        parse_request(data)
    return dict(exc.value.problems)


UNPARSABLE_INT = "Input should be a valid integer, unable to parse string as an integer"
UNPARSABLE_NUMBER = "Input should be a valid number, unable to parse string as a number"
NOT_A_BOOL = "Input should be a valid boolean, unable to interpret input"
NOT_UNICODE = "Input should be a valid string, unable to parse raw data as a unicode string"
TOO_LONG = "Unable to parse input string as an integer, exceeded maximum size"


@pytest.mark.parametrize("given,read", [
    (10, 10), (10.0, 10), (True, 1), ("10", 10), (" 10 ", 10), ("\t10\n", 10), ("\u00a010\u3000", 10), ("+10", 10),
    ("10.0", 10), ("10.000", 10), ("0010", 10), ("1_0", 10), ("0_0_10", 10), ("00_1.00", 1), ("9" * 4300, int("9" * 4300)),
    ("1" + "_1" * 2200, int("1" * 2201)),  # 4,401 characters, but 2,201 digits: within the 4,300 digits allowed
])
def test_integers_from_numbers_and_numeric_text(given, read):
    if read > 100_000:  # past the bound: read, then refused by it
        assert problems(req("processing", files_per_job=given)) == {
            "processing.files_per_job": "Input should be less than or equal to 100000"}
        return
    got = value("processing", "files_per_job", given)
    assert got == read and type(got) is int


@pytest.mark.parametrize("given,message", [
    (10.5, "Input should be a valid integer, got a number with a fractional part"),
    (math.nan, "Input should be a finite number"), (math.inf, "Input should be a finite number"),
    (1e20, TOO_LONG), ("9" * 4301, TOO_LONG),
    ("10.5", UNPARSABLE_INT), ("1e3", UNPARSABLE_INT), ("0x10", UNPARSABLE_INT), ("", UNPARSABLE_INT),
    ("1__0", UNPARSABLE_INT), ("_10", UNPARSABLE_INT), ("10_", UNPARSABLE_INT), ("10.", UNPARSABLE_INT),
    ("+-1", UNPARSABLE_INT), ("\u0661\u0662", UNPARSABLE_INT),  # Arabic-Indic digits: Python's int() reads them
    ("\x1c10", UNPARSABLE_INT),  # a separator Python's strip() removes, Rust's trim() does not
    (" " + "9" * 4301, UNPARSABLE_INT), ("\ud800", NOT_UNICODE),
    (None, "Input should be a valid integer"), ("null", "Input should be a valid integer"),
    ([10], "Input should be a valid integer"), ({}, "Input should be a valid integer"),
    (0, "Input should be greater than or equal to 1"), ("0", "Input should be greater than or equal to 1"),
])
def test_integers_refused(given, message):
    assert problems(req("processing", files_per_job=given)) == {"processing.files_per_job": message}


@pytest.mark.parametrize("given,read", [
    (5, 5.0), (True, 1.0), ("2.5", 2.5), (" 2.5 ", 2.5), ("1e1", 10.0), ("1_0", 10.0), ("1_0.5", 10.5), (".5", 0.5),
    ("5.", 5.0), ("+5", 5.0), ("0", 0.0),
])
def test_numbers_from_integers_and_numeric_text(given, read):
    got = value("processing", "tolerated_failure_percent", given)
    assert got == read and type(got) is float


@pytest.mark.parametrize("given,message", [
    ("1,5", UNPARSABLE_NUMBER), ("0x1", UNPARSABLE_NUMBER), ("", UNPARSABLE_NUMBER), (" 1_0", UNPARSABLE_NUMBER),
    ("1__0", UNPARSABLE_NUMBER), ("_1", UNPARSABLE_NUMBER), ("1e", UNPARSABLE_NUMBER), ("\u0661", UNPARSABLE_NUMBER),
    ("\ud800", NOT_UNICODE), (10**400, "Input should be a valid number"), ([], "Input should be a valid number"),
    (math.nan, "Input should be less than or equal to 100"),  # NaN passes no bound
    ("nan", "Input should be less than or equal to 100"), ("-inf", "Input should be greater than or equal to 0"),
])
def test_numbers_refused(given, message):
    assert problems(req("processing", tolerated_failure_percent=given)) == {
        "processing.tolerated_failure_percent": message}


def test_infinity_is_a_number_and_stays_one_in_json():
    q = parse_request(req("quality", max_seconds="Infinity", min_seconds=1)).quality
    assert q.max_seconds == math.inf
    assert parse_request(req("quality", max_seconds=1e400)).to_json_dict()["quality"]["max_seconds"] == math.inf


@pytest.mark.parametrize("given,read", [
    (True, True), (1, True), (1.0, True), ("1", True), ("t", True), ("Y", True), ("yes", True), ("On", True),
    ("TRUE", True), (False, False), (0, False), (0.0, False), ("0", False), ("f", False), ("n", False),
    ("No", False), ("off", False), ("false", False),
])
def test_booleans_from_numbers_and_words(given, read):
    assert value("output", "overwrite", given) is read


@pytest.mark.parametrize("given,message", [
    (" yes", NOT_A_BOOL), ("yes ", NOT_A_BOOL), ("2", NOT_A_BOOL), ("", NOT_A_BOOL), (2, NOT_A_BOOL), (-1, NOT_A_BOOL),
    (2.0, NOT_A_BOOL), (-2**63, NOT_A_BOOL), ("\u0131", NOT_A_BOOL), ("\ud800", NOT_UNICODE),
    (1.5, "Input should be a valid boolean"), (math.nan, "Input should be a valid boolean"),
    (2**63, "Input should be a valid boolean"), (float(2**63), "Input should be a valid boolean"),
    (None, "Input should be a valid boolean"), ("null", "Input should be a valid boolean"),
    ([], "Input should be a valid boolean"),
])
def test_booleans_refused(given, message):
    assert problems(req("output", overwrite=given)) == {"output.overwrite": message}


def test_a_nullable_boolean_reads_null_as_unset():
    assert value("processing", "require_sandbox", "None") is None
    assert value("processing", "require_sandbox", "yes") is True


@pytest.mark.parametrize("given", [5, 1.5, True, ["x"], {"a": 1}])
def test_text_only_from_text(given):
    assert problems(req("output", file_options=given)) == {"output.file_options": "Input should be a valid string"}
    assert problems({**BASE, "name": given}) == {"name": "Input should be a valid string"}


@pytest.mark.parametrize("section,field,given", [
    ("output", "s3_prefix", "x/\udc80"), ("output", "s3_suffix", ".m3u8\ud800"), ("input", "path", "/tmp/\ud800in"),
    ("output", "file_options", "-ac 1 \ud800"), ("results", "s3_prefix", "r/\udfff")])
def test_a_lone_surrogate_is_refused_in_any_text_field(section, field, given):
    # stricter than pydantic: no key, path or option can hold one, and ".m3u8\ud800" slipped past the
    # refused output extensions (then `ffleet validate` failed printing the request)
    request = req(section, **{field: given}) if section != "results" else {**BASE, "results": {"s3_bucket": "r", field: given}}
    assert problems(request) == {f"{section}.{field}": NOT_UNICODE}
    assert problems({**BASE, "name": "a\ud800"}) == {"name": NOT_UNICODE}


@pytest.mark.parametrize("given", ["INTEL", " intel", 1, None, "null", "\ud800"])
def test_a_choice_is_matched_exactly(given):
    message = NOT_UNICODE if given == "\ud800" else \
        "Input should be 'intel', 'amd', 'arm', 'nvidia', 'fargate' or 'fargate-arm'"
    assert problems({**BASE, "compute": given}) == {"compute": message}
    assert problems(req("quality", measure_at=given)) == {
        "quality.measure_at": NOT_UNICODE if given == "\ud800" else "Input should be 'output' or 'source'"}


def test_sections_lists_and_required_fields():
    assert problems({**BASE, "input": "x", "processing": None, "global": "none"}) == {
        "input": "Input should be a valid dictionary or instance of InputSpec",
        "processing": "Input should be a valid dictionary or instance of ProcessingSpec",
        "global": "Input should be a valid dictionary or instance of GlobalSpec",
    }
    assert problems(req("input", extensions="wav")) == {"input.extensions": "Input should be a valid list"}
    assert problems({"input": BASE["input"]}) == {"name": "Field required", "output": "Field required"}
    r = parse_request({**BASE, "results": "null", "output": {"s3_bucket": "out", "segment": "NULL"}})
    assert r.results is None and r.output.segment is None


def test_every_problem_in_field_order_then_unknown_fields_in_given_order():
    data = {"zz": 1, "name": 5, "aa": 2, "input": {"s3_bucket": 3, "bogus": 1, "extensions": [1, ".wav", 2]},
            "output": {"s3_bucket": "out", "overwrite": "maybe"}, "processing": {"files_per_job": 0}}
    with pytest.raises(RequestError) as exc:
        parse_request(data)
    assert [f for f, _ in exc.value.problems] == [
        "name", "input.s3_bucket", "input.extensions[0]", "input.extensions[2]", "input.bogus", "output.overwrite",
        "processing.files_per_job", "zz", "aa"]


def test_a_section_with_a_bad_field_skips_its_own_rules():
    # min_seconds > max_seconds would be refused, but max_seconds is already wrong: one problem, as before
    assert problems(req("quality", min_seconds=5, max_seconds="x")) == {"quality.max_seconds": UNPARSABLE_NUMBER}
    assert problems({**BASE, "name": "", "input": {}}) == {
        "name": "use 1-80 characters: letters, digits, '.', '_' or '-', starting with a letter or digit",
        "input": "give either s3_bucket (with s3_prefix or manifest) or path"}


def test_global_and_global_underscore_together():
    # "global" wins; "global_" is then an unknown field, reported under the name users write
    p = problems({**BASE, "global": {"options": "-hide_banner"}, "global_": {"options": "-y"}})
    assert p == {"global": "unknown field (check the spelling; see the README's request reference)"}


def test_json_numbers_are_written_as_pydantic_wrote_them():
    r = parse_request({**BASE, "output": {"s3_bucket": "out", "segment": {"min_seconds": 1}}})
    d = r.to_json_dict()
    assert d["processing"]["tolerated_failure_percent"] == 0 and type(d["processing"]["tolerated_failure_percent"]) is float
    assert d["output"]["segment"] == {"max_seconds": 30.0, "min_seconds": 1.0, "at_silence": True, "silence_db": -40.0,
                                      "min_silence_seconds": 0.3}
    assert all(type(d["output"]["segment"][k]) is float for k in ("max_seconds", "min_seconds", "silence_db"))
    assert type(d["processing"]["files_per_job"]) is int and d["results"] is None
    assert list(d) == ["name", "compute", "input", "output", "global", "processing", "results", "quality"]
    assert parse_request(d) == r and parse_request(d) is not r


def test_sections_compare_by_value_and_show_their_fields():
    a, b = parse_request(BASE), parse_request(BASE)
    assert a == b and a.processing == b.processing and a != a.processing
    b.output.overwrite = True  # tests set fields of a parsed request directly
    assert a != b
    assert repr(a.global_) == "GlobalSpec(options=None)"
    assert repr(a.output.segment) == "None" and repr(SegmentSpec()) == (
        "SegmentSpec(max_seconds=30, min_seconds=2, at_silence=True, silence_db=-40, min_silence_seconds=0.3)")


def test_a_section_built_from_keywords_is_validated():
    s = SegmentSpec(max_seconds=12)
    assert s.max_seconds == 12.0 and s.min_seconds == 2 and s.at_silence is True
    with pytest.raises(RequestError) as exc:
        SegmentSpec(max_seconds=0, bogus=1)
    assert exc.value.problems == [("max_seconds", "Input should be greater than or equal to 1"),
                                  ("bogus", "unknown field (check the spelling; see the README's request reference)")]
    with pytest.raises(RequestError):
        JobRequest(name="t")


def test_a_parsed_section_is_taken_as_it_is():
    r = parse_request(BASE)
    again = parse_request({**BASE, "processing": r.processing, "quality": r.quality})
    assert again.processing is r.processing


def test_integers_at_the_edges_of_64_bits():
    # pydantic reads a float as an integer only strictly inside the 64-bit range
    for edge in (float(2**63), -float(2**63)):
        assert problems(req("processing", files_per_job=edge)) == {"processing.files_per_job": TOO_LONG}
    assert problems(req("processing", files_per_job=float(2**62))) == {
        "processing.files_per_job": "Input should be less than or equal to 100000"}
    assert problems(req("output", overwrite=-float(2**63))) == {"output.overwrite": "Input should be a valid boolean"}


@pytest.mark.parametrize("given", ["1_", "10_", "\x1c2.5", "2.5\x1c"])
def test_more_numbers_refused(given):
    assert problems(req("processing", tolerated_failure_percent=given)) == {
        "processing.tolerated_failure_percent": UNPARSABLE_NUMBER}


def test_a_list_item_of_another_type_is_named_with_its_position():
    assert problems(req("input", extensions=[".wav", 5])) == {"input.extensions[1]": "Input should be a valid string"}


def test_decimal_bounds_are_shown_as_written():
    assert problems({**BASE, "output": {"s3_bucket": "out", "segment": {"min_silence_seconds": 0}}}) == {
        "output.segment.min_silence_seconds": "Input should be greater than or equal to 0.01"}
    assert problems(req("quality", max_seconds=0)) == {"quality.max_seconds": "Input should be greater than 0"}


def test_an_exclusive_upper_bound():
    f = Field(float, None, lt=5)
    problems_: list = []
    assert f.read(4.5, "x", problems_) == 4.5 and not problems_
    f.read(5, "x", problems_)
    assert problems_ == [("x", "Input should be less than 5")]


def test_json_lists_are_copies():
    r = parse_request(req("input", extensions=[".wav"]))
    r.to_json_dict()["input"]["extensions"].append(".mp3")
    assert r.input.extensions == [".wav"]


def test_a_path_that_cannot_be_encoded_is_a_problem_of_that_field_not_a_crash():
    # a lone surrogate cannot name a file
    p = problems({"name": "t", "input": {"path": "/tmp/\ud800in"}, "output": {"path": "/tmp/out"}})
    assert p == {"input.path": NOT_UNICODE}


def test_a_symlink_loop_in_a_folder_is_a_problem_of_that_field(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    p = problems({"name": "t", "input": {"path": str(tmp_path / "loop" / "in")}, "output": {"path": str(tmp_path / "out")}})
    assert list(p) == ["input.path"] and "loop" in p["input.path"]
    p = problems({"name": "t", "input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")},
                  "results": {"path": str(tmp_path / "loop" / "r")}})
    assert list(p) == ["results.path"] and "loop" in p["results.path"]
    p = problems({"name": "t", "input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "loop" / "o")}})
    assert list(p) == ["output.path"] and "loop" in p["output.path"]
    # outputs to a bucket, results to a folder: the input folder is resolved for the results check alone
    p = problems({"name": "t", "input": {"path": str(tmp_path / "loop" / "in")}, "output": {"s3_bucket": "out"},
                  "results": {"path": str(tmp_path / "r")}})
    assert list(p) == ["input.path"] and "loop" in p["input.path"]
