"""FFmpeg option policy: only allowlisted flags pass, and only ffleet names inputs and outputs."""
from __future__ import annotations

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
    "timecode": True, "apad": False,
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

# Keys of -x264-params / -x265-params that read or write files.
_ENCODER_PARAM_FILE_KEYS = re.compile(
    r"(^|:)(stats|qpfile|csv|dump-yuv|analysis-save|analysis-load|recon|zonefile|lambda-file|"
    r"scaling-list|dolby-vision-rpu|tune-file|csv-log-level)=",
    re.I,
)


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


def _check_value(flag: str, base: str, value: str) -> None:
    if "://" in value:
        raise OptionPolicyError(value, f"value of {flag} names a protocol URL; only ffleet names inputs and outputs")
    if base in FILTER_FLAGS:
        check_filtergraph(value)
        return
    if _PROTOCOL_PATTERN.search(value) and base not in ("metadata",):
        raise OptionPolicyError(value, f"value of {flag} names an FFmpeg protocol")
    if base == "f":
        if not _FORMAT_NAME.match(value):
            raise OptionPolicyError(value, "-f takes a format name")
        if any(v.lower() in FORBIDDEN_FORMATS for v in value.split(",")):
            raise OptionPolicyError(value, "this format writes or reads files ffleet did not name")
    if base in ("x264-params", "x265-params") and (_ENCODER_PARAM_FILE_KEYS.search(value) or "/" in value):
        raise OptionPolicyError(value, f"{flag} parameters that read or write files are not allowed")
    if base == "metadata" and value.lower().startswith(("file:", "pipe:")):
        raise OptionPolicyError(value, "metadata value names a protocol")


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


def _split_top(text: str, seps: str) -> list[str]:
    """Split like FFmpeg's av_get_token: backslash escapes, single quotes group, returns unescaped parts."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in seps:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def check_filtergraph(graph: str) -> None:
    """Refuse filters that touch files, and filter options that name a path."""
    for spec in _split_top(graph, ",;"):
        # drop link labels ('[' excluded inside, or an unclosed '[[[...' takes quadratic time)
        spec = re.sub(r"\[[^\]\[]*\]", "", spec).strip()
        if not spec:
            continue
        name, _, args = spec.partition("=")
        name = name.strip().split("@", 1)[0].lower()
        if not re.match(r"^[a-z0-9_]+$", name):
            raise OptionPolicyError(spec, "not a filter name")
        if name in FORBIDDEN_FILTERS:
            raise OptionPolicyError(name, "this filter reads or writes files or loads code")
        if "://" in args or _PROTOCOL_PATTERN.search(args):
            raise OptionPolicyError(spec, "filter arguments must not name a protocol")
        for arg in _split_top(args, ":"):
            key, eq, _ = arg.partition("=")
            if eq and _PATH_OPTION.match(key.strip()):
                raise OptionPolicyError(f"{name}={key}", "filter options that name a file are not allowed")
            if name in FILE_OPTION_FILTERS and arg.strip() and not (eq and re.match(r"^[A-Za-z0-9_-]+$", key.strip())):
                raise OptionPolicyError(f"{name}={arg}", "this filter has an option that names a file: give its options as key=value")
