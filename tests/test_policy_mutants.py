"""The policy's tables spelled out: a table-driven test that reads its cases from the table under test
loses the case with the entry, so removing an entry (or flipping a flag's arity) passed every test
(scripts/mutation scored the tables 38% on a sample). These copies make that a deliberate change:
an entry removed from policy.py fails here, and the same checks as tests/test_policy_tables.py run on it.
"""
from __future__ import annotations

import pytest

import test_policy_tables as tables
from ffleet import policy

VALUE_FLAGS = [
    'loglevel', 'v', 'threads', 'filter_threads', 'filter_complex_threads', 'max_error_rate',
    'stats_period', 'ss', 'sseof', 't', 'to', 'itsoffset', 'analyzeduration', 'probesize', 'fflags',
    'err_detect', 'guess_layout_max', 'drc_scale', 'hwaccel', 'hwaccel_output_format', 'stream_loop',
    'readrate', 'c', 'codec', 'acodec', 'vcodec', 'scodec', 'map', 'map_metadata', 'map_chapters', 'b',
    'ab', 'ac', 'ar', 'sample_fmt', 'channel_layout', 'ch_layout', 'aq', 'q', 'qscale', 'compression_level',
    'frame_size', 'application', 'vbr', 'cutoff', 'apply_phase_inv', 'frame_duration', 'write_xing',
    'id3v2_version', 'reservoir', 'joint_stereo', 'lpc_type', 'profile', 'level', 'preset', 'tune', 'crf',
    'cq', 'qp', 'rc', 'pix_fmt', 'r', 's', 'aspect', 'g', 'bf', 'maxrate', 'minrate', 'bufsize', 'fps_mode',
    'vsync', 'async', 'frames', 'vframes', 'aframes', 'disposition', 'strict', 'tag', 'vtag', 'atag', 'bsf',
    'metadata', 'movflags', 'avoid_negative_ts', 'max_muxing_queue_size', 'global_quality', 'x264-params',
    'x265-params', 'spatial-aq', 'temporal-aq', 'b_ref_mode', 'multipass', 'rc-lookahead', 'f', 'af', 'vf',
    'filter', 'filter_complex', 'lavfi', 'timecode', 'apad',
]
VALUELESS_FLAGS = [
    'hide_banner', 'nostats', 'xerror', 'benchmark', 'ignore_unknown', 'accurate_seek', 'noaccurate_seek',
    're', 'vn', 'an', 'sn', 'dn', 'shortest', 'copyts', 'start_at_zero',
]
FORBIDDEN_FILTERS = [
    'afir', 'ametadata', 'amovie', 'arnndn', 'asendcmd', 'ass', 'avsynctest', 'azmq', 'cellauto',
    'coreimage', 'coreimagesrc', 'corr', 'cover_rect', 'derain', 'deshake', 'dnn_classify', 'dnn_detect',
    'dnn_processing', 'drawtext', 'fieldhint', 'find_rect', 'frei0r', 'frei0r_src', 'haldclut', 'identity',
    'ladspa', 'lensfun', 'libplacebo', 'libvmaf', 'life', 'lut1d', 'lut3d', 'lv2', 'metadata', 'movie',
    'msad', 'nnedi', 'ocr', 'openclsrc', 'program_opencl', 'psnr', 'qrencode', 'qrencodesrc', 'removelogo',
    'sendcmd', 'signature', 'sofalizer', 'sr', 'ssim', 'ssim360', 'subtitles', 'vidstabdetect',
    'vidstabtransform', 'vmafmotion', 'whisper', 'xpsnr', 'zmq',
]
FILE_OPTION_FILTERS = [
    'curves', 'firequalizer', 'paletteuse', 'selectivecolor', 'showcqt',
]
PATH_OPTIONS = [
    'file', 'filename', 'filenames', 'path', 'model', 'models', 'sofa', 'shader', 'custom_shader_path',
    'db', 'datapath', 'textfile', 'fontfile', 'stats_file', 'log_path', 'log_fmt', 'result', 'input',
    'output', 'dump', 'kernel', 'source', 'commands', 'url', 'dumpfile', 'psfile', 'plot', 'object',
    'cover', 'hint', 'debug_kdtree', 'axisfile', 'fontsdir', 'labels',
]
PROTOCOLS = [
    'file', 'pipe', 'fd', 'concat', 'concatf', 'subfile', 'data', 'crypto', 'cache', 'async', 'tee', 'unix',
    'tcp', 'udp', 'http', 'https', 'httpproxy', 'rtmp', 'rtmps', 'rtmpt', 'rtmpe', 'rtmpts', 'rtp', 'rtsp',
    'srt', 'srtp', 'tls', 'ftp', 'sftp', 'gopher', 'gophers', 'hls', 'icecast', 'mmsh', 'mmst', 'prompeg',
    'sctp', 'smb', 'ipfs', 'ipns', 'rist', 'zmq', 'amqp', 'libssh', 'bluray', 'md5',
]
FORBIDDEN_FORMATS = [
    'concat', 'dash', 'fifo', 'hls', 'image2', 'lavfi', 'null', 'rtp', 'rtp_mpegts', 'rtsp', 'sap',
    'segment', 'smoothstreaming', 'ssegment', 'stream_segment', 'tee', 'webm_chunk', 'webm_dash_manifest',
]
FORBIDDEN_OUTPUT_EXTENSIONS = [
    'avif', 'bmp', 'chk', 'dpx', 'exr', 'hdr', 'im1', 'im24', 'im8', 'j2c', 'j2k', 'jls', 'jp2', 'jpeg',
    'jpg', 'jxl', 'jxs', 'ljpg', 'm3u8', 'mpd', 'pam', 'pbm', 'pcx', 'pfm', 'pgm', 'pgmyuv', 'phm', 'pix',
    'png', 'ppm', 'qoi', 'ras', 'rs', 'sgi', 'sun', 'sunras', 'tga', 'tif', 'tiff', 'vbn', 'wbmp', 'xbm',
    'xface', 'xml', 'xwd', 'y',
]
ENCODER_PARAM_KEYS = [
    '8x8dct', 'alternative-transfer', 'amp', 'analyse', 'annexb', 'aq-mode', 'aq-strength', 'aud',
    'avcintra-class', 'b-adapt', 'b-bias', 'b-intra', 'b-pyramid', 'bff', 'bframe-bias', 'bframes',
    'bitrate', 'bluray-compat', 'cabac', 'cabac-idc', 'cbqpoffs', 'chroma-me', 'chroma-qp-offset',
    'chromaloc', 'cll', 'colormatrix', 'colorprim', 'constrained-intra', 'cplxblur', 'cqm', 'crf',
    'crf-max', 'crop-rect', 'crqpoffs', 'ctu', 'cutree', 'dct-decimate', 'deadzone-inter', 'deadzone-intra',
    'deblock', 'deterministic', 'direct', 'direct-pred', 'early-skip', 'fake-interlaced', 'fast-intra',
    'fast-pskip', 'filler', 'filter', 'force-cfr', 'fps', 'frame-packing', 'frameref', 'fullrange',
    'hdr-opt', 'hdr10', 'hdr10-opt', 'high-tier', 'hrd', 'info', 'interlaced', 'intra-refresh', 'ipratio',
    'keyint', 'level', 'level-idc', 'limit-modes', 'limit-refs', 'limit-tu', 'log', 'log-level',
    'lookahead-slices', 'master-display', 'mastering-display', 'max-cll', 'max-tu-size', 'mbtree', 'me',
    'merange', 'min-cu-size', 'min-keyint', 'mixed-refs', 'mvrange', 'nal-hrd', 'nf', 'nr', 'nr-inter',
    'nr-intra', 'open-gop', 'overscan', 'partitions', 'pbratio', 'pic-struct', 'psnr', 'psy', 'psy-rd',
    'psy-rdoq', 'qblur', 'qcomp', 'qp', 'qpmax', 'qpmin', 'qpstep', 'radl', 'range', 'ratetol',
    'rc-lookahead', 'rd', 'rdoq-level', 'rect', 'ref', 'repeat-headers', 'rskip', 'sao', 'sao-non-deblock',
    'sar', 'scenecut', 'selective-sao', 'signhide', 'slice-max-mbs', 'slice-max-size', 'slice-min-mbs',
    'slices', 'slices-max', 'ssim', 'ssim-rd', 'stitchable', 'strong-intra-smoothing', 'subme',
    'temporal-layers', 'tff', 'transfer', 'trellis', 'tskip', 'tu-inter-depth', 'tu-intra-depth', 'uhd-bd',
    'vbv-bufsize', 'vbv-init', 'vbv-maxrate', 'videoformat', 'weightb', 'weightp', 'wpp',
]


def test_the_copies_match_the_tables():
    # an entry added to policy.py belongs here too; one removed must be removed here on purpose
    assert {f: True for f in VALUE_FLAGS} | {f: False for f in VALUELESS_FLAGS} == policy.ALLOWED_FLAGS
    assert set(FORBIDDEN_FILTERS) == policy.FORBIDDEN_FILTERS
    assert set(FILE_OPTION_FILTERS) == policy.FILE_OPTION_FILTERS
    assert PATH_OPTIONS == tables.PATH_OPTIONS
    assert PROTOCOLS == list(policy._PROTOCOLS)
    assert set(FORBIDDEN_FORMATS) == policy.FORBIDDEN_FORMATS
    assert set(FORBIDDEN_OUTPUT_EXTENSIONS) == policy.FORBIDDEN_OUTPUT_EXTENSIONS
    assert set(ENCODER_PARAM_KEYS) == policy.ENCODER_PARAM_KEYS


@pytest.mark.parametrize("flag", VALUE_FLAGS)
def test_each_flag_that_takes_a_value(flag):
    tables.test_each_flag_that_takes_a_value_passes_with_one_and_consumes_it(flag)


@pytest.mark.parametrize("flag", VALUELESS_FLAGS)
def test_each_valueless_flag(flag):
    tables.test_each_valueless_flag_passes_and_a_bare_word_after_it_is_refused(flag)


@pytest.mark.parametrize("name", FORBIDDEN_FILTERS)
def test_each_forbidden_filter(name):
    tables.test_each_forbidden_filter_is_refused_at_every_position(name)


@pytest.mark.parametrize("name", FILE_OPTION_FILTERS)
def test_each_file_option_filter(name):
    tables.test_each_file_option_filter_takes_only_key_value(name)


@pytest.mark.parametrize("key", PATH_OPTIONS)
def test_each_path_like_filter_option(key):
    tables.test_each_path_like_filter_option_is_refused(key)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_each_protocol(proto):
    tables.test_each_protocol_is_refused_in_every_value(proto)


@pytest.mark.parametrize("muxer", FORBIDDEN_FORMATS)
def test_each_forbidden_format(muxer):
    tables.test_each_forbidden_format_is_refused_alone_and_in_a_list(muxer)


@pytest.mark.parametrize("ext", FORBIDDEN_OUTPUT_EXTENSIONS)
def test_each_forbidden_output_extension(ext):
    tables.test_each_forbidden_output_extension_is_refused(ext)


@pytest.mark.parametrize("key", ENCODER_PARAM_KEYS)
def test_each_encoder_parameter_key(key):
    tables.test_each_encoder_parameter_key_passes(key)


# ---------------------------------------------------------------------------------------------
# Function survivors of scripts/mutation: each refusal names the offending token and the reason.

def refusal(check, text: str) -> tuple[str, str]:
    with pytest.raises(policy.OptionPolicyError) as exc:
        check(text)
    return exc.value.token, exc.value.reason


@pytest.mark.parametrize("options,token,reason", [
    ("'-c:a\x00' flac", "-c:a\x00", "control characters"),
    ("'-c:a\nx' flac", "-c:a\nx", "control characters"),
    ("--", "--", "a bare word"),
    ("-protocol_whitelist file", "-protocol_whitelist", "protocol options are not allowed"),
    ("-protocol_blacklist file", "-protocol_blacklist", "protocol options are not allowed"),
    ("-ar 900000", "900000", "-ar: sample rates above"),
    ("-ar x", "x", "-ar takes a plain whole number"),
    ("-ac 65", "65", "-ac takes 1 to 64"),
    ("-ac x", "x", "-ac takes a plain whole number"),
    ("-ch_layout 65c", "65c", "-ch_layout: more than 64 channels"),
    ("-s 9000x10", "9000x10", "-s: frames above 8192"),
    ("-stream_loop 101", "101", "-stream_loop takes a loop count"),
    ("-metadata file:x", "file:x", "metadata value names a protocol"),
    ("-threads 999", "999", "-threads is capped at the 4 CPUs"),
    ("-threads x", "x", "-threads takes a plain whole number"),
    ("-x264-params qpfile=x", "qpfile", "-x264-params key is not in"),
])
def test_option_refusals_name_their_token_and_flag(options, token, reason, monkeypatch):
    monkeypatch.setenv("FFLEET_TARGET_CPUS", "4")
    got_token, got_reason = refusal(policy.parse_options, options)
    assert got_token == token and got_reason.startswith(reason), (got_token, got_reason)


@pytest.mark.parametrize("graph,token,reason", [
    ("anull=foo://x", "foo://x", "filter arguments must not name a protocol"),
    ("anull=mode=foo://x", "mode=foo://x", "filter arguments must not name a protocol"),
    ("curves=somefile", "curves=somefile", "this filter has an option that names a file"),
    ("sws_flags=bicubic", "sws_flags=bicubic", "sws_flags= must end with ';'"),
    ("anull[a]X", "X", "cannot be read as a filter graph"),
    ("[a", "[a", "a '[' link label is not closed"),
    ("an ull", "an ull", "not a filter name"),
    ("aresample=900000", "900000", "aresample=900000: sample rates above"),
    ("aresample=sample_rate=900000", "900000", "aresample=sample_rate: sample rates above"),
    ("pan=65c", "65c", "pan=65c: more than 64 channels"),
    ("scale=9000:1", "scale=9000", "frames above 8192"),
    ("scale=s=9000x10", "9000x10", "scale=s: frames above 8192"),
    ("anull=/file=x", "anull=/file", "filter options read from a file"),
    ("anull=file=x", "anull=file", "filter options that name a file"),
])
def test_filter_refusals_name_their_token_and_option(graph, token, reason):
    got_token, got_reason = refusal(policy.check_filtergraph, graph)
    assert got_token == token and got_reason.startswith(reason), (got_token, got_reason)


def test_sws_flags_hide_nothing_after_their_first_semicolon():
    # the scaler flags end at the first ';': a forbidden filter after it is still read
    with pytest.raises(policy.OptionPolicyError, match="reads or writes files"):
        policy.check_filtergraph("sws_flags=bicubic;amovie=x;anull")
    policy.check_filtergraph("sws_flags=bicubic;anull;volume=0.5")


def test_link_labels_may_hold_any_letter():
    policy.check_filtergraph("[inX]anull[outX];[MIX]volume=0.5")


def test_filter_names_as_ffmpeg_reads_them():
    # doctor lists the filters a request uses: without instance names, labels or padding
    assert list(policy.filter_names("[in]anull@a, volume@b@c=1[out];[x] aresample=8000")) == [
        "anull", "volume", "aresample"]
    assert list(policy.filter_names("")) == []


@pytest.mark.parametrize("target,expected", [("1", 1), ("16", 16)])
def test_target_cpus_name_the_machine(target, expected, monkeypatch):
    monkeypatch.setenv("FFLEET_TARGET_CPUS", target)
    assert policy.usable_cpus() == expected


@pytest.mark.parametrize("target", ["0", "", "-2", "two"])
def test_target_cpus_that_name_no_machine_are_ignored(target, monkeypatch):
    from ffleet import cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 3)
    monkeypatch.setenv("FFLEET_TARGET_CPUS", target)
    assert policy.usable_cpus() == 3


def test_a_refused_extension_says_what_to_choose():
    assert "choose a single-file format" in policy.refused_output_extension("a.m3u8")
