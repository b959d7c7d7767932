"""The FFmpeg option policy: common options pass; anything that names a file or protocol is refused."""
import pytest

from ffleet.policy import OptionPolicyError, parse_options

VALID = [
    "-ac 1 -ar 48000",
    "-c:a libopus -b:a 64k",
    "-c:a flac -sample_fmt s16",
    "-map 0:a:0 -vn",
    "-t 30 -ss 5",
    "-ss 00:00:05.5 -to 00:01:00",
    "-threads 2 -loglevel error",
    "-af loudnorm=I=-16:TP=-1.5:LRA=11",
    "-filter:a 'aresample=16000,pan=mono|c0=FL'",
    "-af \"highpass=f=80, lowpass=f=8000\"",
    "-c:v libx264 -preset fast -crf 23 -b:v 2M",
    "-vf scale=1280:-2",
    "-c:v h264_nvenc -preset p4 -b:v 5M",
    "-f flac",
    "-metadata title='A song: file of mine'",
    "-filter_complex '[0:a]asplit=2[a][b];[a][b]amix=inputs=2'",
    "",
]


@pytest.mark.parametrize("options", VALID)
def test_common_options_pass(options):
    assert isinstance(parse_options(options), list)


def test_tokens_keep_quoted_values_whole():
    assert parse_options("-af 'volume=0.5, aresample=16000'") == ["-af", "volume=0.5, aresample=16000"]


REFUSED = [
    # (options, the token the message must name, a word the reason must contain)
    ("/etc/passwd", "/etc/passwd", "bare word"),
    ("-ac 1 extra.wav", "extra.wav", "bare word"),
    ("-i /etc/passwd", "-i", "input"),
    ("-i:0 x", "-i:0", "input"),
    ("-protocol_whitelist file,http", "-protocol_whitelist", "protocol"),
    ("-vstats_file /tmp/x", "-vstats_file", "allowlist"),
    ("-passlogfile /tmp/x", "-passlogfile", "allowlist"),
    ("-dump_attachment:t out.ttf", "-dump_attachment:t", "allowlist"),
    ("-attach font.ttf", "-attach", "allowlist"),
    ("-report", "-report", "allowlist"),
    ("-progress http://evil/", "-progress", "allowlist"),
    ("-filter_complex_script /tmp/f", "-filter_complex_script", "allowlist"),
    ("-af amovie=/etc/passwd", "amovie", "filter"),
    ("-vf movie=secret.mp4[m];[in][m]overlay", "movie", "filter"),
    ("-lavfi 'amovie=x.wav'", "amovie", "filter"),
    ("-vf \"drawtext=textfile=/etc/passwd\"", "drawtext", "filter"),
    ("-af 'mo\\vie=/etc/passwd'", "movie", "filter"),  # FFmpeg unescapes names: so do we
    ("-af asendcmd=f=/tmp/cmds", "asendcmd", "filter"),
    ("-vf subtitles=/etc/passwd", "subtitles", "filter"),
    ("-af sofalizer=sofa=/x.sofa", "sofalizer", "filter"),
    ("-af 'ametadata=mode=print:file=/tmp/leak'", "ametadata", "filter"),
    ("-af afftdn=file=/tmp/x", "afftdn=file", "file"),
    ("-c:a copy -f tee", "tee", "format"),
    ("-f segment", "segment", "format"),
    ("-f hls", "hls", "format"),
    ("-f 'wav;rm -rf /'", "wav;rm -rf /", "format name"),
    ("-metadata title=x -c:a pipe:1", "pipe:1", "protocol"),
    ("-ss concat:a.wav|b.wav", "concat:a.wav|b.wav", "protocol"),
    ("-af aresample=http://x/", "aresample=http://x/", "protocol"),
    ("-x264-params stats=/tmp/x.log", "stats=/tmp/x.log", "files"),
    ("-ac", "-ac", "expects a value"),
    ("-ac 1 'unclosed", "'unclosed", "cannot be split"),
    ("-", "-", "bare word"),
]


@pytest.mark.parametrize("options,token,word", REFUSED)
def test_refusals_name_the_token(options, token, word):
    with pytest.raises(OptionPolicyError) as exc:
        parse_options(options)
    msg = str(exc.value)
    assert token in msg, msg
    assert word in msg, msg


def test_refusal_reaches_the_request_field():
    from ffleet.request import RequestError, parse_request

    with pytest.raises(RequestError) as exc:
        parse_request({"name": "x", "input": {"s3_bucket": "a", "s3_prefix": "p/", "file_options": "-i /etc/passwd"},
                       "output": {"s3_bucket": "b"}, "global": {"options": "-vstats_file /tmp/v"}})
    fields = dict(exc.value.problems)
    assert "-i" in fields["input.file_options"]
    assert "-vstats_file" in fields["global.options"]


def test_option_pairs_gives_an_unknown_flag_no_value():
    """parse_options refuses an unknown flag before its value could matter; the walk must not
    swallow the next token either, so a bare word after it is still seen."""
    from ffleet.policy import option_pairs

    assert list(option_pairs(["-nosuchflag", "x.wav", "-ss", "1"])) == [("-nosuchflag", None), ("x.wav", None), ("-ss", "1")]
    assert list(option_pairs(["-ss"])) == [("-ss", None)]


def test_option_pairs_never_takes_a_value_for_a_flag():
    from ffleet.policy import option_pairs

    tokens = parse_options("-metadata -ss -vn -c:a flac -t 5")
    assert list(option_pairs(tokens)) == [("-metadata", "-ss"), ("-vn", None), ("-c:a", "flac"), ("-t", "5")]


# FFmpeg's av_get_token (libavutil/avstring.c), the tokeniser of filter graphs, filter options and
# option dictionaries: cases from FFmpeg's own avstring test, read off its C code.
AV_GET_TOKEN = [
    # (text, separators, token, what is left)
    ("", ":", "", ""),
    (":", ":", "", ":"),
    ("\\", ":", "\\", ""),  # a lone trailing backslash is kept
    ("'", ":", "", ""),
    ("    ''    :", ":", "", ":"),
    ("foo   '' :", ":", "foo   ", ":"),  # quoted text (even empty) protects the whitespace before it
    ("'foo'", ":", "foo", ""),
    ("foo     ", ":", "foo", ""),
    ("  '  foo  '  ", ":", "  foo  ", ""),
    ("foo':  blah:blah", ":", "foo:  blah:blah", ""),  # an unclosed quote runs to the end
    ("foo\\:  blah:blah", ":", "foo:  blah", ":blah"),
    ("'foo :  '  :blahblah", ":", "foo :  ", ":blahblah"),
    ("\\ :blah", ":", " ", ":blah"),
    ("      foo     \\ ", ":", "foo      ", ""),
    ("\\f\\o\\o", ":", "foo", ""),
    ("'\\fo\\o:': blahblah", ":", "\\fo\\o:", ": blahblah"),  # no escapes inside quotes
    ("a,b;c", ",;", "a", ",b;c"),
    ("   ", ":", "", ""),
    ("'' ", ":", "", ""),
    ("'a':'b'", ":", "a", ":'b'"),
    ("x'a'b':c", ":", "xab:c", ""),
]


@pytest.mark.parametrize("text,seps,token,rest", AV_GET_TOKEN)
def test_av_get_token_reads_as_ffmpeg_does(text, seps, token, rest):
    from ffleet.policy import _av_get_token

    got, pos = _av_get_token(text, 0, seps)
    assert (got, text[pos:]) == (token, rest)


@pytest.mark.parametrize("graph,filters", [
    ("anull", [("anull", None)]),
    ("volume=0.5 , aresample=16000", [("volume", "0.5"), ("aresample", "16000")]),
    ("[0:a] asplit=2 [a][b]; [a][b] amix=inputs=2 [out]", [("asplit", "2"), ("amix", "inputs=2")]),
    ("sws_flags=bicubic;[in]scale=320:-2[out]", [("scale", "320:-2")]),
    ("volume='1\\',amovie=x", [("volume", "1\\"), ("amovie", "x")]),
    ("[a',b']volume", [("volume", None)]),  # quotes inside a link label too
    ("volume@my\\,name=2", [("volume@my,name", "2")]),
])
def test_filter_graphs_split_as_ffmpeg_does(graph, filters):
    from ffleet.policy import _filter_specs

    assert list(_filter_specs(graph)) == filters


@pytest.mark.parametrize("graph,word", [
    ("sws_flags=bicubic", "sws_flags"), ("[in", "not closed"), ("[in]anull[out]x", "filter graph"),
    ("anull[out] x", "filter graph"), ("anull,", "not a filter name"), ("", "not a filter name"),
    ("vol ume", "not a filter name"),
])
def test_graphs_ffmpeg_would_not_parse_are_refused(graph, word):
    from ffleet.policy import check_filtergraph

    with pytest.raises(OptionPolicyError) as exc:
        check_filtergraph(graph)
    assert word in str(exc.value)


@pytest.mark.parametrize("args,options", [
    ("0.5", [(None, "0.5")]),
    ("volume=0.5:precision=float", [("volume", "0.5"), ("precision", "float")]),
    (" volume = 0.5 : 1", [("volume", "0.5"), (None, "1")]),  # whitespace around keys and values goes
    ("a\\:b=1:c", [(None, "a:b=1"), (None, "c")]),  # an escaped ':' makes the first a positional value
    ("/volume=x", [("/volume", "x")]),
    ("'x:y'=1", [(None, "x:y=1")]),
    ("f=80:", [("f", "80")]),
])
def test_filter_options_split_as_ffmpeg_does(args, options):
    from ffleet.policy import _filter_args

    assert list(_filter_args(args)) == options


def test_usable_cpus_follow_affinity_and_quota(tmp_path):
    from ffleet.cpus import usable_cpus

    import os

    cpus = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == cpus
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(cpus + 4) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == cpus


def test_the_thread_cap_follows_the_machine_that_will_run_ffmpeg(monkeypatch):
    """The start Lambda validates for a Batch job with more CPUs than it has (FFLEET_TARGET_CPUS)."""
    from ffleet import policy

    monkeypatch.setattr("ffleet.cpus.usable_cpus", lambda *a, **kw: 2)
    monkeypatch.delenv("FFLEET_TARGET_CPUS", raising=False)
    with pytest.raises(policy.OptionPolicyError, match="capped at the 2 CPUs"):
        policy.parse_options("-threads 8")
    monkeypatch.setenv("FFLEET_TARGET_CPUS", "16")
    assert policy.parse_options("-threads 8") == ["-threads", "8"]
    with pytest.raises(policy.OptionPolicyError, match="capped at the 16 CPUs"):
        policy.parse_options("-threads 17")
