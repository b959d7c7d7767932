"""FFmpeg option policy: only allowlisted flags pass, and only ffleet names inputs and outputs."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

from ffleet import shellwords


class OptionPolicyError(ValueError):
    """A user option string that ffleet refuses to hand to FFmpeg."""

    def __init__(self, token: str, reason: str):
        self.token = token
        self.reason = reason
        super().__init__(f"{token!r} is not allowed: {reason}")


# Flag name (without stream specifier) -> whether it takes a value.
# An allowlist, not a denylist: anything not here is refused, because FFmpeg has many options that
# read or write files (-vstats_file, -passlogfile, -dump_attachment, -attach, -report, -progress,
# -sdp_file, -filter_script, -fpre ...) and new ones appear with each release.
# The arity is FFmpeg's, not a guess: tests/test_policy_ffmpeg.py asks the command-line parser of
# every FFmpeg build present whether each flag consumes the next token, and fails on any
# disagreement (-apad was once marked valueless, so its value's neighbour became an extra output).
# A flag that a build lacks makes that build refuse the whole command line, so it needs no entry.
ALLOWED_FLAGS: dict[str, bool] = {
    # global
    "loglevel": True, "v": True, "hide_banner": False, "threads": True, "filter_threads": True,
    "filter_complex_threads": True, "nostats": False, "xerror": False, "max_error_rate": True,
    "benchmark": False, "stats_period": True,
    # input
    "ss": True, "sseof": True, "t": True, "to": True, "itsoffset": True, "analyzeduration": True,
    "probesize": True, "fflags": True, "err_detect": True, "guess_layout_max": True, "drc_scale": True,
    "hwaccel": True, "hwaccel_output_format": True, "ignore_unknown": False, "accurate_seek": False,
    "noaccurate_seek": False, "stream_loop": True, "re": False, "readrate": True,
    # streams and codecs
    "c": True, "codec": True, "acodec": True, "vcodec": True, "scodec": True, "map": True,
    "map_metadata": True, "map_chapters": True, "vn": False, "an": False, "sn": False, "dn": False,
    "b": True, "ab": True, "ac": True, "ar": True, "sample_fmt": True, "channel_layout": True,
    "ch_layout": True, "aq": True, "q": True, "qscale": True, "compression_level": True,
    "frame_size": True, "application": True, "vbr": True, "cutoff": True, "apply_phase_inv": True,
    "frame_duration": True, "write_xing": True, "id3v2_version": True, "reservoir": True,
    "joint_stereo": True, "lpc_type": True, "profile": True, "level": True, "preset": True,
    "tune": True, "crf": True, "cq": True, "qp": True, "rc": True, "pix_fmt": True, "r": True,
    "s": True, "aspect": True, "g": True, "bf": True, "maxrate": True, "minrate": True,
    "bufsize": True, "fps_mode": True, "vsync": True, "async": True, "frames": True, "vframes": True,
    "aframes": True, "disposition": True, "strict": True, "tag": True, "vtag": True, "atag": True,
    "bsf": True, "metadata": True, "movflags": True, "shortest": False, "copyts": False,
    "start_at_zero": False, "avoid_negative_ts": True, "max_muxing_queue_size": True,
    "global_quality": True, "x264-params": True, "x265-params": True, "spatial-aq": True,
    "temporal-aq": True, "b_ref_mode": True, "multipass": True, "rc-lookahead": True,
    "f": True, "af": True, "vf": True, "filter": True, "filter_complex": True, "lavfi": True,
    "timecode": True, "apad": True,
}

FILTER_FLAGS = {"af", "vf", "filter", "filter_complex", "lavfi"}

# Filters that open files, sockets, plugins or models by name, or write side files.
FORBIDDEN_FILTERS = {
    "movie", "amovie", "sendcmd", "asendcmd", "zmq", "azmq", "ladspa", "lv2", "frei0r", "frei0r_src",
    "subtitles", "ass", "drawtext", "lut3d", "lut1d", "haldclut", "sofalizer", "arnndn", "dnn_processing",
    "dnn_classify", "dnn_detect", "sr", "derain", "libvmaf", "psnr", "ssim", "vidstabdetect",
    "vidstabtransform", "signature", "metadata", "ametadata", "ocr", "lensfun", "libplacebo",
    "program_opencl", "openclsrc", "coreimage", "coreimagesrc", "deshake", "qrencode", "qrencodesrc",
    "avsynctest", "afir", "whisper", "vmafmotion", "identity", "msad", "corr", "xpsnr",
    # their first option (so a bare positional value) or their alias 'f' names a file
    "removelogo", "cover_rect", "find_rect", "nnedi", "cellauto", "life", "fieldhint", "ssim360",
}
# Allowed filters that still have an option naming a file: their arguments must be key=value, since
# a positional value could land on that option (FFmpeg assigns positional values in option order).
FILE_OPTION_FILTERS = {"curves", "selectivecolor", "firequalizer", "paletteuse", "showcqt"}
# Filter option names that take a path, wherever they appear.
_PATH_OPTION = re.compile(
    r"^(file|filename|filenames|path|model|models|sofa|shader|custom_shader_path|db|datapath|textfile|"
    r"fontfile|stats_file|log_path|log_fmt|result|input|output|dump|kernel|source|commands|url|"
    r"dumpfile|psfile|plot|object|cover|hint|debug_kdtree|axisfile|fontsdir|labels)$",  # not "weights": amix uses it
    re.I,
)

# Muxers that write files other than the one ffleet names, or to other protocols.
FORBIDDEN_FORMATS = {
    "tee", "segment", "ssegment", "stream_segment", "hls", "dash", "image2", "fifo", "rtp", "rtsp",
    "rtp_mpegts", "sap", "smoothstreaming", "webm_chunk", "webm_dash_manifest", "null", "lavfi",
    "concat",  # the concat demuxer opens the files its input lists
}
_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$")

# FFmpeg picks the output muxer from the output name's extension (case-insensitively), so these
# extensions choose a forbidden muxer as surely as -f does: the "Common extensions" that FFmpeg's
# `-h muxer=NAME` lists for hls, dash, webm_chunk, webm_dash_manifest and image2 (one file per
# frame, or a %d pattern). tests/test_policy_ffmpeg.py re-reads them from every build present.
FORBIDDEN_OUTPUT_EXTENSIONS = {
    "m3u8", "mpd", "chk", "xml",
    "bmp", "dpx", "exr", "jls", "jpeg", "jpg", "jxl", "jxs", "ljpg", "pam", "pbm", "pcx", "pfm", "pgm",
    "pgmyuv", "phm", "png", "ppm", "sgi", "tga", "tif", "tiff", "jp2", "j2c", "j2k", "xwd", "sun", "ras",
    "rs", "im1", "im8", "im24", "sunras", "vbn", "xbm", "xface", "pix", "y", "avif", "qoi", "hdr", "wbmp",
}

# Names of FFmpeg protocols that a value could smuggle in as "proto:..." (the '://' forms are
# caught separately). "pipe:" and "fd:" would talk to ffleet's own standard streams.
_PROTOCOLS = (
    "file", "pipe", "fd", "concat", "concatf", "subfile", "data", "crypto", "cache", "async", "tee",
    "unix", "tcp", "udp", "http", "https", "httpproxy", "rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpts",
    "rtp", "rtsp", "srt", "srtp", "tls", "ftp", "sftp", "gopher", "gophers", "hls", "icecast", "mmsh",
    "mmst", "prompeg", "sctp", "smb", "ipfs", "ipns", "rist", "zmq", "amqp", "libssh", "bluray", "md5",
)
# "proto,,opt,val,,:" is FFmpeg's syntax for protocol options in a URL (e.g. subfile,,start,0,,:path)
_PROTOCOL_PATTERN = re.compile(r"(?:^|[^A-Za-z0-9_])(" + "|".join(_PROTOCOLS) + r")(?::|,,)", re.I)

# Keys of -x264-params / -x265-params that may pass, after x264's and x265's own normalisation
# ('_' read as '-', a "no"/"no-" prefix negating a boolean). An allowlist, not a denylist: each
# release adds keys, and many read or write files (stats, pass, qpfile, cqmfile, dump-yuv,
# opencl-clbin, analysis-save/-load, csv, recon, zonefile, lambda-file, scaling-list,
# dolby-vision-rpu ...). Thread and pool counts are left out too: -threads is capped instead.
ENCODER_PARAM_KEYS = frozenset({
    # rate control
    "crf", "crf-max", "qp", "bitrate", "vbv-maxrate", "vbv-bufsize", "vbv-init", "qpmin", "qpmax", "qpstep",
    "ratetol", "ipratio", "pbratio", "qcomp", "qblur", "cplxblur", "cbqpoffs", "crqpoffs", "chroma-qp-offset",
    "aq-mode", "aq-strength", "mbtree", "cutree", "rc-lookahead", "lookahead-slices", "nr", "nr-intra", "nr-inter",
    # frame types and references
    "keyint", "min-keyint", "scenecut", "intra-refresh", "open-gop", "radl", "bframes", "b-adapt", "b-bias",
    "bframe-bias", "b-pyramid", "b-intra", "ref", "frameref", "weightb", "weightp", "direct", "direct-pred",
    "mixed-refs", "limit-refs", "temporal-layers",
    # analysis
    "partitions", "analyse", "8x8dct", "me", "merange", "mvrange", "subme", "psy", "psy-rd", "psy-rdoq",
    "rdoq-level", "rd", "trellis", "fast-pskip", "dct-decimate", "deadzone-inter", "deadzone-intra", "chroma-me",
    "ctu", "min-cu-size", "max-tu-size", "tu-intra-depth", "tu-inter-depth", "limit-modes", "limit-tu", "rect",
    "amp", "early-skip", "rskip", "fast-intra", "tskip", "signhide", "ssim-rd", "strong-intra-smoothing",
    "constrained-intra", "deblock", "nf", "filter", "sao", "sao-non-deblock", "selective-sao", "wpp", "cqm",
    # bitstream and signalling
    "cabac", "cabac-idc", "slices", "slice-max-size", "slice-max-mbs", "slice-min-mbs", "slices-max",
    "interlaced", "tff", "bff", "fake-interlaced", "pic-struct", "frame-packing", "level", "level-idc",
    "high-tier", "aud", "repeat-headers", "annexb", "hrd", "nal-hrd", "filler", "info", "force-cfr",
    "bluray-compat", "uhd-bd", "avcintra-class", "stitchable", "deterministic", "fps", "sar", "overscan",
    "videoformat", "fullrange", "range", "colorprim", "transfer", "colormatrix", "chromaloc",
    "alternative-transfer", "mastering-display", "master-display", "cll", "max-cll", "hdr10", "hdr10-opt",
    "hdr-opt", "crop-rect", "log", "log-level", "psnr", "ssim",
})

# Resource caps. A thread count above the usable CPUs only adds contention (ffleet already runs one
# FFmpeg per CPU), and a huge one exhausts memory and the process table. 384 kHz is the highest
# sample rate in use (DXD and studio converters); 64 channels is the most FFmpeg's native channel
# masks hold and 7th-order ambisonics needs. 8192 pixels a side covers DCI 8K (8192x4320); an
# 8192x8192 frame already takes 256 MiB in 32-bit RGBA. A looped input multiplies the work: an
# endless loop (-1) only ends at the timeout, so the loop count is capped too.
THREAD_FLAGS = ("threads", "filter_threads", "filter_complex_threads")
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
MAX_FRAME_SIDE = 8192
MAX_STREAM_LOOP = 100
# What a filter option holds, by name, and by position for a value given without a name (FFmpeg
# fills a filter's options in declaration order): a sample rate (or a '|' list of them), a channel
# layout (or a list), or a frame side in pixels (checked when a plain number).
_OPTION_KINDS = {
    "sample_rate": "rate", "sample_rates": "rate", "out_sample_rate": "rate", "osr": "rate",
    "in_sample_rate": "rate", "isr": "rate",
    "channel_layout": "layout", "channel_layouts": "layout", "cl": "layout", "ch_layout": "layout",
    "out_channel_layout": "layout", "ocl": "layout", "ochl": "layout",
    "w": "side", "h": "side", "width": "side", "height": "side",
}
_POSITIONAL_KINDS = {
    ("aresample", 0): "rate", ("asetrate", 0): "rate", ("aformat", 1): "rate", ("aformat", 2): "layout",
    ("pan", 0): "layout",
    **{(scaler, i): "side" for scaler in ("scale", "pad", "scale_cuda", "scale_npp", "scale_vaapi", "scale_qsv")
       for i in (0, 1)},
}

_WHITESPACE = " \n\t\r"


def usable_cpus() -> int:
    """The CPUs of the machine that will run FFmpeg: this one, unless FFLEET_TARGET_CPUS names them.

    The start Lambda validates requests for Batch jobs with more CPUs than the Lambda has: it sets
    FFLEET_TARGET_CPUS to the stack's job vCPUs (the worker checks the request again on its host).
    """
    target = os.environ.get("FFLEET_TARGET_CPUS", "")
    if target.isdigit() and int(target) > 0:
        return int(target)
    from ffleet.cpus import usable_cpus as count  # a leaf module: policy stays at the bottom of the imports

    return count()


def _flag_base(token: str) -> str:
    """'-c:a' -> 'c', '-b:a:0' -> 'b', '-filter:a' -> 'filter'."""
    return token[1:].split(":", 1)[0]


def option_pairs(tokens: list[str]) -> Iterator[tuple[str, str | None]]:
    """(flag, value) for each option in tokens; value is None for a flag that takes none (or lacks it).

    Walks options the way FFmpeg reads them, so a value is never taken for a flag.
    """
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        takes_value = ALLOWED_FLAGS.get(_flag_base(flag), False) and i + 1 < len(tokens)
        yield flag, tokens[i + 1] if takes_value else None
        i += 2 if takes_value else 1


def _av_get_token(text: str, pos: int, seps: str) -> tuple[str, int]:
    """FFmpeg's av_get_token: from pos up to an unquoted, unescaped separator, with leading and
    unescaped trailing whitespace dropped, '\\x' read as x and '...' as its literal content."""
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    out: list[str] = []
    keep = 0  # out[:keep] is escaped or quoted text: never trimmed
    while pos < len(text) and text[pos] not in seps:
        ch = text[pos]
        pos += 1
        if ch == "\\" and pos < len(text):
            out.append(text[pos])
            pos += 1
            keep = len(out)
        elif ch == "'":
            end = text.find("'", pos)
            out.extend(text[pos:] if end < 0 else text[pos:end])
            if end >= 0:
                pos = end + 1
                keep = len(out)
            else:
                pos = len(text)
        else:
            out.append(ch)
    while len(out) > keep and out[-1] in _WHITESPACE:
        out.pop()
    return "".join(out), pos


def _whole_number(where: str, value: str, kilo: bool = False) -> int:
    """A plain whole number ('48000', or with kilo '44.1k'). FFmpeg would also evaluate expressions
    and SI forms ('1e9', '1G'): those are refused rather than second-guessed."""
    text = value.strip()
    m = re.fullmatch(r"(\d{1,6}(?:\.\d{1,3})?)k", text) if kilo else None
    if m:
        return round(float(m.group(1)) * 1000)
    if not re.fullmatch(r"\d{1,9}", text):
        raise OptionPolicyError(value, f"{where} takes a plain whole number")
    return int(text)


def _check_threads(flag: str, value: str) -> None:
    if value.strip() == "auto" and _flag_base(flag) == "threads":
        return
    cap = usable_cpus()
    if _whole_number(flag, value) > cap:
        raise OptionPolicyError(value, f"{flag} is capped at the {cap} CPUs this machine may use")


def _check_sample_rates(where: str, value: str) -> None:
    """One sample rate, or a '|' list of them (aformat's sample_rates)."""
    for rate in value.split("|"):
        if _whole_number(where, rate, kilo=True) > MAX_SAMPLE_RATE:
            raise OptionPolicyError(value, f"{where}: sample rates above {MAX_SAMPLE_RATE} Hz are not allowed")


def _layout_channels(layout: str) -> int:
    """The channels a layout names, where its text gives a count: '65c' or 'ambisonic 9'."""
    count = 0
    for m in re.finditer(r"(\d+)\s*c\b|ambisonic\s*(\d+)", layout, re.I):
        count = max(count, int(m.group(1)) if m.group(1) else (int(m.group(2)) + 1) ** 2)
    return count


def _check_layouts(where: str, value: str) -> None:
    if _layout_channels(value) > MAX_CHANNELS:
        raise OptionPolicyError(value, f"{where}: more than {MAX_CHANNELS} channels are not allowed")


def _check_frame_sizes(where: str, value: str) -> None:
    for w, h in re.findall(r"(\d+)\s*x\s*(\d+)", value):
        if max(int(w), int(h)) > MAX_FRAME_SIDE:
            raise OptionPolicyError(value, f"{where}: frames above {MAX_FRAME_SIDE} pixels a side are not allowed")


def _check_encoder_params(flag: str, value: str) -> None:
    """-x264-params/-x265-params, split as FFmpeg's av_dict_parse_string does ('key=value:...')."""
    if "/" in value:
        raise OptionPolicyError(value, f"{flag} parameters that read or write files are not allowed")
    pos = 0
    while pos < len(value):
        key, pos = _av_get_token(value, pos, "=")
        pos += 1  # the '='
        _, pos = _av_get_token(value, pos, ":")
        pos += 1  # the ':'
        name = key.lower().replace("_", "-")
        negated = re.sub(r"^no-?", "", name)
        if name not in ENCODER_PARAM_KEYS and negated not in ENCODER_PARAM_KEYS:
            raise OptionPolicyError(
                key, f"{flag} key is not in ffleet's list of encoder parameters (keys that read or write "
                     "files, and thread counts, are refused; see the README: Option policy)"
            )


def _check_value(flag: str, base: str, value: str) -> None:
    if "://" in value:
        raise OptionPolicyError(value, f"value of {flag} names a protocol URL; only ffleet names inputs and outputs")
    if base in FILTER_FLAGS:
        check_filtergraph(value)
        return
    if base == "apad":  # FFmpeg inserts "apad=<value>" into the output's filter graph
        _check_filter("apad", value)
        return
    if _PROTOCOL_PATTERN.search(value) and base not in ("metadata",):
        raise OptionPolicyError(value, f"value of {flag} names an FFmpeg protocol")
    if base == "f":
        if not _FORMAT_NAME.match(value):
            raise OptionPolicyError(value, "-f takes a format name")
        if any(v.lower() in FORBIDDEN_FORMATS for v in value.split(",")):
            raise OptionPolicyError(value, "this format writes or reads files ffleet did not name")
    if base in ("x264-params", "x265-params"):
        _check_encoder_params(flag, value)
    if base == "metadata" and value.lower().startswith(("file:", "pipe:")):
        raise OptionPolicyError(value, "metadata value names a protocol")
    if base in THREAD_FLAGS:
        _check_threads(flag, value)
    if base == "ar":
        _check_sample_rates(flag, value)
    if base == "ac" and not 1 <= _whole_number(flag, value) <= MAX_CHANNELS:
        raise OptionPolicyError(value, f"{flag} takes 1 to {MAX_CHANNELS} channels")
    if base in ("ch_layout", "channel_layout"):
        _check_layouts(flag, value)
    if base == "s":
        _check_frame_sizes(flag, value)
    if base == "stream_loop" and not (re.fullmatch(r"\d{1,3}", value.strip()) and int(value) <= MAX_STREAM_LOOP):
        raise OptionPolicyError(value, f"{flag} takes a loop count from 0 to {MAX_STREAM_LOOP} (an endless loop, -1, is refused)")


def parse_options(text: str) -> list[str]:
    """Tokenise a user option string with shlex and enforce the allowlist. Returns the argv tokens."""
    if text is None:
        return []
    try:
        tokens = shellwords.split(text)  # shlex.split's words, in linear time
    except ValueError as exc:
        raise OptionPolicyError(text, f"cannot be split into arguments ({exc})") from None
    # unknown flags are refused before option_pairs would need to know whether they take a value
    for token, value in option_pairs(tokens):
        if not token.startswith("-") or token in ("-", "--"):
            raise OptionPolicyError(
                token, "a bare word would be read by FFmpeg as an extra input or output file"
            )
        if "\x00" in token or "\n" in token:
            raise OptionPolicyError(token, "control characters are not allowed")
        base = _flag_base(token)
        if base == "i":
            raise OptionPolicyError(token, "only ffleet names the input (-i)")
        if base == "protocol_whitelist" or base == "protocol_blacklist":
            raise OptionPolicyError(token, "protocol options are not allowed; ffleet reads only local files")
        if base not in ALLOWED_FLAGS:
            raise OptionPolicyError(token, "not in ffleet's option allowlist (see the README: Option policy)")
        if ALLOWED_FLAGS[base]:
            if value is None:
                raise OptionPolicyError(token, "expects a value")
            _check_value(token, base, value)
    return tokens


def filter_names(graph: str) -> Iterator[str]:
    """The name of each filter in a graph (without its @instance), as FFmpeg's parser reads it."""
    for name, _ in _filter_specs(graph):
        if name:
            yield name.split("@", 1)[0].strip()


def _filter_specs(graph: str) -> Iterator[tuple[str, str | None]]:
    """(filter name, its argument string or None) for each filter of a graph, parsed as FFmpeg's
    graph parser does: [labels] name[@id][=args] [labels], joined by ',' or ';'."""
    pos = 0
    rest = graph.lstrip(_WHITESPACE)
    if rest.startswith("sws_flags="):  # a graph-level scaler flag list, up to the first ';'
        end = rest.find(";")
        if end < 0:
            raise OptionPolicyError(graph, "sws_flags= must end with ';'")
        pos = len(graph) - len(rest) + end + 1
    while True:
        pos = _skip_labels(graph, pos)
        name, pos = _av_get_token(graph, pos, "=,;[")
        args = None
        if pos < len(graph) and graph[pos] == "=":
            args, pos = _av_get_token(graph, pos + 1, "[],;")
        yield name, args
        pos = _skip_labels(graph, pos)
        while pos < len(graph) and graph[pos] in _WHITESPACE:
            pos += 1
        if pos >= len(graph):
            return
        if graph[pos] not in ",;":
            raise OptionPolicyError(graph[pos:], "cannot be read as a filter graph")
        pos += 1


def _skip_labels(graph: str, pos: int) -> int:
    while True:
        while pos < len(graph) and graph[pos] in _WHITESPACE:
            pos += 1
        if pos >= len(graph) or graph[pos] != "[":
            return pos
        _, pos = _av_get_token(graph, pos + 1, "]")
        if pos >= len(graph):
            raise OptionPolicyError(graph, "a '[' link label is not closed")
        pos += 1


_FILTER_KEY = re.compile(r"[ \n\t\r]*([A-Za-z0-9_./-]+)[ \n\t\r]*=")


def _filter_args(args: str) -> Iterator[tuple[str | None, str]]:
    """(key or None for a positional value, value) for each option, read as FFmpeg's
    av_opt_get_key_value reads them: a key is [A-Za-z0-9_./-]+ followed by '='."""
    pos = 0
    while pos < len(args):
        m = _FILTER_KEY.match(args, pos)
        key = m.group(1) if m else None
        value, pos = _av_get_token(args, m.end() if m else pos, ":")
        yield key, value
        pos += 1  # the ':'


def check_filtergraph(graph: str) -> None:
    """Refuse filters that touch files, filter options that name a path or load a file, and sizes
    that exhaust memory."""
    for name, args in _filter_specs(graph):
        _check_filter(name, args)


def _check_filter(spec_name: str, args: str | None) -> None:
    name = spec_name.split("@", 1)[0].lower()
    if not re.match(r"^[a-z0-9_]+$", name):
        raise OptionPolicyError(spec_name, "not a filter name")
    if name in FORBIDDEN_FILTERS:
        raise OptionPolicyError(name, "this filter reads or writes files or loads code")
    if args is None:
        return
    if "://" in args or _PROTOCOL_PATTERN.search(args):
        raise OptionPolicyError(args, "filter arguments must not name a protocol")
    for position, (key, value) in enumerate(_filter_args(args)):
        where = f"{name}={key}" if key else f"{name}={value}"
        if (key and "/" in key) or (key is None and _FILTER_KEY.match(value) and "/" in _FILTER_KEY.match(value).group(1)):
            # FFmpeg 6+: "/option=PATH" sets the option to the contents of the file PATH (a value
            # that reads so after one more unescaping is refused too: another parser may unescape it)
            raise OptionPolicyError(where, "filter options read from a file ('/option=') are not allowed")
        if key and _PATH_OPTION.match(key):
            raise OptionPolicyError(where, "filter options that name a file are not allowed")
        if name in FILE_OPTION_FILTERS and key is None and value.strip():
            raise OptionPolicyError(where, "this filter has an option that names a file: give its options as key=value")
        if "://" in value or _PROTOCOL_PATTERN.search(value):
            raise OptionPolicyError(where, "filter arguments must not name a protocol")
        kind = _OPTION_KINDS.get(key.lower()) if key else _POSITIONAL_KINDS.get((name, position))
        if kind == "rate":
            _check_sample_rates(where, value)
        if kind == "layout":
            _check_layouts(where, value)
        if kind == "side" and re.fullmatch(r"\d+", value.strip()) and int(value) > MAX_FRAME_SIDE:
            raise OptionPolicyError(where, f"frames above {MAX_FRAME_SIDE} pixels a side are not allowed")
        _check_frame_sizes(where, value)


def refused_output_extension(name: str) -> str | None:
    """Why an output named `name` is refused (FFmpeg would pick a muxer that writes other files), or None."""
    ext = name.rsplit(".", 1)[1].lower() if "." in name else ""
    if ext in FORBIDDEN_OUTPUT_EXTENSIONS:
        return (f"'.{ext}' makes FFmpeg pick a muxer that writes playlists, segments or one file per frame "
                "(as -f hls/dash/image2 would); choose a single-file format")
    return None
