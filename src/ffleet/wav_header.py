"""Read a plain PCM WAV's streams and duration from its header, in Python, as libav would report them."""
from __future__ import annotations

import os
import struct

# Why: a WAV's header is all libav reads of it (the samples are raw PCM, which no decoder checks),
# and in Python those bytes cannot corrupt memory the way a C parser's can. So an output in the
# common training format is read back here, in ffleet's process, for about 0.05 ms of CPU, with no
# verifier to start (140-160 ms per batch) nor to ask (about 1 ms per file with its pipe;
# bench/verify_cost.py). Only a header with nothing unusual is read here: any other chunk layout,
# format, size or count goes to libav (the verifier), whose verdict and message stand as before,
# and tests/test_wav_header.py holds the answers equal to libav's for what FFmpeg writes.

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
# WAVE_FORMAT_EXTENSIBLE's sub-format GUID: the format tag in its first two bytes, then this
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
# (format, bits per sample) -> the codec libav names
_CODECS = {(_PCM, 8): "pcm_u8", (_PCM, 16): "pcm_s16le", (_PCM, 24): "pcm_s24le", (_PCM, 32): "pcm_s32le",
           (_FLOAT, 32): "pcm_f32le", (_FLOAT, 64): "pcm_f64le"}
_HEAD_BYTES = 64 * 1024  # chunks before the samples beyond this (a large LIST, say): libav's turn
_MAX_CHANNELS = 64


def read(path: str | os.PathLike, format_whitelist: str) -> dict | None:
    """What libav would say of the file at path (ffleet.verify.MediaInfo's fields), if it is a plain
    PCM WAV; None otherwise (another format, anything unusual in the header, a short or empty file):
    then libav reads it."""
    if "wav" not in format_whitelist.split(","):
        return None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    return _parse(head, size)


def _parse(head: bytes, size: int) -> dict | None:
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    if struct.unpack_from("<I", head, 4)[0] + 8 != size:  # the RIFF size FFmpeg writes at the end
        return None
    fmt = None
    offset = 12
    while offset + 8 <= len(head):
        chunk_id, chunk_size = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            if fmt is not None or body + chunk_size > len(head):
                return None
            fmt = _format(head[body:body + chunk_size])
            if fmt is None:
                return None
        elif chunk_id == b"data":
            if fmt is None:
                return None
            return _info(fmt, chunk_size, body, size)
        elif chunk_id in (b"ds64", b"fact"):  # RF64's sizes, or a compressed format's sample count
            return None
        offset = body + chunk_size + (chunk_size & 1)  # chunks are padded to an even length
    return None


def _format(body: bytes) -> tuple[str, int, int, int] | None:
    """(codec, channels, sample rate, block align) of a 'fmt ' chunk ffleet reads here, else None."""
    if len(body) not in (16, 18, 40):
        return None
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) != 40:
            return None
        extra, valid_bits, _mask = struct.unpack_from("<HHI", body, 16)
        guid = body[24:40]
        if extra != 22 or valid_bits != bits or guid[2:] != _GUID_TAIL:
            return None
        tag = struct.unpack_from("<H", guid)[0]
    elif len(body) == 18 and struct.unpack_from("<H", body, 16)[0] != 0:
        return None
    codec = _CODECS.get((tag, bits))
    if codec is None or not 1 <= channels <= _MAX_CHANNELS or rate <= 0:
        return None
    if block_align != channels * bits // 8 or byte_rate != rate * block_align:
        return None
    return codec, channels, rate, block_align


def _info(fmt: tuple[str, int, int, int], data_size: int, data_offset: int, size: int) -> dict | None:
    codec, channels, rate, block_align = fmt
    # no samples (a header-only file), a partial sample, or samples past the end: libav's verdict
    if data_size == 0 or data_size % block_align or data_offset + data_size > size:
        return None
    samples = data_size // block_align
    # libav's duration: the stream's, in microseconds, rounded to the nearest (av_rescale_q)
    microseconds = (samples * 1_000_000 + rate // 2) // rate
    return {"stream_types": ["audio"], "duration": microseconds / 1_000_000, "codec": codec,
            "sample_rate": rate, "channels": channels, "format_name": "wav"}
