"""Fault: hostile and malformed job requests. The validator must never crash, must name the field,
and must never pass an option string that lets FFmpeg read or write a file ffleet did not name."""
from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffleet.ffmpeg import find_binaries
from ffleet.policy import OptionPolicyError, check_filtergraph, parse_options
from ffleet.request import RequestError, parse_request, parse_request_text

OPTION_FIELDS = {"input": "file_options", "output": "file_options", "global": "options"}
CANARY = "/tmp/ffleet-canary"


def _request(where: str, options: str) -> dict:
    req = {"name": "fuzz", "input": {"s3_bucket": "in-bucket"}, "output": {"s3_bucket": "out-bucket"}}
    req.setdefault(where, {})[OPTION_FIELDS[where]] = options
    return req


def _assert_refused_naming_field(where: str, options: str) -> None:
    with pytest.raises(RequestError) as exc:
        parse_request(_request(where, options))
    fields = [f for f, _ in exc.value.problems]
    assert f"{where}.{OPTION_FIELDS[where]}" in fields, (options, exc.value.problems)


# ---------------------------------------------------------------------------------------------
# 1. The oracle is this FFmpeg build itself: every filter option its help says names a file.

_FILE_WORDS = re.compile(r"\bfile\b|filename|file name|\bpath\b|director|bitmap|\bmodel\b|labels|fonts", re.I)


@lru_cache(maxsize=1)
def file_options_of_this_ffmpeg() -> dict[str, set[str]]:
    """{filter: {option names that take a file}} parsed from `ffmpeg -h full` and `ffmpeg -filters`."""
    ff = find_binaries().ffmpeg
    filters = set()
    for line in subprocess.run([ff, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=60).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and re.match(r"^[.TSC|]{2,3}$", parts[0]):
            filters.add(parts[1])
    found: dict[str, set[str]] = {}
    section: list[str] = []
    text = subprocess.run([ff, "-hide_banner", "-h", "full"], capture_output=True, text=True, timeout=60).stdout
    for line in text.splitlines():
        m = re.match(r"^(\S.*) AVOptions:$", line)
        if m:
            name = m.group(1)
            # "(a)sendcmd" is the class of both sendcmd and asendcmd
            section = [n for n in {name.replace("(a)", ""), name.replace("(a)", "a")} if n in filters]
            continue
        m = re.match(r"^   (\S+)\s+<string>\s+\S+\s*(.*)$", line)
        if m and section and _FILE_WORDS.search(m.group(1) + " " + m.group(2)):  # (a)movie's has no text
            for f in section:
                found.setdefault(f, set()).add(m.group(1))
    return found


def test_the_oracle_finds_the_known_file_options():
    """Guards the oracle: if the help parsing broke, the next test would pass vacuously."""
    found = file_options_of_this_ffmpeg()
    assert {"movie", "amovie", "sendcmd", "firequalizer", "curves", "lut3d"} <= set(found), sorted(found)
    assert "dumpfile" in found["firequalizer"] and "psfile" in found["curves"]
    assert sum(len(v) for v in found.values()) > 40


def test_every_filter_option_that_names_a_file_is_refused():
    """For every filter option that this FFmpeg build documents as a file, path or model, both
    `filter=option=PATH` and PATH as a positional value in any of the first 12 positions must be
    refused (FFmpeg assigns positional values to options in their declared order)."""
    accepted = []
    for name, options in sorted(file_options_of_this_ffmpeg().items()):
        graphs = [f"{name}={opt}={CANARY}" for opt in sorted(options)]
        graphs += [f"{name}=" + ":" * k + CANARY for k in range(12)]
        for graph in graphs:
            try:
                check_filtergraph(graph)
                accepted.append(graph)
            except OptionPolicyError:
                pass
    assert not accepted, f"filters that could open a file ffleet did not name: {accepted[:20]}"


# ---------------------------------------------------------------------------------------------
# 2. Adversarial option strings from a small grammar: each one contains a fragment that would make
#    FFmpeg open something, dressed in the quoting and escaping FFmpeg and shlex understand.

paths = st.sampled_from([CANARY, "../escape.wav", "x.wav", "~/.aws/credentials", "/proc/self/environ", "C:\\x"])
protocols = st.sampled_from(["file:", "http://169.254.169.254/", "concat:a.wav|b.wav", "subfile,,start,0,end,9,,:",
                             "pipe:1", "fd:3", "data:;base64,AAAA", "tcp://1.2.3.4:9/", "crypto:", "cache:", "async:file:"])
forbidden_flags = st.sampled_from(["-vstats_file", "-passlogfile", "-attach", "-dump_attachment:a", "-filter_script:a",
                                   "-filter_complex_script", "-sdp_file", "-fpre", "-apre", "-progress", "-i", "-i:0",
                                   "-protocol_whitelist", "-report", "-stats_file", "-hls_segment_filename",
                                   "-segment_list", "-hls_key_info_file", "-ca_file", "-key_file", "-graph_file"])
file_filters = st.sampled_from(["amovie", "movie", "asendcmd", "sendcmd", "ametadata=mode=print:file", "arnndn=m",
                                "firequalizer=dumpfile", "curves=psfile", "curves=plot", "removelogo", "nnedi=weights",
                                "lut3d", "sofalizer=sofa", "showcqt=axisfile", "paletteuse=debug_kdtree",
                                "selectivecolor=psfile", "drawtext=textfile", "ladspa=file", "cellauto=f", "life"])
bad_formats = st.sampled_from(["tee", "segment", "hls", "dash", "image2", "concat", "lavfi", "fifo", "rtp", "ssegment"])


def _escape_name(name: str, how: int) -> str:
    """Spellings FFmpeg's filtergraph parser reads as the same filter name."""
    if how == 1:
        return "\\".join(name)  # every character backslash-escaped
    if how == 2:
        return f"'{name}'"
    if how == 3:
        return f"[in]{name}@evil"
    return name


@st.composite
def hostile_option_strings(draw) -> str:
    kind = draw(st.sampled_from(["bare", "flag", "protocol", "filter", "format", "x264"]))
    path = draw(paths)
    if kind == "bare":
        core = shlex_quote(path) if draw(st.booleans()) else path
    elif kind == "flag":
        core = f"{draw(forbidden_flags)} {shlex_quote(path)}"
    elif kind == "protocol":
        flag = draw(st.sampled_from(["-map", "-c:a", "-b:a", "-timecode", "-tag", "-disposition"]))
        core = f"{flag} {shlex_quote(draw(protocols) + path)}"
    elif kind == "filter":
        spec = draw(file_filters)
        name, _, opt = spec.partition("=")
        target = (opt + "=" if opt and "=" not in opt else opt + "=" if opt else "") + path
        if spec.count("=") == 2:  # "ametadata=mode=print:file": keep its own arguments
            target = spec.split("=", 1)[1] + "=" + path
        graph = f"{_escape_name(name, draw(st.integers(0, 3)))}={target}"
        before = draw(st.sampled_from(["", "volume=0.5,", "aresample=16000;", "[0:a]asplit[a][b];[a]"]))
        flag = draw(st.sampled_from(["-af", "-vf", "-filter:a", "-filter_complex", "-lavfi", "-filter_complex:0"]))
        core = f"{flag} {shlex_quote(before + graph)}"
    elif kind == "format":
        core = f"-f {draw(bad_formats)}"
    else:
        core = f"-x264-params {shlex_quote('stats=' + path)}"
    safe = draw(st.lists(st.sampled_from(["-ac 1", "-ar 16000", "-c:a flac", "-vn", "-t 5", "-af volume=2"]), max_size=2))
    parts = safe + [core]
    draw(st.randoms()).shuffle(parts)
    return " ".join(parts)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(list(OPTION_FIELDS)), options=hostile_option_strings())
def test_hostile_option_strings_are_refused_naming_the_field(where, options):
    """Every generated string carries a fragment that would make FFmpeg open a file, URL or
    device ffleet did not name. Each must be refused with a RequestError naming the field."""
    _assert_refused_naming_field(where, options)


# ---------------------------------------------------------------------------------------------
# 3. Malformed requests: any JSON, any text. Only RequestError, always naming a field.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=6,
)
request_keys = st.sampled_from(["name", "compute", "input", "output", "global", "processing", "results",
                                "s3_bucket", "s3_prefix", "file_options", "manifest", "extensions", "path", "options",
                                "s3_suffix", "extension", "overwrite", "timeout_seconds_per_file",
                                "tolerated_failure_percent", "files_per_job", "max_concurrency"])
nested = st.recursive(json_values, lambda inner: st.dictionaries(request_keys, inner, max_size=5), max_leaves=8)


def _check_only_request_error(call) -> None:
    try:
        call()
    except RequestError as exc:
        assert exc.problems, "a RequestError must list its problems"
        for field, message in exc.problems:
            assert isinstance(field, str) and field.strip(), exc.problems
            assert isinstance(message, str) and message.strip(), exc.problems


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.dictionaries(request_keys, nested, max_size=6))
def test_malformed_requests_raise_only_request_error_naming_a_field(data):
    """Arbitrary JSON shaped like a request: the validator returns a request or raises
    RequestError whose every problem names a field; it never raises anything else."""
    _check_only_request_error(lambda: parse_request(data))


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_bytes_as_a_request_file(text):
    """A request file with any content, including invalid UTF-8: RequestError or a request."""
    _check_only_request_error(lambda: parse_request_text(text, source="job.json"))


option_alphabet = st.sampled_from(list("-:=,;'\"\\[] /.@|") + ["-i", "-f", "-af", "movie", "file", "http", "concat",
                                                                  "tee", "-map", "0", "a", "x.wav", "\n", "\x00", "%", "$"])


@settings(max_examples=400, deadline=None)
@given(where=st.sampled_from(list(OPTION_FIELDS)), tokens=st.lists(option_alphabet, max_size=14))
def test_random_option_soup_never_crashes_and_accepted_ones_name_no_file(where, tokens):
    """Random soup of option-string characters and words. The validator must raise RequestError
    naming the field or accept it; an accepted string must, split the way FFmpeg receives it,
    contain no bare word, no -i, and no protocol (checked here independently of the policy)."""
    options = "".join(tokens)
    try:
        parse_request(_request(where, options))
    except RequestError as exc:
        assert f"{where}.{OPTION_FIELDS[where]}" in [f for f, _ in exc.problems] or options.strip().lower() in ("null", "none"), exc.problems
        return
    argv = parse_options(options)
    i = 0
    from ffleet.policy import ALLOWED_FLAGS

    while i < len(argv):
        tok = argv[i]
        assert tok.startswith("-") and tok not in ("-", "--"), f"bare word {tok!r} accepted in {options!r}"
        assert tok.split(":")[0] != "-i", options
        takes_value = ALLOWED_FLAGS[tok[1:].split(":")[0]]
        if takes_value:
            assert "://" not in argv[i + 1] and not re.search(r"(^|[^a-z])(file|concat|pipe|fd|http|tee):", argv[i + 1], re.I), options
        i += 2 if takes_value else 1


def test_request_error_serialises_for_the_start_lambda():
    """The start Lambda answers with RequestError.to_dict(): it must be JSON with a field per problem."""
    with pytest.raises(RequestError) as exc:
        parse_request(_request("output", "-i /etc/passwd"))
    body = json.loads(json.dumps(exc.value.to_dict()))
    assert body["valid"] is False and body["errors"][0]["field"] == "output.file_options"


@pytest.mark.parametrize("options", [
    "-af amix=inputs=1:weights=1",
    "-af \"firequalizer=gain='if(lt(f,1000),0,-20)'\"",
    "-vf curves=preset=vintage",
    "-vf paletteuse=dither=bayer",
])
def test_the_tightened_policy_still_passes_everyday_uses_of_those_filters(options):
    """The fixes above refuse file options and positional values of filters that have a file
    option; the same filters used the ordinary way (key=value, no file) must still pass."""
    assert parse_request(_request("output", options)).output.file_options == options
