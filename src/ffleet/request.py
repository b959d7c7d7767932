"""The job request: the original FFmpeg-on-Batch format, plus ffleet's optional additions."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ffleet.policy import OptionPolicyError, parse_options, refused_output_extension

COMPUTE_TYPES = ("intel", "amd", "arm", "nvidia", "fargate", "fargate-arm")

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


class RequestError(ValueError):
    """An invalid request. `problems` is a list of (field, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))

    def to_dict(self) -> dict[str, Any]:
        return {"valid": False, "errors": [{"field": f, "message": m} for f, m in self.problems]}


def _null_to_none(value: Any) -> Any:
    """The original sample writes the literal string "null" for an unset option."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        return None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _null_to_none(v) for k, v in data.items()}
        return data


def _not_empty(value: Any) -> Any:
    """An empty path, bucket or manifest is a mistake, not "unset" (it failed later as s3://None/)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty (leave the field out, or use null, for unset)")
    if isinstance(value, str) and "\x00" in value:
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


def _check_options(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    parse_options(value)  # raises OptionPolicyError, reported against the field by pydantic
    return value


class InputSpec(_Model):
    s3_bucket: str | None = Field(None, description="Bucket that holds the inputs.")
    s3_prefix: str = Field("", description="Key prefix to list; every object under it is an input.")
    file_options: str | None = Field(None, description="FFmpeg options placed before -i.")
    manifest: str | None = Field(
        None, description="s3:// URI or local path of a CSV or JSON Lines list of keys; replaces s3_prefix."
    )
    extensions: list[str] | None = Field(None, description='Only keys ending with one of these, e.g. [".wav"].')
    path: str | None = Field(None, description="A local folder of inputs, instead of s3_bucket/s3_prefix.")

    _opts = field_validator("file_options")(classmethod(lambda cls, v: _check_options(v)))
    _set = field_validator("s3_bucket", "manifest", "path", mode="before")(classmethod(lambda cls, v: _not_empty(v)))

    @field_validator("s3_prefix", mode="before")
    @classmethod
    def _prefix(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = []
        for ext in v:
            ext = ext if ext.startswith(".") else "." + ext
            if not _EXTENSION_PATTERN.match(ext):
                raise ValueError(f"{ext!r} is not a file extension like '.wav'")
            out.append(ext.lower())
        return out or None

    @model_validator(mode="after")
    def _one_source(self) -> "InputSpec":
        if self.path is None and self.s3_bucket is None:
            raise ValueError("give either s3_bucket (with s3_prefix or manifest) or path")
        if self.path is not None and self.s3_bucket is not None:
            raise ValueError("give either s3_bucket or path, not both")
        if self.manifest and self.s3_prefix:
            raise ValueError("give either s3_prefix or manifest, not both")
        return self


class SegmentSpec(_Model):
    """output.segment: cut each input's output into numbered pieces (ffleet.segments)."""

    max_seconds: float = Field(30, ge=1, le=3600, description="The longest a piece may be.")
    min_seconds: float = Field(
        2, ge=0, description="A shorter last piece is merged into the one before it (when the sum fits "
        "max_seconds), else dropped; an input shorter than this is dropped whole.",
    )
    at_silence: bool = Field(True, description="Cut in the last pause before max_seconds; false: fixed-length pieces.")
    silence_db: float = Field(-40, ge=-90, le=0, description="Audio below this level (dBFS) counts as a pause.")
    min_silence_seconds: float = Field(0.3, ge=0.01, le=10, description="The shortest pause that may hold a cut.")

    @model_validator(mode="after")
    def _consistent(self) -> "SegmentSpec":
        if self.min_seconds >= self.max_seconds:
            raise ValueError("output.segment.min_seconds: must be less than max_seconds")
        if self.min_silence_seconds >= self.max_seconds:
            raise ValueError("output.segment.min_silence_seconds: must be less than max_seconds")
        return self


class OutputSpec(_Model):
    s3_bucket: str | None = Field(None, description="Bucket the outputs are written to.")
    s3_prefix: str = Field("", description="Prepended to each input key to make the output key.")
    s3_suffix: str = Field("", description="Appended to each output key (after the extension).")
    file_options: str | None = Field(None, description="FFmpeg options placed before the output.")
    extension: str | None = Field(None, description='Replaces the input extension, e.g. ".flac".')
    overwrite: bool = Field(False, description="Re-encode even when the output exists (default: skip it).")
    path: str | None = Field(None, description="A local folder for the outputs, instead of s3_bucket.")
    segment: SegmentSpec | None = Field(
        None, description="Cut each output into pieces <output key without extension>/<NNNNN><ext> (see docs/contracts.md)."
    )

    _opts = field_validator("file_options")(classmethod(lambda cls, v: _check_options(v)))
    _set = field_validator("s3_bucket", "path", mode="before")(classmethod(lambda cls, v: _not_empty(v)))

    @field_validator("s3_prefix", "s3_suffix", mode="before")
    @classmethod
    def _empty(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("s3_prefix")
    @classmethod
    def _out_prefix(cls, v: str) -> str:
        return _key_part(v)

    @field_validator("s3_suffix")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if "/" in v:
            raise ValueError("must not contain '/'")
        return _key_part(v)

    @field_validator("extension")
    @classmethod
    def _extension(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v if v.startswith(".") else "." + v
        if not _EXTENSION_PATTERN.match(v):
            raise ValueError(f"{v!r} is not a file extension like '.flac'")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> "OutputSpec":
        if self.path is None and self.s3_bucket is None:
            raise ValueError("give either s3_bucket or path")
        if self.path is not None and self.s3_bucket is not None:
            raise ValueError("give either s3_bucket or path, not both")
        # FFmpeg picks the muxer from the output name's last extension: the suffix's, if it has one
        tail = (self.extension or "") + self.s3_suffix
        why = refused_output_extension(tail) if "." in tail else None
        if why:
            raise ValueError(f"output.{'s3_suffix' if '.' in self.s3_suffix else 'extension'}: {why}")
        return self


class GlobalSpec(_Model):
    options: str | None = Field(None, description="FFmpeg global options, placed before all inputs.")

    _opts = field_validator("options")(classmethod(lambda cls, v: _check_options(v)))


MANIFEST_FORMATS = ("nemo", "audiofolder", "lhotse")  # ffleet.manifests writes them


class ResultsSpec(_Model):
    s3_bucket: str | None = None
    s3_prefix: str | None = None
    path: str | None = None
    manifests: list[str] | None = Field(
        None, description='Training manifests to write with the results: any of "nemo", "audiofolder", "lhotse".'
    )

    _set = field_validator("s3_bucket", "path", mode="before")(classmethod(lambda cls, v: _not_empty(v)))

    @field_validator("manifests")
    @classmethod
    def _manifests(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        unknown = [m for m in v if m not in MANIFEST_FORMATS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a manifest format; use any of {', '.join(MANIFEST_FORMATS)}")
        return [m for m in MANIFEST_FORMATS if m in v] or None

    @field_validator("s3_prefix")
    @classmethod
    def _results_prefix(cls, v: str | None) -> str | None:
        return None if v is None else _key_part(v)


class ProcessingSpec(_Model):
    files_per_job: int = Field(DEFAULT_FILES_PER_JOB, ge=1, le=100_000, description="Files per AWS Batch job.")
    max_concurrency: int = Field(
        100, ge=1, le=10_000, description="Batch jobs in flight at once (Distributed Map MaxConcurrency)."
    )
    tolerated_failure_percent: float = Field(
        0, ge=0, le=100, description="Share of failed files (and Batch jobs) that still counts as success."
    )
    timeout_seconds_per_file: int = Field(
        DEFAULT_TIMEOUT_SECONDS_PER_FILE, ge=1, le=86_400, description="FFmpeg is killed after this long."
    )
    require_audio: bool = Field(
        True, description="Fail inputs with no audio stream (no_audio_stream). Set false for video-only work."
    )
    verify_duration: bool = Field(
        True, description="Fail outputs whose duration differs from the input's (after -ss/-t/-to)."
    )
    require_sandbox: bool | None = Field(
        None, description="Refuse to run unless every FFmpeg can be confined by the kernel (Landlock + seccomp). "
        "Default: true in the worker image (FFLEET_REQUIRE_SANDBOX=1), false elsewhere.",
    )
    max_output_bytes: int = Field(
        10 * 1024**3, ge=1024**2, le=1024**4,
        description="The most one FFmpeg may write to one file (RLIMIT_FSIZE); past it the file fails output_too_large.",
    )


class QualitySpec(_Model):
    """Training-data quality: measurements and optional filters (off unless asked for)."""

    # Off by default: on a cheap conversion (resampling to 16 kHz mono FLAC) the analysis adds about a
    # third of the conversion's CPU with sample peak and doubles it with true peak
    # (bench/analysis_overhead.py), far above the 10% the measurements were meant to cost.
    measure: bool | None = Field(
        None,
        description="Measure loudness, true peak, silence, clipping and DC offset in the converting FFmpeg run. "
        "Default: on when a filter below is set, otherwise off.",
    )
    measure_at: Literal["output", "source"] = Field(
        "output",
        description="output: the audio as written (after -af/-ar/-ac, before encoding); source: the decoded input. "
        "output falls back to source when the output options cannot be rewritten safely (see docs).",
    )
    true_peak: bool = Field(
        True, description="Measure true peak (4x oversampled, about half the analysis CPU); false: sample peak only."
    )
    min_seconds: float | None = Field(None, ge=0, description="Reject files shorter than this (output duration).")
    max_seconds: float | None = Field(None, gt=0, description="Reject files longer than this (output duration).")
    max_silence_ratio: float | None = Field(None, ge=0, le=1, description="Reject files with more silence than this share.")
    min_lufs: float | None = Field(None, ge=-70, le=10, description="Reject files quieter than this integrated loudness.")
    max_lufs: float | None = Field(None, ge=-70, le=10, description="Reject files louder than this integrated loudness.")
    reject_clipped: bool = Field(False, description="Reject files with samples at digital full scale.")
    keep_rejected: bool = Field(False, description="Store the output of rejected files too (default: do not).")

    @model_validator(mode="after")
    def _consistent(self) -> "QualitySpec":
        if self.min_seconds is not None and self.max_seconds is not None and self.min_seconds > self.max_seconds:
            raise ValueError("quality.min_seconds: is greater than max_seconds")
        if self.min_lufs is not None and self.max_lufs is not None and self.min_lufs > self.max_lufs:
            raise ValueError("quality.min_lufs: is greater than max_lufs")
        needs = [n for n in ("max_silence_ratio", "min_lufs", "max_lufs") if getattr(self, n) is not None]
        if self.reject_clipped:
            needs.append("reject_clipped")
        if needs and self.measure is False:
            raise ValueError(f"quality.measure: is false, but {', '.join(needs)} needs the measurements")
        return self

    @property
    def has_filters(self) -> bool:
        return self.reject_clipped or any(
            getattr(self, n) is not None
            for n in ("min_seconds", "max_seconds", "max_silence_ratio", "min_lufs", "max_lufs")
        )

    @property
    def measuring(self) -> bool:
        return self.measure if self.measure is not None else self.has_filters


class JobRequest(_Model):
    name: str = Field(..., description="Names the run in logs, metrics and results.")
    compute: Literal["intel", "amd", "arm", "nvidia", "fargate", "fargate-arm"] = "intel"
    input: InputSpec
    output: OutputSpec
    global_: GlobalSpec = Field(default_factory=GlobalSpec, alias="global")
    processing: ProcessingSpec = Field(default_factory=ProcessingSpec)
    results: ResultsSpec | None = None
    quality: QualitySpec = Field(default_factory=QualitySpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_PATTERN.match(v):
            raise ValueError("use 1-80 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> "JobRequest":
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
            a, b = Path(inp.path).resolve(), Path(out.path).resolve()
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(f"output.path: {out.path!r} overlaps input.path {inp.path!r}; use separate folders")
        loc = self.results_location()
        if loc.get("path") and inp.path:
            r, a = Path(loc["path"]).resolve(), Path(inp.path).resolve()
            if r == a or a in r.parents:
                raise ValueError(f"results.path: results would land inside input.path {inp.path!r}")
        if loc.get("s3_bucket") and loc["s3_bucket"] == inp.s3_bucket and not inp.manifest:
            if loc["s3_prefix"].startswith(inp.s3_prefix):
                raise ValueError(
                    f"results.s3_prefix: results would land inside the input prefix s3://{inp.s3_bucket}/{inp.s3_prefix}"
                )
        return self

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

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def _dir(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            p = "global" if p == "global_" else p
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(request)"


def parse_request(data: Any) -> JobRequest:
    """Validate a decoded request. Raises RequestError naming each bad field."""
    if not isinstance(data, dict):
        raise RequestError([("(request)", "must be a JSON object")])
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = _field_name(err["loc"])
            msg = err["msg"]
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, OptionPolicyError):
                msg = str(ctx_err)
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see the README's request reference)"
            # model-level checks name their own field at the start of the message
            m = re.match(r"^([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", msg, re.S)
            if m and field in ("(request)", "input", "output", "output.segment", "processing", "quality"):
                field, msg = m.group(1), m.group(2)
            problems.append((field, msg))
        raise RequestError(problems) from None


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
    data = decode_json(text, source)
    try:
        return parse_request(data)
    except RecursionError:  # deep nesting that json accepted but validation cannot walk
        raise RequestError([("(request)", f"{source} is nested too deeply to be a job request")]) from None


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

