"""The job request: the original FFmpeg-on-Batch format, plus ffleet's optional additions."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ffleet.policy import parse_options, refused_output_extension

# No pydantic here: importing it and building the models took 100-150 ms, most of the budget of
# `ffleet run` to its first FFmpeg (issue 15). The fields below keep pydantic's lax-mode coercions
# and messages, which requests and their users already rely on.

COMPUTE_TYPES = ("intel", "amd", "arm", "nvidia", "fargate", "fargate-arm")
MEASURE_AT = ("output", "source")

# Batch best practice is jobs of 3-5 minutes. A typical 30-60 s clip takes ~0.2 s of CPU to
# transcode, so a 4-vCPU job of 1000 files lasts a few minutes including fetch and upload.
# `ffleet plan` computes a value from measured per-file cost; this default is the fallback.
DEFAULT_FILES_PER_JOB = 1000
DEFAULT_TIMEOUT_SECONDS_PER_FILE = 600

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
# Step Functions' limit on an execution's input, which carries the request: a larger request could
# never run in the cloud, and refusing it bounds what validation has to read.
MAX_REQUEST_BYTES = 256 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXTENSION_PATTERN = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]{0,15}$")
_UNKNOWN_FIELD = "unknown field (check the spelling; see the README's request reference)"
# A spec's own check names the field it refuses at the start of its message: "quality.min_lufs: ..."
_FIELD_PREFIX = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)


class RequestError(ValueError):
    """An invalid request. `problems` is a list of (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))

    def to_dict(self) -> dict[str, Any]:
        return {"valid": False, "errors": [{"field": f, "message": m} for f, m in self.problems]}


# --- reading JSON values as pydantic's lax mode does -------------------------------------------------
# Each reader returns the value or raises ValueError with pydantic's message. Numbers in strings are
# read by pydantic-core's rules (Rust's whitespace and float syntax, "_" between digits, "10.0" as
# an integer), not by Python's int() and float(), which accept more (other digits, other spaces).

_RUST_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_INT_TEXT = re.compile(r"(?:\+|(-))?(?:0[0_]*)?([1-9](?:_?[0-9])*)(?:\.0+)?|[+-]?0(?:[0_]*0)?(?:\.0+)?")
_LONG_INT_TEXT = re.compile(r"-?[1-9][0-9]*")
_FLOAT_TEXT = re.compile(r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)", re.I | re.A)
_MAX_INT_TEXT = 4300  # characters: Python's int() limit on digits, as pydantic-core applies it
_TRUE, _FALSE = ("1", "t", "y", "on", "yes", "true"), ("0", "f", "n", "no", "off", "false")
_I64 = 2**63


def _integer(value: Any) -> int:
    if isinstance(value, int):  # bool too: True is 1
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("Input should be a finite number")
        if not value.is_integer():
            raise ValueError("Input should be a valid integer, got a number with a fractional part")
        if not -_I64 < value < _I64:
            raise ValueError("Unable to parse input string as an integer, exceeded maximum size")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("Input should be a valid integer")
    _unicode(value)
    long = _LONG_INT_TEXT.match(value)
    if long and long.end() > _MAX_INT_TEXT:
        raise ValueError("Unable to parse input string as an integer, exceeded maximum size")
    m = _INT_TEXT.fullmatch(value.strip(_RUST_WHITESPACE))
    digits = (m.group(1) or "") + m.group(2).replace("_", "") if m and m.group(2) else "0"
    if not m or len(digits) > _MAX_INT_TEXT:
        raise ValueError("Input should be a valid integer, unable to parse string as an integer")
    return int(digits)


def _number(value: Any) -> float:
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer of more than 308 digits
            raise ValueError("Input should be a valid number") from None
    if not isinstance(value, str):
        raise ValueError("Input should be a valid number")
    _unicode(value)
    text = value.strip(_RUST_WHITESPACE)
    if not _FLOAT_TEXT.fullmatch(text):
        # pydantic-core's second try: underscores between characters, without the first try's trim
        text = value.replace("_", "")
        if value[:1] == "_" or value[-1:] == "_" or "__" in value or not _FLOAT_TEXT.fullmatch(text):
            raise ValueError("Input should be a valid number, unable to parse string as a number")
    return float(text)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        _unicode(value)
        word = value.lower()  # no other letter lower-cases to one of the ASCII words
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError("Input should be a valid boolean, unable to interpret input")
    # pydantic reads an int, or a float that is one, if it fits 64 bits, and then takes only 0 and 1
    if (isinstance(value, int) and -_I64 <= value < _I64
            or isinstance(value, float) and math.isfinite(value) and value.is_integer() and -_I64 < value < _I64):
        if value in (0, 1):
            return value == 1
        raise ValueError("Input should be a valid boolean, unable to interpret input")
    raise ValueError("Input should be a valid boolean")


def _unicode(value: str) -> None:
    """Text with a lone surrogate ("\\ud800" in JSON) is no number, bool, choice or text: pydantic's message."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("Input should be a valid string, unable to parse raw data as a unicode string") from None


def _text(value: Any) -> str:
    if isinstance(value, str):
        # stricter than pydantic, which kept a lone surrogate ("\ud800" in JSON): no key, path or
        # option can hold one (S3 and the file system take UTF-8), and ".m3u8\ud800" slipped past
        # the refused output extensions, then `ffleet validate` failed printing it
        _unicode(value)
        return value
    raise ValueError("Input should be a valid string")


_READERS = {str: _text, int: _integer, float: _number, bool: _boolean}


def _bound(value: float, f: Field) -> None:
    # pydantic's order and wording; NaN passes no bound
    if f.le is not None and not value <= f.le:
        raise ValueError(f"Input should be less than or equal to {f.le}")
    if f.lt is not None and not value < f.lt:
        raise ValueError(f"Input should be less than {f.lt}")
    if f.ge is not None and not value >= f.ge:
        raise ValueError(f"Input should be greater than or equal to {f.ge}")
    if f.gt is not None and not value > f.gt:
        raise ValueError(f"Input should be greater than {f.gt}")


def _one_of(choices: tuple[str, ...]) -> str:
    shown = [repr(c) for c in choices]
    return " or ".join(filter(None, (", ".join(shown[:-1]), shown[-1])))


def _null_to_none(value: Any) -> Any:
    """The original sample writes the literal string "null" for an unset option."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        return None
    return value


# --- fields and specs -----------------------------------------------------------------------------

_BAD = object()  # a value that failed; its problems are already recorded


class Field:
    """One field of a request section: what it holds, its default (... = required), bounds, an
    optional check (returns the value to keep, or raises ValueError) and what it means, for users.

    kind: str, int, float, bool, list (of str), a tuple of the allowed strings, or a spec class.
    A default of None also allows null; null_is_default reads null as the default instead.
    """

    __slots__ = ("kind", "default", "ge", "gt", "le", "lt", "check", "alias", "null_is_default", "description")

    # fields are made when the module is imported, before mutmut can switch a mutant on
    def __init__(self, kind: Any, default: Any = ..., *, ge: float | None = None, gt: float | None = None,  # pragma: no mutate block
                 le: float | None = None, lt: float | None = None, check: Any = None, alias: str | None = None,
                 null_is_default: bool = False, description: str = ""):  # pragma: no mutate
        self.kind, self.default, self.check, self.alias = kind, default, check, alias
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.null_is_default, self.description = null_is_default, description

    def read(self, value: Any, field: str, problems: list[tuple[str, str]]) -> Any:
        if value is None and self.null_is_default:
            value = self.default
        if value is None and self.default is None:
            return None
        kind = self.kind
        try:
            if isinstance(kind, type) and issubclass(kind, _Spec):
                return kind._read(value, field, problems)
            if kind is list:
                value = _strings(value, field, problems)
                if value is _BAD:
                    return _BAD
            elif isinstance(kind, tuple):
                if isinstance(value, str):
                    _unicode(value)
                if not (isinstance(value, str) and value in kind):
                    raise ValueError(f"Input should be {_one_of(kind)}")
            else:
                value = _READERS[kind](value)
                if kind is int or kind is float:
                    _bound(value, self)
            return self.check(value) if self.check else value
        except ValueError as exc:
            problems.append((field, str(exc)))
            return _BAD

    def json_value(self, value: Any) -> Any:
        if isinstance(value, _Spec):
            return value.to_json_dict()
        if self.kind is float and value is not None:
            return float(value)  # as pydantic wrote it: a default of 30 as 30.0
        return list(value) if isinstance(value, list) else value


def _strings(value: Any, field: str, problems: list[tuple[str, str]]) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ValueError("Input should be a valid list")
    bad = [i for i, item in enumerate(value) if not isinstance(item, str)]
    problems.extend((f"{field}[{i}]", "Input should be a valid string") for i in bad)
    return _BAD if bad else list(value)


def _join(where: str, key: Any) -> str:
    key = "global" if key == "global_" else key  # problems name the field as users write it
    return f"{where}.{key}" if where else str(key)


class _Spec:
    """A section of the request. Its fields are the Field class attributes, in order; `check`, if a
    spec has one, runs once every field is valid and raises ValueError naming the refused field."""

    _fields: dict[str, Field] = {}

    def __init_subclass__(cls) -> None:  # pragma: no mutate block (runs on import, as Field.__init__)
        cls._fields = {name: f for name, f in vars(cls).items() if isinstance(f, Field)}

    def __init__(self, **values: Any):
        """A section from keyword arguments, validated as in a request (raises RequestError)."""
        problems: list[tuple[str, str]] = []
        spec = type(self)._read(values, "", problems)
        if problems:
            raise RequestError(problems)
        self.__dict__.update(spec.__dict__)

    @classmethod
    def _read(cls, data: Any, where: str, problems: list[tuple[str, str]]) -> Any:
        """`data` as this section; when it adds problems (named under `where`), the section is incomplete."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            problems.append((where, f"Input should be a valid dictionary or instance of {cls.__name__}"))
            return _BAD
        data = {k: _null_to_none(v) for k, v in data.items()}
        before = len(problems)
        spec = cls.__new__(cls)
        used = set()
        for name, f in cls._fields.items():
            key = f.alias if f.alias in data else name  # the alias ("global") first, then the name
            used.add(key)
            field = _join(where, f.alias or name)
            if key in data:
                spec.__dict__[name] = f.read(data[key], field, problems)
            elif f.default is ...:
                problems.append((field, "Field required"))
            else:
                spec.__dict__[name] = f.default() if isinstance(f.default, type) else f.default
        problems.extend((_join(where, key), _UNKNOWN_FIELD) for key in data if key not in used)
        if len(problems) == before:
            try:
                spec.check()
            except ValueError as exc:
                m = _FIELD_PREFIX.match(str(exc))
                problems.append((m.group(1), m.group(2)) if m else (where or "(request)", str(exc)))
        return spec

    def check(self) -> None:
        """Rules across this section's fields (see the specs below)."""

    def to_json_dict(self) -> dict[str, Any]:
        """The section as JSON values, under the names a request uses ("global"); parse_request reads it back."""
        return {f.alias or name: f.json_value(getattr(self, name)) for name, f in self._fields.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Spec):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like the pydantic models it replaced

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


# --- the rules of single fields ---------------------------------------------------------------------

def _not_empty(value: str) -> str:
    """An empty path, bucket or manifest is a mistake, not "unset" (it failed later as s3://None/)."""
    if not value.strip():
        raise ValueError("must not be empty (leave the field out, or use null, for unset)")
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _key_part(value: str) -> str:
    """output.s3_prefix / s3_suffix: no '.' or '..' path segments and no control characters.

    They would make output keys that S3 tools normalise differently, or that leave (or alias) the
    output folder; each key is checked again when it is written (storage.key_problem).
    """
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if any(seg in (".", "..") for seg in value.split("/")[:-1]) or value.split("/")[-1] == "..":
        raise ValueError("must not contain '.' or '..' path segments")
    return value


def _suffix(value: str) -> str:
    if "/" in value:
        raise ValueError("must not contain '/'")
    return _key_part(value)


def _check_options(value: str) -> str | None:
    if not value.strip():
        return None
    parse_options(value)  # raises OptionPolicyError (a ValueError), reported against the field
    return value


def _input_extensions(value: list[str]) -> list[str] | None:
    out = []
    for ext in value:
        ext = ext if ext.startswith(".") else "." + ext
        if not _EXTENSION_PATTERN.match(ext):
            raise ValueError(f"{ext!r} is not a file extension like '.wav'")
        out.append(ext.lower())
    return out or None


def _output_extension(value: str) -> str:
    value = value if value.startswith(".") else "." + value
    if not _EXTENSION_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a file extension like '.flac'")
    return value


MANIFEST_FORMATS = ("nemo", "audiofolder", "lhotse")  # ffleet.manifests writes them


def _manifests(value: list[str]) -> list[str] | None:
    unknown = [m for m in value if m not in MANIFEST_FORMATS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a manifest format; use any of {', '.join(MANIFEST_FORMATS)}")
    return [m for m in MANIFEST_FORMATS if m in value] or None


def _job_name(value: str) -> str:
    if not _NAME_PATTERN.match(value):
        raise ValueError("use 1-80 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


# --- the sections ------------------------------------------------------------------------------------

class InputSpec(_Spec):
    s3_bucket = Field(str, None, check=_not_empty, description="Bucket that holds the inputs.")
    s3_prefix = Field(str, "", null_is_default=True, description="Key prefix to list; every object under it is an input.")
    file_options = Field(str, None, check=_check_options, description="FFmpeg options placed before -i.")
    manifest = Field(str, None, check=_not_empty,
                     description="s3:// URI or local path of a CSV or JSON Lines list of keys; replaces s3_prefix.")
    extensions = Field(list, None, check=_input_extensions, description='Only keys ending with one of these, e.g. [".wav"].')
    path = Field(str, None, check=_not_empty, description="A local folder of inputs, instead of s3_bucket/s3_prefix.")

    def check(self) -> None:
        if self.path is None and self.s3_bucket is None:
            raise ValueError("give either s3_bucket (with s3_prefix or manifest) or path")
        if self.path is not None and self.s3_bucket is not None:
            raise ValueError("give either s3_bucket or path, not both")
        if self.manifest and self.s3_prefix:
            raise ValueError("give either s3_prefix or manifest, not both")


class SegmentSpec(_Spec):
    """output.segment: cut each input's output into numbered pieces (ffleet.segments)."""

    max_seconds = Field(float, 30, ge=1, le=3600, description="The longest a piece may be.")
    min_seconds = Field(float, 2, ge=0, description="A shorter last piece is merged into the one before it (when the "
                        "sum fits max_seconds), else dropped; an input shorter than this is dropped whole.")
    at_silence = Field(bool, True, description="Cut in the last pause before max_seconds; false: fixed-length pieces.")
    silence_db = Field(float, -40, ge=-90, le=0, description="Audio below this level (dBFS) counts as a pause.")
    min_silence_seconds = Field(float, 0.3, ge=0.01, le=10, description="The shortest pause that may hold a cut.")

    def check(self) -> None:
        if self.min_seconds >= self.max_seconds:
            raise ValueError("output.segment.min_seconds: must be less than max_seconds")
        if self.min_silence_seconds >= self.max_seconds:
            raise ValueError("output.segment.min_silence_seconds: must be less than max_seconds")


class OutputSpec(_Spec):
    s3_bucket = Field(str, None, check=_not_empty, description="Bucket the outputs are written to.")
    s3_prefix = Field(str, "", null_is_default=True, check=_key_part,
                      description="Prepended to each input key to make the output key.")
    s3_suffix = Field(str, "", null_is_default=True, check=_suffix,
                      description="Appended to each output key (after the extension).")
    file_options = Field(str, None, check=_check_options, description="FFmpeg options placed before the output.")
    extension = Field(str, None, check=_output_extension, description='Replaces the input extension, e.g. ".flac".')
    overwrite = Field(bool, False, description="Re-encode even when the output exists (default: skip it).")
    path = Field(str, None, check=_not_empty, description="A local folder for the outputs, instead of s3_bucket.")
    segment = Field(SegmentSpec, None, description="Cut each output into pieces "
                    "<output key without extension>/<NNNNN><ext> (see docs/contracts.md).")

    def check(self) -> None:
        if self.path is None and self.s3_bucket is None:
            raise ValueError("give either s3_bucket or path")
        if self.path is not None and self.s3_bucket is not None:
            raise ValueError("give either s3_bucket or path, not both")
        # FFmpeg picks the muxer from the output name's last extension: the suffix's, if it has one
        tail = (self.extension or "") + self.s3_suffix
        why = refused_output_extension(tail)
        if why:
            raise ValueError(f"output.{'s3_suffix' if '.' in self.s3_suffix else 'extension'}: {why}")


class GlobalSpec(_Spec):
    options = Field(str, None, check=_check_options, description="FFmpeg global options, placed before all inputs.")


class ResultsSpec(_Spec):
    s3_bucket = Field(str, None, check=_not_empty)
    s3_prefix = Field(str, None, check=_key_part)
    path = Field(str, None, check=_not_empty)
    manifests = Field(list, None, check=_manifests,
                      description='Training manifests to write with the results: any of "nemo", "audiofolder", "lhotse".')


class ProcessingSpec(_Spec):
    files_per_job = Field(int, DEFAULT_FILES_PER_JOB, ge=1, le=100_000, description="Files per AWS Batch job.")
    max_concurrency = Field(int, 100, ge=1, le=10_000,
                            description="Batch jobs in flight at once (Distributed Map MaxConcurrency).")
    tolerated_failure_percent = Field(float, 0, ge=0, le=100,
                                      description="Share of failed files (and Batch jobs) that still counts as success.")
    timeout_seconds_per_file = Field(int, DEFAULT_TIMEOUT_SECONDS_PER_FILE, ge=1, le=86_400,
                                     description="FFmpeg is killed after this long.")
    require_audio = Field(bool, True, description="Fail inputs with no audio stream (no_audio_stream). "
                          "Set false for video-only work.")
    verify_duration = Field(bool, True, description="Fail outputs whose duration differs from the input's (after -ss/-t/-to).")
    require_sandbox = Field(bool, None, description="Refuse to run unless every FFmpeg can be confined by the kernel "
                            "(Landlock + seccomp). Default: true in the worker image (FFLEET_REQUIRE_SANDBOX=1), false elsewhere.")
    max_output_bytes = Field(int, 10 * 1024**3, ge=1024**2, le=1024**4, description="The most one FFmpeg may write to "
                             "one file (RLIMIT_FSIZE); past it the file fails output_too_large.")


class QualitySpec(_Spec):
    """Training-data quality: measurements and optional filters (off unless asked for)."""

    # Off by default: on a cheap conversion (resampling to 16 kHz mono FLAC) the analysis adds about a
    # third of the conversion's CPU with sample peak and doubles it with true peak
    # (bench/analysis_overhead.py), far above the 10% the measurements were meant to cost.
    measure = Field(bool, None, description="Measure loudness, true peak, silence, clipping and DC offset in the "
                    "converting FFmpeg run. Default: on when a filter below is set, otherwise off.")
    measure_at = Field(MEASURE_AT, "output", description="output: the audio as written (after -af/-ar/-ac, before "
                       "encoding); source: the decoded input. output falls back to source when the output options "
                       "cannot be rewritten safely (see docs).")
    true_peak = Field(bool, True, description="Measure true peak (4x oversampled, about half the analysis CPU); "
                      "false: sample peak only.")
    min_seconds = Field(float, None, ge=0, description="Reject files shorter than this (output duration).")
    max_seconds = Field(float, None, gt=0, description="Reject files longer than this (output duration).")
    max_silence_ratio = Field(float, None, ge=0, le=1, description="Reject files with more silence than this share.")
    min_lufs = Field(float, None, ge=-70, le=10, description="Reject files quieter than this integrated loudness.")
    max_lufs = Field(float, None, ge=-70, le=10, description="Reject files louder than this integrated loudness.")
    reject_clipped = Field(bool, False, description="Reject files with samples at digital full scale.")
    keep_rejected = Field(bool, False, description="Store the output of rejected files too (default: do not).")

    def check(self) -> None:
        if self.min_seconds is not None and self.max_seconds is not None and self.min_seconds > self.max_seconds:
            raise ValueError("quality.min_seconds: is greater than max_seconds")
        if self.min_lufs is not None and self.max_lufs is not None and self.min_lufs > self.max_lufs:
            raise ValueError("quality.min_lufs: is greater than max_lufs")
        needs = [n for n in ("max_silence_ratio", "min_lufs", "max_lufs") if getattr(self, n) is not None]
        if self.reject_clipped:
            needs.append("reject_clipped")
        if needs and self.measure is False:
            raise ValueError(f"quality.measure: is false, but {', '.join(needs)} needs the measurements")

    @property
    def has_filters(self) -> bool:
        return self.reject_clipped or any(
            getattr(self, n) is not None
            for n in ("min_seconds", "max_seconds", "max_silence_ratio", "min_lufs", "max_lufs")
        )

    @property
    def measuring(self) -> bool:
        return self.measure if self.measure is not None else self.has_filters


class JobRequest(_Spec):
    name = Field(str, ..., check=_job_name, description="Names the run in logs, metrics and results.")
    compute = Field(COMPUTE_TYPES, "intel")
    input = Field(InputSpec)
    output = Field(OutputSpec)
    global_ = Field(GlobalSpec, GlobalSpec, alias="global")
    processing = Field(ProcessingSpec, ProcessingSpec)
    results = Field(ResultsSpec, None)
    quality = Field(QualitySpec, QualitySpec)

    def check(self) -> None:
        # Outputs inside the input location would be listed as inputs by the next run, and an
        # output key could equal another input's key: refuse rather than risk the user's data.
        inp, out = self.input, self.output
        if inp.s3_bucket and out.s3_bucket and inp.s3_bucket == out.s3_bucket and not inp.manifest:
            if (out.s3_prefix + inp.s3_prefix).startswith(inp.s3_prefix):
                raise ValueError(
                    "output.s3_prefix: outputs would land inside the input prefix "
                    f"s3://{inp.s3_bucket}/{inp.s3_prefix} (and could overwrite inputs); "
                    "use another output prefix or bucket"
                )
        if inp.s3_bucket and out.s3_bucket and inp.s3_bucket == out.s3_bucket and inp.manifest:
            if not out.s3_prefix and not out.s3_suffix and not out.extension:
                raise ValueError("output.s3_prefix: output keys would equal the input keys; set a prefix or suffix")
        if inp.path and out.path:
            a, b = _resolved(inp.path, "input.path"), _resolved(out.path, "output.path")
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(f"output.path: {out.path!r} overlaps input.path {inp.path!r}; use separate folders")
        loc = self.results_location()
        if loc.get("path") and inp.path:
            r, a = _resolved(loc["path"], "results.path"), _resolved(inp.path, "input.path")
            if r == a or a in r.parents:
                raise ValueError(f"results.path: results would land inside input.path {inp.path!r}")
        if loc.get("s3_bucket") and loc["s3_bucket"] == inp.s3_bucket and not inp.manifest:
            if loc["s3_prefix"].startswith(inp.s3_prefix):
                raise ValueError(
                    f"results.s3_prefix: results would land inside the input prefix s3://{inp.s3_bucket}/{inp.s3_prefix}"
                )

    # --- derived values -------------------------------------------------------------
    def results_location(self) -> dict[str, str]:
        """Where per-file records and the summary go: {'s3_bucket','s3_prefix'} or {'path'}."""
        if self.results and (self.results.path or self.results.s3_bucket):
            if self.results.path:
                return {"path": self.results.path}
            prefix = self.results.s3_prefix if self.results.s3_prefix is not None else f"ffleet-results/{self.name}/"
            return {"s3_bucket": self.results.s3_bucket, "s3_prefix": _dir(prefix)}
        if self.output.path:
            out = Path(self.output.path)
            return {"path": str(out.parent / f"{out.name}.ffleet-results")}
        return {"s3_bucket": self.output.s3_bucket, "s3_prefix": f"ffleet-results/{self.name}/"}

    @property
    def manifest_formats(self) -> list[str]:
        return list(self.results.manifests or []) if self.results else []

    def option_tokens(self) -> dict[str, list[str]]:
        return {
            "global": parse_options(self.global_.options or ""),
            "input": parse_options(self.input.file_options or ""),
            "output": parse_options(self.output.file_options or ""),
        }


def _resolved(path: str, field: str) -> Path:
    try:
        return Path(path).resolve()
    except RuntimeError as exc:  # a symlink loop: Python 3.11 and 3.12 raise it, not OSError
        raise ValueError(f"{field}: {exc}") from None


def _dir(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def parse_request(data: Any) -> JobRequest:
    """Validate a decoded request. Raises RequestError naming each bad field."""
    if not isinstance(data, dict):
        raise RequestError([("(request)", "must be a JSON object")])
    problems: list[tuple[str, str]] = []
    request = JobRequest._read(data, "", problems)
    if problems:
        raise RequestError(problems)
    return request


def decode_json(text: str | bytes, source: str) -> Any:
    """json.loads that fails only with RequestError: also on nesting too deep for the parser
    (RecursionError) and on integers too long to convert (ValueError over 4,300 digits)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError([("(request)", f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}")]) from None
    except UnicodeDecodeError as exc:
        raise RequestError([("(request)", f"{source} is not valid JSON: {exc}")]) from None
    except RecursionError:
        raise RequestError([("(request)", f"{source} is nested too deeply to be a job request")]) from None
    except ValueError as exc:  # int() refuses numbers of more than 4,300 digits
        raise RequestError([("(request)", f"{source} cannot be read: {str(exc).split(';')[0]}")]) from None


def request_too_large(size: int, source: str) -> RequestError:
    return RequestError([("(request)", f"{source} is {size:,} bytes; a request may be at most {MAX_REQUEST_BYTES:,} "
                                       "bytes (256 KiB, the Step Functions input limit)")])


def parse_request_text(text: str | bytes, source: str = "request") -> JobRequest:
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_REQUEST_BYTES:
        raise request_too_large(size, source)
    return parse_request(decode_json(text, source))  # validation walks no deeper than the sections


def load_request(path: str | Path) -> JobRequest:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            text = f.read(MAX_REQUEST_BYTES + 1)  # never read a huge (or endless: /dev/zero) file whole
    except OSError as exc:
        raise RequestError([("(request)", f"cannot read {p}: {exc.strerror}")]) from None
    if len(text) > MAX_REQUEST_BYTES:
        raise request_too_large(p.stat().st_size if p.is_file() else len(text), str(p))
    return parse_request_text(text, source=str(p))
