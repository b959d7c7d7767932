"""ffleet doctor: what ffleet finds on this machine, and whether a run could start on it."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ffleet import __version__

EXIT_READY, EXIT_NOT_READY = 0, 1

_PT_INTERP = 3  # ELF program header type naming the dynamic loader; a static binary has none
_ENCODER_LINE = re.compile(r"^ [VAS.][F.][S.][X.][B.][D.] (\w+)\s", re.M)
_FILTER_LINE = re.compile(r"^ [T.][S.][C.] (\w+)\s+\S*->\S*", re.M)
# every option that names an encoder (-c:a, -acodec, -c:v:0, ...): the stream specifier does not matter
_CODEC_OPTION = re.compile(r"^-(c|codec|acodec|vcodec|scodec)(:|$)")
_FILTER_OPTION = re.compile(r"^-(af|vf|filter|filter_complex|lavfi)(:|$)")
# botocore's credential providers that read local files or the environment only, or defer their
# network call until the keys are used (doctor never uses them). Left out: container-role and
# iam-role (HTTP to the ECS or EC2 metadata endpoint) and custom-process (runs a program).
_LOCAL_CREDENTIAL_PROVIDERS = {
    "env", "assume-role", "assume-role-with-web-identity", "sso", "shared-credentials-file", "login",
    "config-file", "ec2-credentials-file", "boto-config",
}


@dataclass
class Diagnosis:
    """The findings by topic, the reasons a run could not start (problems) and what may go wrong (warnings)."""

    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, **self.sections, "problems": self.problems, "warnings": self.warnings}


def elf_is_static(path: str) -> bool | None:
    """True for an ELF executable without a program interpreter (nothing to load at start), False
    for one with it, None for anything else (a script, a Mach-O binary, an unreadable file)."""
    try:
        with open(path, "rb") as f:
            ident = f.read(16)
            if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
                return None
            wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
            # e_phoff, then e_phentsize and e_phnum, at their offsets in the 32- or 64-bit header
            f.seek(32 if wide else 28)
            (phoff,) = struct.unpack(order + ("Q" if wide else "I"), f.read(8 if wide else 4))
            f.seek(54 if wide else 42)
            phentsize, phnum = struct.unpack(order + "HH", f.read(4))
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                (p_type,) = struct.unpack(order + "I", f.read(4))
                if p_type == _PT_INTERP:
                    return False
            return True
    except (OSError, struct.error):
        return None


def build_license(configuration: str) -> str:
    """The licence FFmpeg's configure flags put the build under (FFmpeg's LICENSE.md)."""
    flags = set(configuration.split())
    if "--enable-nonfree" in flags:
        return "nonfree (not redistributable)"
    if "--enable-gpl" in flags:
        return "GPL-3.0-or-later" if "--enable-version3" in flags else "GPL-2.0-or-later"
    return "LGPL-3.0-or-later" if "--enable-version3" in flags else "LGPL-2.1-or-later"


def binary_info(path: str) -> dict[str, Any]:
    """Path, version, static or not, and licence of an FFmpeg program; 'problem' says why it cannot run."""
    info: dict[str, Any] = {"path": path}
    if not os.path.isfile(path):
        return {**info, "problem": f"{path} does not exist"}
    if not os.access(path, os.X_OK):
        return {**info, "problem": f"{path} is not executable"}
    try:
        proc = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**info, "problem": f"{path} does not run: {exc}"}
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    m = re.match(r"^\S+ version (\S+)", first)
    if proc.returncode != 0 or not m:
        return {**info, "problem": f"{path} -version exited {proc.returncode}: {(proc.stderr or first).strip()[:200]}"}
    configuration = re.search(r"^configuration: (.*)$", proc.stdout, re.M)
    return {**info, "version": m.group(1), "static": elf_is_static(path),
            "license": build_license(configuration.group(1) if configuration else "")}


@lru_cache(maxsize=8)
def build_components(ffmpeg: str, kind: str) -> frozenset[str]:
    """The names `ffmpeg -encoders` or `ffmpeg -filters` lists for this build (asked once per binary)."""
    proc = subprocess.run([ffmpeg, "-hide_banner", f"-{kind}"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    pattern = _ENCODER_LINE if kind == "encoders" else _FILTER_LINE
    return frozenset(pattern.findall(proc.stdout))


def request_needs(request) -> tuple[dict[str, str], dict[str, str]]:
    """The encoders and filters a request's FFmpeg runs use: {name: where it comes from}."""
    # the worker's own tables and splitter, so doctor checks what a run would use, not a copy of it
    from ffleet.audio_quality import _DEFAULT_ENCODERS, analysis_filter_parts, measuring
    from ffleet.policy import filter_names, option_pairs

    tokens = request.option_tokens()
    encoders: dict[str, str] = {}
    filters: dict[str, str] = {}
    muxer, audio_codec_named = None, False
    for group in ("global", "output"):
        for flag, value in option_pairs(tokens[group]):
            if value is None:
                continue
            if _CODEC_OPTION.match(flag):
                audio_codec_named |= bool(re.match(r"^-(c|codec)(:a|$)|^-acodec", flag))
                if value != "copy":
                    encoders.setdefault(value, flag)
            elif _FILTER_OPTION.match(flag):
                for name in filter_names(value):
                    filters.setdefault(name, flag)
            elif flag == "-f" and group == "output":
                muxer = value
    extension = request.output.extension
    if not audio_codec_named and (muxer or extension):
        implied = _DEFAULT_ENCODERS.get(muxer or extension.lstrip(".").lower())
        if implied:
            encoders.setdefault(implied, f"-f {muxer}" if muxer else f"output.extension {extension}")
    if measuring(request, tokens):
        for name in analysis_filter_parts():
            filters.setdefault(name, "quality measurements")
    return encoders, filters


def _request_section(path: str, ffmpeg: str | None, d: Diagnosis) -> None:
    from ffleet.request import RequestError, load_request

    section: dict[str, Any] = {"path": path}
    d.sections["request"] = section
    try:
        request = load_request(path)
    except RequestError as exc:
        section["valid"] = False
        d.problems += [f"request {path}: {field_}: {message}" for field_, message in exc.problems]
        return
    section["valid"] = True
    section["require_sandbox"] = request.processing.require_sandbox
    if request.input.path and not Path(request.input.path).is_dir():
        d.problems.append(f"request {path}: input.path {request.input.path} is not a folder")
    encoders, filters = request_needs(request)
    section["encoders"], section["filters"] = encoders, filters
    section["uses_s3"] = bool(request.input.s3_bucket or request.output.s3_bucket
                              or (request.input.manifest or "").startswith("s3://")
                              or "s3_bucket" in request.results_location())
    if ffmpeg is None:
        return  # the missing FFmpeg is already the problem
    for kind, wanted in (("encoders", encoders), ("filters", filters)):
        try:
            present = build_components(ffmpeg, kind)
        except (OSError, subprocess.TimeoutExpired) as exc:
            d.problems.append(f"cannot list the {kind} of {ffmpeg}: {exc}")
            continue
        missing = [name for name in wanted if name not in present]
        section[f"missing_{kind}"] = missing
        for name in missing:
            d.problems.append(f"request {path}: {kind[:-1]} {name} (from {wanted[name]}) is not in this FFmpeg "
                              f"({ffmpeg}); `ffmpeg -hide_banner -{kind}` lists what it has")


def _sandbox_required(request_section: dict[str, Any]) -> bool:
    """Whether a run would require the sandbox: the request says so, else the environment's default."""
    from ffleet import sandbox

    said = request_section.get("require_sandbox")
    return sandbox.required_by_default() if said is None else bool(said)


def _sandbox_section(d: Diagnosis, required: bool) -> None:
    """What the kernel sandbox enforces here; incomplete is a problem where a run would require it."""
    from ffleet import sandbox

    try:
        status = sandbox.sandbox_status()
    except Exception as exc:  # doctor reports what it finds; a failing probe is a finding too
        d.sections["sandbox"] = {"status": "unknown", "detail": f"sandbox_status() failed: {exc!r}"}
        (d.problems if required else d.warnings).append(f"sandbox: cannot tell what this kernel supports: {exc!r}")
        return
    d.sections["sandbox"] = {"status": "available" if status.available else "unavailable", "required": required,
                             **status.to_dict()}
    if required and not status.available:
        d.problems += [f"sandbox (required: processing.require_sandbox or FFLEET_REQUIRE_SANDBOX=1): {p}"
                       for p in status.problems]
    else:
        d.warnings += [f"sandbox: {p}" for p in status.problems]


def _verifier_section(d: Diagnosis, binaries) -> str:
    """How outputs are read back here (ffleet.verify.choice); the sandboxed verifier is started once
    to show it works. Returns the reader's name."""
    from ffleet import verifier, verify

    try:
        reader = verify.choice()
    except ValueError as exc:
        d.sections["verifier"] = {"reader": None, "problem": str(exc)}
        d.problems.append(f"verifier: {exc}")
        return "ffprobe"
    section: dict[str, Any] = {"reader": reader, "detail": {
        verify.SANDBOXED_PYAV: "PyAV in a long-lived process per worker thread, in the sandbox",
        verify.IN_PROCESS_PYAV: "PyAV in ffleet's own process, NOT in the sandbox (FFLEET_VERIFY=pyav)",
        verify.FFPROBE: "ffprobe in the sandbox, one process per file",
    }[reader]}
    d.sections["verifier"] = section
    if reader == verify.SANDBOXED_PYAV:
        try:
            problem = verifier.self_test()
        except Exception as exc:  # doctor reports what it finds; a failing start is a finding too
            problem = f"the verifier's self-test failed: {exc!r}"
        if problem:
            section["problem"] = problem
            fallback = verify.has_ffprobe(binaries)
            (d.warnings if fallback else d.problems).append(
                f"verifier: {problem}" + ("; ffprobe reads the outputs instead" if fallback else ""))
    elif reader == verify.FFPROBE and not verify.has_ffprobe(binaries):
        section["problem"] = "PyAV is not installed and there is no ffprobe: outputs cannot be read back"
    return reader


def _cpu_section(d: Diagnosis) -> None:
    from ffleet.cpus import cgroup_cpu_limit, usable_cpus

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    d.sections["cpus"] = {"workers": usable_cpus(), "usable": usable, "cgroup_quota": cgroup_cpu_limit()}
    if os.environ.get("FFLEET_WORKERS"):
        d.sections["cpus"]["FFLEET_WORKERS"] = os.environ["FFLEET_WORKERS"]


def _s3_section(d: Diagnosis) -> None:
    """The endpoint boto3 will use and whether credentials are found, without a network call."""
    import botocore.session
    from botocore.exceptions import BotoCoreError

    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    section: dict[str, Any] = {}
    d.sections["s3"] = section
    section["endpoint"] = custom or "https://s3.amazonaws.com"
    section["endpoint_source"] = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else (
        "AWS_ENDPOINT_URL" if custom else "default")
    session = botocore.session.get_session()
    try:
        region = section["region"] = session.get_config_variable("region")
        if region and not custom:
            section["endpoint"] = f"https://s3.{region}.amazonaws.com"
        resolver = session.get_component("credential_provider")
        resolver.providers = [p for p in resolver.providers if p.METHOD in _LOCAL_CREDENTIAL_PROVIDERS]
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        section["credentials"] = "error"
        d.warnings.append(f"s3: credentials cannot be resolved: {exc}")
        return
    if credentials is not None:
        section["credentials"] = f"found ({credentials.method})"  # the method only, never the keys
    elif os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        section["credentials"] = "container role (ECS/Batch): configured, not fetched"
    else:
        section["credentials"] = "not found"
        d.warnings.append("s3: no AWS credentials in the environment or ~/.aws; an EC2 instance role may still "
                          "provide them (not checked: that needs a network call)")


def diagnose(request_path: str | None = None) -> Diagnosis:
    """Everything `ffleet doctor` reports."""
    from ffleet.ffmpeg import find_binaries

    d = Diagnosis()
    d.sections["ffleet"] = {"version": __version__, "path": str(Path(__file__).parent), "python": sys.version.split()[0]}
    ffmpeg = None
    try:
        binaries = find_binaries()
    except FileNotFoundError as exc:
        d.sections["ffmpeg"] = d.sections["ffprobe"] = {"problem": str(exc)}
        d.problems.append(str(exc))
    else:
        reader = _verifier_section(d, binaries)
        for name, path in (("ffmpeg", binaries.ffmpeg), ("ffprobe", binaries.ffprobe)):
            info = binary_info(path) if path else {"path": None, "problem": "not found"}
            d.sections[name] = info
            if "problem" in info and name == "ffprobe" and reader != "ffprobe":
                info["needed"] = False  # PyAV reads outputs back; ffprobe would only be a fallback
            elif "problem" in info:
                d.problems.append(f"{name}: {info['problem']}")
            elif info["license"].startswith("nonfree"):
                d.warnings.append(f"{name}: built with --enable-nonfree: it may not be redistributed (e.g. in an image)")
        if "problem" not in d.sections["ffmpeg"]:
            ffmpeg = binaries.ffmpeg
    if request_path:
        _request_section(request_path, ffmpeg, d)
    _sandbox_section(d, _sandbox_required(d.sections.get("request", {})))
    _cpu_section(d)
    _s3_section(d)
    uses_s3 = d.sections.get("request", {}).get("uses_s3")
    if uses_s3 and d.sections["s3"].get("credentials") == "not found":
        d.warnings.append(f"request {request_path} reads or writes S3: without credentials its run will fail")
    return d


def _binary_line(info: dict[str, Any]) -> str:
    if "problem" in info and info.get("needed") is False:
        return f"not used ({info['problem']}): PyAV reads outputs back"
    if "problem" in info:
        return f"MISSING: {info['problem']}"
    kind = {True: "static", False: "dynamically linked", None: "not an ELF executable"}[info["static"]]
    return f"{info['path']} ({info['version']}, {kind}, {info['license']})"


def format_diagnosis(d: Diagnosis) -> str:
    s = d.sections
    lines = [f"ffleet   {s['ffleet']['version']} at {s['ffleet']['path']} (Python {s['ffleet']['python']})",
             f"ffmpeg   {_binary_line(s['ffmpeg'])}",
             f"ffprobe  {_binary_line(s['ffprobe'])}"]
    if "verifier" in s:
        v = s["verifier"]
        lines.append(f"verifier {v['reader'] or 'unknown'}: {v.get('problem') or v.get('detail')}")
    if "request" in s:
        r = s["request"]
        if not r.get("valid"):
            lines.append(f"request  {r['path']}: invalid")
        else:
            def names(kind: str) -> str:
                missing = set(r.get(f"missing_{kind}", []))
                return ", ".join(f"{n} MISSING" if n in missing else n for n in r[kind]) or "none named"
            lines.append(f"request  {r['path']}: encoders {names('encoders')}; filters {names('filters')}")
    sb = s["sandbox"]
    if sb["status"] == "unknown":
        lines.append(f"sandbox  unknown ({sb['detail']})")
    else:
        lines.append(f"sandbox  {sb['status']} (Landlock ABI {sb.get('landlock_abi') or 'none'}, "
                     f"seccomp {'yes' if sb.get('seccomp') else 'no'})")
    c = s["cpus"]
    quota = f"cgroup quota {c['cgroup_quota']}" if c["cgroup_quota"] else "no cgroup quota"
    lines.append(f"cpus     {c['workers']} FFmpeg at once by default ({c['usable']} usable CPUs, {quota})")
    s3 = s["s3"]
    lines.append(f"s3       endpoint {s3.get('endpoint', '?')} ({s3.get('endpoint_source', '?')}); "
                 f"credentials {s3.get('credentials')}")
    lines += [f"warning: {w}" for w in d.warnings]
    if d.ready:
        lines.append("ready: a run could start")
    else:
        lines.append("NOT READY:")
        lines += [f"  - {p}" for p in d.problems]
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    d = diagnose(args.request)
    print(json.dumps(d.to_dict(), indent=2) if args.json else format_diagnosis(d))
    return EXIT_READY if d.ready else EXIT_NOT_READY
