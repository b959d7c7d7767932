"""Every entry of every table in the option policy has a case that fails if the entry is removed,
or (for ALLOWED_FLAGS) if its arity flips; each resource cap is tested on both sides."""
from __future__ import annotations

import re

import pytest

from ffleet import policy
from ffleet.policy import (
    ALLOWED_FLAGS,
    ENCODER_PARAM_KEYS,
    FILE_OPTION_FILTERS,
    FILTER_FLAGS,
    FORBIDDEN_FILTERS,
    FORBIDDEN_FORMATS,
    FORBIDDEN_OUTPUT_EXTENSIONS,
    MAX_CHANNELS,
    MAX_FRAME_SIDE,
    MAX_SAMPLE_RATE,
    MAX_STREAM_LOOP,
    THREAD_FLAGS,
    OptionPolicyError,
    check_filtergraph,
    option_pairs,
    parse_options,
    refused_output_extension,
)
from ffleet.request import RequestError, parse_request


def refused(options: str) -> str:
    with pytest.raises(OptionPolicyError) as exc:
        parse_options(options)
    return str(exc.value)


# ---------------------------------------------------------------------------------------------
# ALLOWED_FLAGS: each entry passes with a sensible value, and its arity is pinned both ways.

SAMPLE_VALUES = {
    "loglevel": "error", "v": "error", "f": "wav", "c": "flac", "codec": "flac", "acodec": "flac",
    "vcodec": "libx264", "scodec": "copy", "map": "0:a:0", "map_metadata": "-1", "map_chapters": "-1",
    "b": "64k", "ab": "64k", "sample_fmt": "s16", "channel_layout": "stereo", "ch_layout": "stereo",
    "application": "audio", "vbr": "on", "profile": "main", "level": "4.0", "preset": "fast", "tune": "film",
    "pix_fmt": "yuv420p", "r": "25", "s": "1280x720", "aspect": "16:9", "fps_mode": "cfr", "vsync": "cfr",
    "disposition": "default", "strict": "normal", "tag": "mp4a", "vtag": "avc1", "atag": "mp4a",
    "bsf": "aac_adtstoasc", "metadata": "title=x", "movflags": "+faststart", "avoid_negative_ts": "make_zero",
    "x264-params": "keyint=50:bframes=2", "x265-params": "crf=20", "af": "volume=0.5", "vf": "scale=320:-2",
    "filter": "anull", "filter_complex": "anull", "lavfi": "anull", "timecode": "00:00:00:00",
    "hwaccel": "auto", "hwaccel_output_format": "cuda", "fflags": "+genpts", "err_detect": "ignore_err",
    "rc": "vbr", "multipass": "qres", "ss": "00:00:01", "sseof": "-5", "to": "10", "maxrate": "1M",
    "minrate": "1M", "bufsize": "2M", "apad": "pad_dur=1", "lpc_type": "levinson", "joint_stereo": "1",
}
VALUE_FLAGS = sorted(f for f, takes in ALLOWED_FLAGS.items() if takes)
VALUELESS_FLAGS = sorted(f for f, takes in ALLOWED_FLAGS.items() if not takes)


@pytest.mark.parametrize("flag", VALUE_FLAGS)
def test_each_flag_that_takes_a_value_passes_with_one_and_consumes_it(flag):
    value = SAMPLE_VALUES.get(flag, "1")
    assert parse_options(f"-{flag} {value} -vn") == [f"-{flag}", value, "-vn"]
    assert list(option_pairs([f"-{flag}", "-vn", "-vn"])) == [(f"-{flag}", "-vn"), ("-vn", None)]
    assert "expects a value" in refused(f"-{flag}")


@pytest.mark.parametrize("flag", VALUELESS_FLAGS)
def test_each_valueless_flag_passes_and_a_bare_word_after_it_is_refused(flag):
    assert parse_options(f"-{flag} -vn") == [f"-{flag}", "-vn"]
    msg = refused(f"-{flag} /tmp/x.wav")  # were it marked as taking a value, /tmp/x.wav would be that value
    assert "/tmp/x.wav" in msg and "bare word" in msg


@pytest.mark.parametrize("flag", ["vstats_file", "passlogfile", "dump_attachment", "attach", "report", "progress",
                                  "filter_script", "filter_complex_script", "sdp_file", "fpre", "y", "/af", "/filter_complex"])
def test_flags_off_the_allowlist_are_refused(flag):
    assert "allowlist" in refused(f"-{flag} x")


# ---------------------------------------------------------------------------------------------
# FORBIDDEN_FILTERS: wherever a filter can stand in a graph.

def _positions(name: str) -> list[tuple[str, str]]:
    return [
        ("-af", name),
        ("-af", f"{name}=x=1"),
        ("-af", f"anull,{name}"),
        ("-af", f"anull, volume=0.5 ,{name}=x=1"),
        ("-af", f"anull,'{name}'"),
        ("-af", f"anull,\\{name[0]}{name[1:]}"),
        ("-af", f"anull,{name}@label"),
        ("-af", f"[in]anull[mid];[mid]{name}[out]"),
        ("-filter_complex", f"[0:a]anull[a];[a]{name.upper()}"),
        ("-vf", f"scale=320:-2,{name}"),
        ("-filter:a", f"volume='1\\',{name}"),  # av_get_token: the quote ends after the backslash
    ]


@pytest.mark.parametrize("name", sorted(FORBIDDEN_FILTERS))
def test_each_forbidden_filter_is_refused_at_every_position(name):
    for flag, graph in _positions(name):
        with pytest.raises(OptionPolicyError) as exc:
            parse_options(f"{flag} {_shell(graph)}")
        assert "reads or writes files" in str(exc.value) and name in str(exc.value).lower(), (flag, graph, exc.value)


def test_an_empty_segment_hides_no_later_filter():
    for graph in ["anull,,amovie=x", "anull,;amovie=x", ",amovie=x", "[a];amovie=x", "anull, ,amovie=x"]:
        with pytest.raises(OptionPolicyError):
            check_filtergraph(graph)


def _shell(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------------------------------------
# _PATH_OPTION and FILE_OPTION_FILTERS

PATH_OPTIONS = re.search(r"\^\((.*)\)\$", policy._PATH_OPTION.pattern).group(1).split("|")


def test_path_option_names_are_read_from_the_pattern():
    assert {"file", "filename", "textfile", "labels"} <= set(PATH_OPTIONS) and len(PATH_OPTIONS) > 30


@pytest.mark.parametrize("key", PATH_OPTIONS)
def test_each_path_like_filter_option_is_refused(key):
    for graph in [f"anull={key}=x", f"anull=mode=1:{key}=x", f"anull,volume=0.5:{key.upper()} = x", f"[a]anull={key}=x[b]"]:
        with pytest.raises(OptionPolicyError) as exc:
            check_filtergraph(graph)
        assert "name a file" in str(exc.value), graph


@pytest.mark.parametrize("name", sorted(FILE_OPTION_FILTERS))
def test_each_file_option_filter_takes_only_key_value(name):
    with pytest.raises(OptionPolicyError) as exc:
        check_filtergraph(f"{name}=somefile")
    assert "key=value" in str(exc.value)
    with pytest.raises(OptionPolicyError):
        check_filtergraph(f"{name}=a=1:somefile")
    check_filtergraph(f"{name}=a=1")  # the keyed form passes the policy (FFmpeg checks the key itself)


@pytest.mark.parametrize("graph", [
    "volume=/volume=x", "volume=0.5:/precision=x", "volume= /volume =x", "volume='/volume'=x",
    "volume=\\/volume=x", "anull,volume=/volume=x", "volume@a=/volume=x", "[in]volume=/volume=x[out]",
    "volume=a/volume=x", "volume=precision=float:/0=x",
])
def test_filter_options_loaded_from_a_file_are_refused(graph):
    with pytest.raises(OptionPolicyError) as exc:
        check_filtergraph(graph)
    assert "from a file" in str(exc.value)
    with pytest.raises(OptionPolicyError):
        parse_options(f"-apad {_shell(graph.partition('=')[2])}")  # -apad's value is apad's options


# ---------------------------------------------------------------------------------------------
# _PROTOCOLS: in every option value that FFmpeg could read as a URL, and in filter arguments.

URL_FLAGS = [f for f in VALUE_FLAGS if f not in FILTER_FLAGS and f != "metadata"]


@pytest.mark.parametrize("proto", policy._PROTOCOLS)
def test_each_protocol_is_refused_in_every_value(proto):
    for form in [f"{proto}:x", f"{proto.upper()}:x", f"{proto},,opt,1,,:x", f"a|{proto}:x"]:
        for flag in URL_FLAGS:
            assert "protocol" in refused(f"-{flag} {_shell(form)}"), (flag, form)
    for form in [f"{proto}:x", f"{proto.upper()}:x", f"a|{proto}:x", f"{proto}\\,\\,opt\\,1\\,\\,:x"]:
        for graph in [f"aresample={form}", f"anull,volume=volume={form}", f"volume='{form}'"]:
            with pytest.raises(OptionPolicyError) as exc:
                check_filtergraph(graph)
            assert "protocol" in str(exc.value), graph


@pytest.mark.parametrize("flag", URL_FLAGS + sorted(FILTER_FLAGS) + ["metadata"])
def test_url_forms_are_refused_in_every_value(flag):
    assert "protocol" in refused(f"-{flag} http://example.com/x")


def test_metadata_may_mention_a_protocol_name_but_not_be_one():
    assert parse_options("-metadata 'comment=see http: or tcp: notes'")
    assert "protocol" in refused("-metadata file:/etc/passwd")
    assert "protocol" in refused("-metadata pipe:1")


# ---------------------------------------------------------------------------------------------
# FORBIDDEN_FORMATS and FORBIDDEN_OUTPUT_EXTENSIONS

@pytest.mark.parametrize("muxer", sorted(FORBIDDEN_FORMATS))
def test_each_forbidden_format_is_refused_alone_and_in_a_list(muxer):
    for value in [muxer, muxer.upper(), f"wav,{muxer}", f"{muxer},wav", f"mp4,mov,{muxer}"]:
        assert "format" in refused(f"-f {value}"), value
    assert parse_options(f"-f wav,{muxer}x")  # a list is split on commas, and names compared whole


def test_format_lists_are_split_on_commas_only():
    assert "format name" in refused("-f 'wav hls'")
    assert parse_options("-f mov,mp4,m4a")


@pytest.mark.parametrize("ext", sorted(FORBIDDEN_OUTPUT_EXTENSIONS))
def test_each_forbidden_output_extension_is_refused(ext):
    assert refused_output_extension(f"song.{ext}") and refused_output_extension(f"x.{ext.upper()}")
    for output in [{"extension": f".{ext}"}, {"extension": ext}, {"s3_suffix": f".{ext}"},
                   {"extension": ".flac", "s3_suffix": f".{ext}"}]:
        with pytest.raises(RequestError) as exc:
            parse_request({"name": "x", "input": {"s3_bucket": "a"}, "output": {"s3_bucket": "b", **output}})
        fields = dict(exc.value.problems)
        field = "output.s3_suffix" if "s3_suffix" in output else "output.extension"
        assert f".{ext}" in fields[field], exc.value.problems


def test_single_file_extensions_pass():
    for ext in ["flac", "wav", "mp3", "opus", "m4a", "mp4", "mkv", "webm", "ogg"]:
        assert refused_output_extension(f"a.{ext}") is None
        parse_request({"name": "x", "input": {"s3_bucket": "a"}, "output": {"s3_bucket": "b", "extension": ext}})
    assert refused_output_extension("no-extension") is None


# ---------------------------------------------------------------------------------------------
# ENCODER_PARAM_KEYS: an allowlist, after x264's and x265's own key normalisation.

@pytest.mark.parametrize("key", sorted(ENCODER_PARAM_KEYS))
def test_each_encoder_parameter_key_passes(key):
    for flag in ("-x264-params", "-x265-params"):
        assert parse_options(f"{flag} {key}=1:{key.replace('-', '_')}=1:no-{key}=1")


@pytest.mark.parametrize("key", [
    "stats", "pass", "qpfile", "cqmfile", "dump-yuv", "dump_yuv", "DUMP_YUV", "dump\\_yuv", "'dump_yuv'",
    "opencl-clbin", "analysis-save", "analysis_save", "analysis-load", "csv", "csv-log-level", "recon",
    "zonefile", "lambda-file", "scaling-list", "dolby-vision-rpu", "threads", "pools", "frame-threads",
    "lookahead-threads", "no-dump-yuv", "nodump-yuv", "crf:dump_yuv",
])
def test_encoder_parameter_keys_off_the_list_are_refused(key):
    for flag in ("-x264-params", "-x265-params"):
        assert "encoder parameters" in refused(f"{flag} {_shell(key + '=out.yuv')}"), key
        assert "encoder parameters" in refused(f"{flag} {_shell('keyint=2:' + key + '=out.yuv')}"), key


def test_encoder_parameter_values_with_paths_are_refused():
    assert "read or write files" in refused("-x264-params keyint=/tmp/x")


# ---------------------------------------------------------------------------------------------
# Resource caps, each on both sides.

@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(policy, "usable_cpus", lambda: 4)


@pytest.mark.parametrize("flag", THREAD_FLAGS)
def test_thread_counts_are_capped_at_the_usable_cpus(flag, four_cpus):
    assert parse_options(f"-{flag} 4") and parse_options(f"-{flag} 0") and parse_options(f"-{flag} 1")
    msg = refused(f"-{flag} 5")
    assert "4 CPUs" in msg
    for value in ["1e6", "2*2", "-1", "4.0", "0x10"]:
        assert "whole number" in refused(f"-{flag} {value}"), value


def test_threads_auto_is_allowed_only_where_ffmpeg_knows_it(four_cpus):
    assert parse_options("-threads auto")
    assert "whole number" in refused("-filter_threads auto")


def test_usable_cpus_is_the_machines():
    import os

    assert 1 <= policy.usable_cpus() <= (os.cpu_count() or 1)


def test_sample_rate_cap():
    assert parse_options(f"-ar {MAX_SAMPLE_RATE}") and parse_options("-ar 44.1k") and parse_options("-ar:a:0 384k")
    assert "384000 Hz" in refused(f"-ar {MAX_SAMPLE_RATE + 1}")
    assert "384000 Hz" in refused("-ar 384.001k")
    for value in ["1e9", "48000*2", "1M"]:
        assert "whole number" in refused(f"-ar {value}")


def test_channel_cap():
    assert parse_options(f"-ac {MAX_CHANNELS}") and parse_options("-ac 1")
    assert f"1 to {MAX_CHANNELS}" in refused(f"-ac {MAX_CHANNELS + 1}")
    assert f"1 to {MAX_CHANNELS}" in refused("-ac 0")
    for flag in ("ch_layout", "channel_layout"):
        assert parse_options(f"-{flag} {MAX_CHANNELS}c") and parse_options(f"-{flag} 'ambisonic 7'")
        assert "channels" in refused(f"-{flag} {MAX_CHANNELS + 1}c")
        assert "channels" in refused(f"-{flag} 'ambisonic 8'")


def test_frame_size_cap():
    assert parse_options(f"-s {MAX_FRAME_SIDE}x{MAX_FRAME_SIDE}") and parse_options("-s hd1080")
    assert "pixels" in refused(f"-s {MAX_FRAME_SIDE + 1}x10")
    assert "pixels" in refused(f"-s 10x{MAX_FRAME_SIDE + 1}")


def test_stream_loop_cap():
    assert parse_options(f"-stream_loop {MAX_STREAM_LOOP}") and parse_options("-stream_loop 0")
    for value in [str(MAX_STREAM_LOOP + 1), "-1", "1e3"]:
        assert "loop count" in refused(f"-stream_loop {value}"), value


@pytest.mark.parametrize("graph,ok", [
    (f"aresample={MAX_SAMPLE_RATE}", True), (f"aresample={MAX_SAMPLE_RATE + 1}", False),
    (f"asetrate={MAX_SAMPLE_RATE + 1}", False), ("asetrate=44100*1.25", False),
    (f"aresample=osr={MAX_SAMPLE_RATE + 1}", False), (f"aformat=sample_rates=48000|{MAX_SAMPLE_RATE + 1}", False),
    ("aformat=sample_rates=44100|48000", True), (f"anullsrc=sample_rate={MAX_SAMPLE_RATE + 1}", False),
    (f"aresample=out_sample_rate={MAX_SAMPLE_RATE + 1}", False), (f"sine=isr={MAX_SAMPLE_RATE + 1}", False),
    (f"sine=in_sample_rate={MAX_SAMPLE_RATE + 1}", False),
    (f"pan={MAX_CHANNELS + 1}c|c0=c0", False), ("pan=mono|c0=FL", True), (f"aformat=cl={MAX_CHANNELS + 1}c", False),
    (f"aformat=channel_layouts=stereo|{MAX_CHANNELS + 1}c", False), (f"aformat=s16:48000:{MAX_CHANNELS + 1}c", False),
    (f"aformat=s16:{MAX_SAMPLE_RATE + 1}", False), ("aformat=s16:48000:stereo", True), ("aresample=48000:linear", True),
    (f"volume={MAX_CHANNELS + 1}c", True), (f"anull@a@b", True),
    (f"anullsrc=channel_layout={MAX_CHANNELS + 1}c", False), (f"anullsrc=ch_layout={MAX_CHANNELS + 1}c", False),
    (f"aresample=ocl={MAX_CHANNELS + 1}c", False), (f"aresample=ochl={MAX_CHANNELS + 1}c", False),
    (f"aresample=out_channel_layout={MAX_CHANNELS + 1}c", False),
    (f"scale={MAX_FRAME_SIDE}:-2", True), (f"scale={MAX_FRAME_SIDE + 1}:-2", False), (f"scale=-2:{MAX_FRAME_SIDE + 1}", False),
    (f"pad={MAX_FRAME_SIDE + 1}:10", False), (f"scale_cuda={MAX_FRAME_SIDE + 1}:10", False),
    (f"scale_npp={MAX_FRAME_SIDE + 1}:10", False), (f"scale_vaapi={MAX_FRAME_SIDE + 1}:10", False),
    (f"scale_qsv={MAX_FRAME_SIDE + 1}:10", False),
    (f"scale=w={MAX_FRAME_SIDE + 1}", False), (f"scale=h={MAX_FRAME_SIDE + 1}", False),
    (f"scale=width={MAX_FRAME_SIDE + 1}", False), (f"scale=height={MAX_FRAME_SIDE + 1}", False),
    (f"scale=10:10:{MAX_FRAME_SIDE + 1}", True), (f"scale=W={MAX_FRAME_SIDE + 1}", False),
    (f"color=s={MAX_FRAME_SIDE + 1}x10", False), (f"color=s={MAX_FRAME_SIDE}x10", True),
    ("scale=iw/2:ih/2", True), (f"crop={MAX_FRAME_SIDE + 1}:10", True),
])
def test_filter_sizes_and_rates_are_capped(graph, ok):
    if ok:
        check_filtergraph(graph)
    else:
        with pytest.raises(OptionPolicyError) as exc:
            check_filtergraph(graph)
        assert re.search(r"Hz|channels|pixels|whole number", str(exc.value)), exc.value


def test_a_cap_refusal_names_the_request_field(four_cpus):
    with pytest.raises(RequestError) as exc:
        parse_request({"name": "x", "input": {"s3_bucket": "a", "file_options": "-threads 64"},
                       "output": {"s3_bucket": "b", "file_options": "-ar 768000"}, "global": {"options": "-filter_threads 9"}})
    fields = dict(exc.value.problems)
    assert "4 CPUs" in fields["input.file_options"] and "384000 Hz" in fields["output.file_options"]
    assert "-filter_threads" in fields["global.options"]


def test_an_inputs_own_forbidden_extension_gets_no_muxer():
    """Without output.extension an output keeps its input's extension: the work file then has none,
    and FFmpeg fails the file instead of writing a playlist and its segments."""
    from ffleet.worker import _temp_suffix

    assert _temp_suffix("in/list.m3u8") == "" and _temp_suffix("in/frame.PNG") == ""
    assert _temp_suffix("in/song.flac") == ".flac"


def test_numbers_take_a_kilo_suffix_only_where_a_rate_does():
    assert parse_options("-ar 48k")
    assert "whole number" in refused("-ac 0.064k")
    assert "loop count" in refused("-stream_loop 0.001k")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "usable_cpus", lambda: 4)
        assert "whole number" in refused("-threads 0.001k")


def test_layout_counts_are_read_in_any_case():
    for layout in [f"{MAX_CHANNELS + 1}C", "'AMBISONIC 8'", f"'{MAX_CHANNELS + 1} c'"]:
        assert "channels" in refused(f"-ch_layout {layout}"), layout
    assert parse_options("-ch_layout 5.1") and parse_options("-ch_layout 'ambisonic 7+stereo'")


@pytest.mark.parametrize("params", ["keyint=2:", "keyint='2:x'", "keyint=2:bframes=3", " keyint = 2 "])
def test_encoder_parameters_split_as_ffmpeg_does(params):
    """FFmpeg's av_dict_parse_string: a trailing ':' ends the list, a quoted ':' stays in the value."""
    assert parse_options(f"-x264-params {_shell(params)}")


def test_a_refusal_carries_its_token_and_reason():
    with pytest.raises(OptionPolicyError) as exc:
        parse_options("-c:a flac -i x")
    assert (exc.value.token, exc.value.reason) == ("-i", "only ffleet names the input (-i)")


TOO_BIG = {"rate": str(MAX_SAMPLE_RATE + 1), "layout": f"{MAX_CHANNELS + 1}c", "side": str(MAX_FRAME_SIDE + 1)}
JUST_RIGHT = {"rate": str(MAX_SAMPLE_RATE), "layout": f"{MAX_CHANNELS}c", "side": str(MAX_FRAME_SIDE)}


@pytest.mark.parametrize("key,kind", sorted(policy._OPTION_KINDS.items()))
def test_each_capped_filter_option_is_capped(key, kind):
    check_filtergraph(f"anull={key}={JUST_RIGHT[kind]}")
    with pytest.raises(OptionPolicyError):
        check_filtergraph(f"anull={key}={TOO_BIG[kind]}")


@pytest.mark.parametrize("name,position,kind", sorted((n, p, k) for (n, p), k in policy._POSITIONAL_KINDS.items()))
def test_each_capped_positional_filter_value_is_capped(name, position, kind):
    values = ["1"] * position
    check_filtergraph(f"{name}={':'.join([*values, JUST_RIGHT[kind]])}")
    with pytest.raises(OptionPolicyError):
        check_filtergraph(f"{name}={':'.join([*values, TOO_BIG[kind]])}")
