"""The request's bounds and safety checks, each tested on both sides (issue 20: mutation testing)."""
import pytest

from ffleet.request import (COMPUTE_TYPES, DEFAULT_FILES_PER_JOB, DEFAULT_TIMEOUT_SECONDS_PER_FILE, RequestError, load_request,
                            parse_request, parse_request_text)

BASE = {"name": "t", "input": {"s3_bucket": "in", "s3_prefix": "media/"}, "output": {"s3_bucket": "out"}}


def req(section: str | None = None, **fields) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    if section:
        data[section] = {**data.get(section, {}), **fields}
    return data


def problems(data) -> dict[str, str]:
    with pytest.raises(RequestError) as exc:
        parse_request(data)
    return dict(exc.value.problems)


# Every numeric bound of the request model: (section, field, the last value allowed, the first refused).
# Integers step by 1; decimals by a thousandth.
BOUNDS = [
    ("processing", "files_per_job", 1, 0),
    ("processing", "files_per_job", 100_000, 100_001),
    ("processing", "max_concurrency", 1, 0),
    ("processing", "max_concurrency", 10_000, 10_001),
    ("processing", "timeout_seconds_per_file", 1, 0),
    ("processing", "timeout_seconds_per_file", 86_400, 86_401),
    ("processing", "tolerated_failure_percent", 0, -0.001),
    ("processing", "tolerated_failure_percent", 100, 100.001),
    ("quality", "min_seconds", 0, -0.001),
    ("quality", "max_seconds", 0.001, 0),
    ("quality", "max_silence_ratio", 0, -0.001),
    ("quality", "max_silence_ratio", 1, 1.001),
    ("quality", "min_lufs", -70, -70.001),
    ("quality", "min_lufs", 10, 10.001),
    ("quality", "max_lufs", -70, -70.001),
    ("quality", "max_lufs", 10, 10.001),
]


@pytest.mark.parametrize("section,name,allowed,refused", BOUNDS, ids=[f"{b[1]}={b[2]}|{b[3]}" for b in BOUNDS])
def test_numeric_bound(section, name, allowed, refused):
    r = parse_request(req(section, **{name: allowed}))
    assert getattr(getattr(r, section), name) == allowed
    p = problems(req(section, **{name: refused}))
    assert list(p) == [f"{section}.{name}"]


def test_defaults_a_first_time_user_gets():
    r = parse_request(BASE)
    p, q = r.processing, r.quality
    assert p.files_per_job == DEFAULT_FILES_PER_JOB and p.timeout_seconds_per_file == DEFAULT_TIMEOUT_SECONDS_PER_FILE
    assert p.max_concurrency == 100  # the README's documented default
    assert p.tolerated_failure_percent == 0
    assert p.require_audio is True and p.verify_duration is True
    assert r.output.overwrite is False
    assert q.measure is None and q.measuring is False and q.has_filters is False
    assert q.measure_at == "output" and q.true_peak is True
    assert q.reject_clipped is False and q.keep_rejected is False


def test_compute_types_are_the_ones_the_request_accepts():
    # the template tests build one queue and job definition per entry of COMPUTE_TYPES
    for compute in COMPUTE_TYPES:
        assert parse_request({**BASE, "compute": compute}).compute == compute
    p = problems({**BASE, "compute": "tpu"})
    assert all(f"'{c}'" in p["compute"] for c in COMPUTE_TYPES)
    assert p["compute"].count("'") == 2 * len(COMPUTE_TYPES)  # and no other choice


@pytest.mark.parametrize("where", ["output", "source"])
def test_measure_at_choices(where):
    assert parse_request(req("quality", measure_at=where)).quality.measure_at == where
    assert "quality.measure_at" in problems(req("quality", measure_at=where.upper()))


# --- names and extensions: the lengths their patterns allow -----------------------------------------

@pytest.mark.parametrize("name", ["x", "x" * 80, "A.b_c-9", "9lives"])
def test_names_allowed(name):
    assert parse_request({**BASE, "name": name}).name == name


@pytest.mark.parametrize("name", ["", "x" * 81, ".hidden", "_x", "a/b", "a b"])
def test_names_refused(name):
    p = problems({**BASE, "name": name})
    assert p == {"name": "use 1-80 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"}


@pytest.mark.parametrize("ext,normalised", [("flac", ".flac"), (".m4a", ".m4a"), ("." + "a" * 16, "." + "a" * 16),
                                            (".tar.gz", ".tar.gz")])
def test_output_extension_allowed(ext, normalised):
    assert parse_request(req("output", extension=ext)).output.extension == normalised


@pytest.mark.parametrize("ext", ["." + "a" * 17, ".", "..flac", ".fl ac", ".a/b"])
def test_output_extension_refused(ext):
    p = problems(req("output", extension=ext))
    assert list(p) == ["output.extension"] and "is not a file extension" in p["output.extension"]


def test_input_extensions_normalised_and_bounded():
    r = parse_request(req("input", extensions=["WAV", ".Mp3", "." + "b" * 16]))
    assert r.input.extensions == [".wav", ".mp3", "." + "b" * 16]
    assert parse_request(req("input", extensions=[])).input.extensions is None
    assert parse_request(req("input", extensions=None)).input.extensions is None
    p = problems(req("input", extensions=[".wav", "." + "b" * 17]))
    assert list(p) == ["input.extensions"] and "'." + "b" * 17 + "'" in p["input.extensions"]


# --- "null" means unset, as in the original sample -----------------------------------------------------

@pytest.mark.parametrize("null", ["null", "NULL", " None ", "none"])
def test_null_strings_mean_unset(null):
    r = parse_request(req("output", file_options=null, s3_prefix=null, s3_suffix=null))
    assert r.output.file_options is None and r.output.s3_prefix == "" and r.output.s3_suffix == ""
    r = parse_request({**req("input", s3_prefix=null, file_options=null), "global": {"options": null}})
    assert r.input.s3_prefix == "" and r.input.file_options is None and r.global_.options is None


def test_blank_option_strings_mean_no_options():
    r = parse_request({**req("output", file_options="   "), "global": {"options": ""}})
    assert r.output.file_options is None and r.global_.options is None
    assert r.option_tokens() == {"global": [], "input": [], "output": []}


@pytest.mark.parametrize("section,field", [("input", "file_options"), ("output", "file_options"), ("global", "options")])
def test_every_option_field_is_checked(section, field):
    p = problems(req(section, **{field: "-ac 1 -vstats_file /tmp/x"}))
    assert list(p) == [f"{section}.{field}"] and "'-vstats_file' is not allowed" in p[f"{section}.{field}"]


def test_suffix_must_not_contain_a_slash():
    assert parse_request(req("output", s3_suffix=".v2")).output.s3_suffix == ".v2"
    p = problems(req("output", s3_suffix="x/y"))
    assert p == {"output.s3_suffix": "must not contain '/'"}


# --- one source, one target ------------------------------------------------------------------------------

def test_input_needs_exactly_one_source(tmp_path):
    p = problems({**BASE, "input": {"s3_prefix": "x/"}})
    assert p == {"input": "give either s3_bucket (with s3_prefix or manifest) or path"}
    p = problems({**BASE, "input": {"s3_bucket": "in", "path": str(tmp_path)}})
    assert p == {"input": "give either s3_bucket or path, not both"}
    p = problems({**BASE, "input": {"s3_bucket": "in", "s3_prefix": "a/", "manifest": "s3://in/m.csv"}})
    assert p == {"input": "give either s3_prefix or manifest, not both"}


def test_output_needs_exactly_one_target(tmp_path):
    assert problems({**BASE, "output": {"s3_prefix": "x/"}}) == {"output": "give either s3_bucket or path"}
    p = problems({**BASE, "output": {"s3_bucket": "out", "path": str(tmp_path)}})
    assert p == {"output": "give either s3_bucket or path, not both"}


# --- outputs and results never land among the inputs -------------------------------------------------

def test_results_inside_a_subfolder_of_the_input_folder_refused(tmp_path):
    data = {"name": "t", "input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")},
            "results": {"path": str(tmp_path / "in" / "sub" / "results")}}
    p = problems(data)
    assert list(p) == ["results.path"] and "inside input.path" in p["results.path"]
    data["results"] = {"path": str(tmp_path / "in")}
    assert list(problems(data)) == ["results.path"]
    data["results"] = {"path": str(tmp_path / "results")}  # beside the input: fine
    assert parse_request(data).results_location() == {"path": str(tmp_path / "results")}


@pytest.mark.parametrize("inp,out", [("in", "in"), ("in", "in/sub/out"), ("in/sub", "in"), ("in", "in/./x/..")])
def test_local_output_overlapping_input_refused(tmp_path, inp, out):
    p = problems({"name": "t", "input": {"path": str(tmp_path / inp)}, "output": {"path": str(tmp_path / out)}})
    assert list(p) == ["output.path"] and "overlaps input.path" in p["output.path"]


@pytest.mark.parametrize("inp,out", [("in", "out"), ("in", "in2"), ("a/in", "a/out")])
def test_local_output_beside_input_allowed(tmp_path, inp, out):
    r = parse_request({"name": "t", "input": {"path": str(tmp_path / inp)}, "output": {"path": str(tmp_path / out)}})
    assert r.output.path == str(tmp_path / out)


@pytest.mark.parametrize("in_prefix,out_prefix,refused", [
    ("media/", "media/out/", True), ("media/", "media/", True), ("media/", "", True), ("", "anything/", True),
    ("media/", "processed/", False), ("media/", "med", False),
])
def test_output_prefix_against_input_prefix_in_one_bucket(in_prefix, out_prefix, refused):
    data = {"name": "t", "input": {"s3_bucket": "b", "s3_prefix": in_prefix},
            "output": {"s3_bucket": "b", "s3_prefix": out_prefix}}
    if refused:
        p = problems(data)
        assert "output.s3_prefix" in p and "inside the input prefix" in p["output.s3_prefix"]
    else:
        assert parse_request(data).output.s3_prefix == out_prefix


def test_other_bucket_any_prefix_allowed():
    r = parse_request({"name": "t", "input": {"s3_bucket": "b", "s3_prefix": "media/"},
                       "output": {"s3_bucket": "c", "s3_prefix": "media/out/"}})
    assert r.results_location() == {"s3_bucket": "c", "s3_prefix": "ffleet-results/t/"}


@pytest.mark.parametrize("output,refused", [
    ({"s3_bucket": "b"}, True), ({"s3_bucket": "b", "s3_prefix": "out/"}, False),
    ({"s3_bucket": "b", "s3_suffix": ".x"}, False), ({"s3_bucket": "b", "extension": ".flac"}, False),
    ({"s3_bucket": "c"}, False),
])
def test_manifest_outputs_must_not_equal_inputs(output, refused):
    data = {"name": "t", "input": {"s3_bucket": "b", "manifest": "s3://b/m.csv"}, "output": output}
    if refused:
        assert problems(data) == {"output.s3_prefix": "output keys would equal the input keys; set a prefix or suffix"}
    else:
        assert parse_request(data).input.manifest == "s3://b/m.csv"


@pytest.mark.parametrize("results,refused", [
    ({"s3_bucket": "b", "s3_prefix": "media/results/"}, True),
    ({"s3_bucket": "b", "s3_prefix": "results/"}, False),
    ({"s3_bucket": "c", "s3_prefix": "media/"}, False),
    ({"s3_bucket": "b"}, False),  # the default prefix, ffleet-results/<name>/, is outside media/
])
def test_s3_results_inside_input_prefix(results, refused):
    data = {"name": "t", "input": {"s3_bucket": "b", "s3_prefix": "media/"}, "output": {"s3_bucket": "o"},
            "results": results}
    if refused:
        p = problems(data)
        assert list(p) == ["results.s3_prefix"] and "s3://b/media/" in p["results.s3_prefix"]
    else:
        assert parse_request(data).results_location()["s3_bucket"] == results["s3_bucket"]


def test_s3_results_of_a_manifest_run_may_share_the_bucket():
    data = {"name": "t", "input": {"s3_bucket": "b", "manifest": "s3://b/m.csv"},
            "output": {"s3_bucket": "o"}, "results": {"s3_bucket": "b", "s3_prefix": "results"}}
    assert parse_request(data).results_location() == {"s3_bucket": "b", "s3_prefix": "results/"}


# --- where results go ------------------------------------------------------------------------------------

@pytest.mark.parametrize("results,expected", [
    (None, {"s3_bucket": "out", "s3_prefix": "ffleet-results/t/"}),
    ({}, {"s3_bucket": "out", "s3_prefix": "ffleet-results/t/"}),
    ({"s3_prefix": "r/"}, {"s3_bucket": "out", "s3_prefix": "ffleet-results/t/"}),  # no bucket: not a location
    ({"s3_bucket": "r"}, {"s3_bucket": "r", "s3_prefix": "ffleet-results/t/"}),
    ({"s3_bucket": "r", "s3_prefix": "runs"}, {"s3_bucket": "r", "s3_prefix": "runs/"}),
    ({"s3_bucket": "r", "s3_prefix": ""}, {"s3_bucket": "r", "s3_prefix": ""}),
    ({"path": "/tmp/res", "s3_bucket": "r"}, {"path": "/tmp/res"}),
])
def test_results_location(results, expected):
    data = dict(BASE)
    if results is not None:
        data["results"] = results
    assert parse_request(data).results_location() == expected


# --- how problems are reported -----------------------------------------------------------------------------

def test_problems_name_nested_fields_and_list_positions():
    p = problems({**BASE, "global": {"options": 5}, "input": {"s3_bucket": "in", "extensions": [".wav", 7]}})
    assert set(p) == {"global.options", "input.extensions[1]"}


def test_request_must_be_an_object():
    for data in ([], "x", None, 3):
        assert problems(data) == {"(request)": "must be a JSON object"}


def test_model_checks_name_their_own_field():
    p = problems(req("quality", min_seconds=5, max_seconds=1))
    assert p == {"quality.min_seconds": "is greater than max_seconds"}
    p = problems(req("quality", min_lufs=-10, max_lufs=-20))
    assert p == {"quality.min_lufs": "is greater than max_lufs"}
    p = problems(req("quality", measure=False, reject_clipped=True, min_lufs=-30))
    assert p == {"quality.measure": "is false, but min_lufs, reject_clipped needs the measurements"}


def test_quality_equal_limits_allowed_and_filters_turn_measuring_on():
    q = parse_request(req("quality", min_seconds=2, max_seconds=2, min_lufs=-20, max_lufs=-20)).quality
    assert q.has_filters and q.measuring
    q = parse_request(req("quality", reject_clipped=True)).quality
    assert q.has_filters and q.measuring
    q = parse_request(req("quality", max_seconds=3, measure=False)).quality  # duration needs no measurement
    assert q.has_filters and not q.measuring
    q = parse_request(req("quality", measure=True)).quality
    assert not q.has_filters and q.measuring


@pytest.mark.parametrize("text,where", [(b'{"name": "x",\n  "a": }', " (line 2, column 8)"), (b'{"name": "\xff"}', "")])
def test_unreadable_json_is_one_problem(text, where):
    with pytest.raises(RequestError) as exc:
        parse_request_text(text, source="job.json")
    [(field, message)] = exc.value.problems
    assert field == "(request)" and message.startswith(f"job.json is not valid JSON{where}: ")


def test_to_dict_lists_every_problem():
    with pytest.raises(RequestError) as exc:
        parse_request({**BASE, "name": "", "compute": "tpu"})
    d = exc.value.to_dict()
    assert d["valid"] is False and {e["field"] for e in d["errors"]} == {"name", "compute"}
    assert all(e["message"] == dict(exc.value.problems)[e["field"]] for e in d["errors"])
    assert str(exc.value).startswith("name: ") or str(exc.value).startswith("compute: ")
    assert "; " in str(exc.value)


def test_load_request(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"name": "t", "input": {"path": "in"}, "output": {"path": "out"}}')
    assert load_request(path).input.path == "in"
    assert load_request(str(path)).output.path == "out"
    with pytest.raises(RequestError) as exc:
        load_request(tmp_path / "missing.json")
    [(field, message)] = exc.value.problems
    assert field == "(request)" and "missing.json" in message and "No such file" in message


def test_global_options_may_be_given_as_global_underscore():
    # populate_by_name: the Python name is accepted too, and problems still say "global"
    r = parse_request({**BASE, "global_": {"options": "-hide_banner"}})
    assert r.global_.options == "-hide_banner"
    assert list(problems({**BASE, "global_": {"options": "-report"}})) == ["global.options"]


def test_option_tokens_of_every_section():
    r = parse_request({**req("input", file_options="-ss 5"), "output": {"s3_bucket": "out", "file_options": "-ac 1"},
                       "global": {"options": "-hide_banner"}})
    assert r.option_tokens() == {"global": ["-hide_banner"], "input": ["-ss", "5"], "output": ["-ac", "1"]}


def test_json_dict_uses_the_request_field_names():
    r = parse_request({**BASE, "global": {"options": "-hide_banner"}, "processing": {"tolerated_failure_percent": 2.5}})
    d = r.to_json_dict()
    assert d["global"] == {"options": "-hide_banner"} and "global_" not in d
    assert d["processing"]["tolerated_failure_percent"] == 2.5
    assert parse_request(d) == r


def test_unknown_field_message():
    p = problems({**BASE, "output": {"s3_bucket": "out", "s3_sufix": ".x"}})
    assert p == {"output.s3_sufix": "unknown field (check the spelling; see the README's request reference)"}


def test_json_error_message_names_the_source_and_the_parser_error(tmp_path):
    with pytest.raises(RequestError) as exc:
        parse_request_text(b"{")
    assert exc.value.problems == [("(request)", "request is not valid JSON (line 1, column 2): "
                                                "Expecting property name enclosed in double quotes")]
    path = tmp_path / "job.json"
    path.write_text('{"name": }')
    with pytest.raises(RequestError) as exc:
        load_request(path)
    assert exc.value.problems == [("(request)", f"{path} is not valid JSON (line 1, column 10): Expecting value")]


@pytest.mark.parametrize("name,value", [("min_seconds", 1), ("max_seconds", 9), ("max_silence_ratio", 0.5),
                                        ("min_lufs", -30), ("max_lufs", -10), ("reject_clipped", True)])
def test_each_quality_filter_alone_is_a_filter(name, value):
    q = parse_request(req("quality", **{name: value})).quality
    assert q.has_filters and q.measuring  # measure unset: on because a filter is set


def test_local_inputs_to_a_bucket_and_bucket_inputs_to_a_folder(tmp_path):
    r = parse_request({"name": "t", "input": {"path": str(tmp_path)}, "output": {"s3_bucket": "out"}})
    assert r.results_location() == {"s3_bucket": "out", "s3_prefix": "ffleet-results/t/"}
    r = parse_request({"name": "t", "input": {"s3_bucket": "in"}, "output": {"path": str(tmp_path / "out")}})
    assert r.results_location() == {"path": str(tmp_path / "out.ffleet-results")}


@pytest.mark.parametrize("segment,field", [
    ({"max_seconds": 5, "min_seconds": 5}, "output.segment.min_seconds"),
    ({"max_seconds": 1, "min_seconds": 0, "min_silence_seconds": 1}, "output.segment.min_silence_seconds"),
])
def test_segment_limits_must_leave_room(segment, field):
    p = problems(req("output", segment=segment))
    assert p == {field: "must be less than max_seconds"}
    shorter = {**segment, field.rsplit(".", 1)[1]: segment[field.rsplit(".", 1)[1]] - 0.01}
    assert parse_request(req("output", segment=shorter)).output.segment.max_seconds == segment["max_seconds"]
