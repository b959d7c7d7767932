"""The kernel sandbox around FFmpeg: with the option policy bypassed, hostile options are contained.

The test-only hook is `JobRequest.option_tokens`, monkeypatched to hand the worker raw tokens the
policy would refuse (tests/test_policy*.py checks that it does). Each payload is also run once with
the sandbox off (FFLEET_SANDBOX_HELPER naming no helper, as on a machine that cannot build it), to
show the payload is live against this FFmpeg: the same test then sees the file written, the socket
reached or the secret leaked. That control keeps these tests honest if FFmpeg changes.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ffleet import sandbox
from ffleet.demo import make_tone
from ffleet.ffmpeg import find_binaries, run_process
from ffleet.request import JobRequest, parse_request
from ffleet.runner import run_request

SECRET = "ffleet-test-secret-7f3a91"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")


@pytest.fixture(autouse=True)
def fresh_sandbox(monkeypatch):
    """No test-wide interpreter allowance (conftest's FFLEET_SANDBOX_LIBS), and no cached status."""
    monkeypatch.delenv("FFLEET_SANDBOX_LIBS", raising=False)
    monkeypatch.delenv("FFLEET_SANDBOX_HELPER", raising=False)
    sandbox.helper_path.cache_clear()
    sandbox.sandbox_status.cache_clear()
    yield
    sandbox.helper_path.cache_clear()
    sandbox.sandbox_status.cache_clear()


def _complete_sandbox() -> sandbox.SandboxStatus:
    status = sandbox.sandbox_status()
    if not status.available:
        pytest.skip(f"this machine cannot give the whole sandbox: {status.describe()}")
    return status


def _sandbox_off(monkeypatch, tmp_path):
    monkeypatch.setenv("FFLEET_SANDBOX_HELPER", str(tmp_path / "no-such-helper"))
    sandbox.helper_path.cache_clear()
    sandbox.sandbox_status.cache_clear()


class Listener:
    """A listening unix or TCP socket that records whether anything connected."""

    def __init__(self, family: int, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.connections


def _run_hostile(tmp_path: Path, monkeypatch, capsys, tokens: dict[str, list[str]], seconds: float = 1.0, **processing):
    """Run a one-file request with `tokens` in place of the validated options; returns
    (summary, every text ffleet wrote: records, summary, failed-files, stderr, stdout)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_tone(inp / "a.wav", seconds, rate=8000, channels=1)
    request = parse_request({
        "name": "hostile", "input": {"path": str(inp)}, "output": {"path": str(out), "extension": ".wav"},
        "processing": {"tolerated_failure_percent": 100, **processing},
    })
    full = {"global": [], "input": [], "output": [], **tokens}
    monkeypatch.setattr(JobRequest, "option_tokens", lambda self: {k: list(v) for k, v in full.items()})
    outcome = run_request(request, workers=1, work_dir=tmp_path / "work")
    captured = capsys.readouterr()
    texts = [captured.out, captured.err]
    for f in (out.parent / "out.ffleet-results").rglob("*"):
        if f.is_file():
            texts.append(f.read_text(errors="replace"))
    return outcome.summary, "\n".join(texts)


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


# -- 1. writing files ffleet did not name ---------------------------------------------------------

WRITE_PAYLOADS = {
    # the payload: -apad takes a value, so the next bare word is an extra output
    "apad_extra_output": lambda o: {"output": ["-c:a", "copy", "-f", "u8", "-apad", "-ss", str(o / "PWNED.sh")]},
    "bare_extra_output": lambda o: {"output": ["-f", "wav", str(o / "second.wav")]},
    "global_extra_output": lambda o: {"global": ["-y"], "output": ["-map", "0", "-f", "wav", str(o / "g.wav")]},
    "file_protocol_output": lambda o: {"output": ["-f", "wav", "file:" + str(o / "proto.wav")]},
}


@pytest.mark.parametrize("payload", sorted(WRITE_PAYLOADS))
def test_ffmpeg_cannot_write_outside_its_work_folder(payload, tmp_path, outside, monkeypatch, capsys):
    _complete_sandbox()
    summary, _ = _run_hostile(tmp_path, monkeypatch, capsys, WRITE_PAYLOADS[payload](outside))
    assert list(outside.iterdir()) == []
    assert summary["sandbox"]["available"] is True


def test_the_write_payload_is_live_without_the_sandbox(tmp_path, outside, monkeypatch, capsys):
    _sandbox_off(monkeypatch, tmp_path)
    summary, text = _run_hostile(tmp_path, monkeypatch, capsys, WRITE_PAYLOADS["apad_extra_output"](outside))
    assert (outside / "PWNED.sh").stat().st_size > 0  # what the policy alone was protecting against
    assert summary["sandbox"]["available"] is False
    assert "sandbox incomplete" in text  # said once per run


@pytest.mark.parametrize("confined", [True, False], ids=["sandboxed", "control-without-sandbox"])
def test_encoder_parameters_cannot_write_side_files(confined, tmp_path, monkeypatch, capsys):
    """-x264-params dump_yuv=FILE writes in FFmpeg's working folder (relative) or anywhere (absolute)."""
    if confined:
        _complete_sandbox()
    else:
        _sandbox_off(monkeypatch, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    ff = find_binaries().ffmpeg
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=1",
                    "-c:v", "mpeg4", str(inp / "v.mp4")], check=True)
    request = parse_request({"name": "x", "input": {"path": str(inp)},
                             "output": {"path": str(out), "extension": ".mp4"},
                             "processing": {"require_audio": False, "tolerated_failure_percent": 100}})
    tokens = {"global": [], "input": [], "output": ["-c:v", "libx264", "-x264-params", "dump_yuv=dump.yuv:threads=1"]}
    monkeypatch.setattr(JobRequest, "option_tokens", lambda self: tokens)
    run_request(request, workers=1, work_dir=tmp_path / "work")
    assert [p.name for p in cwd.iterdir()] == ([] if confined else ["dump.yuv"])


# -- 2. sockets -----------------------------------------------------------------------------------

def test_ffmpeg_cannot_reach_unix_or_tcp_sockets(tmp_path, monkeypatch, capsys):
    _complete_sandbox()
    unix = Listener(socket.AF_UNIX, str(tmp_path / "docker.sock"))
    tcp = Listener(socket.AF_INET, ("127.0.0.1", 0))
    host, port = tcp.address
    tokens = {"output": ["-f", "u8", "-apad", "-metadata", "unix:" + str(tmp_path / "docker.sock"),
                         "-f", "wav", f"tcp://{host}:{port}", "-f", "wav", f"http://{host}:{port}/x"]}
    _run_hostile(tmp_path, monkeypatch, capsys, tokens)
    assert (unix.close(), tcp.close()) == (0, 0)


def test_the_socket_payload_is_live_without_the_sandbox(tmp_path, monkeypatch, capsys):
    _sandbox_off(monkeypatch, tmp_path)
    unix = Listener(socket.AF_UNIX, str(tmp_path / "docker.sock"))
    _run_hostile(tmp_path, monkeypatch, capsys, {"output": ["-f", "u8", "-apad", "-metadata", "unix:" + str(tmp_path / "docker.sock")]})
    assert unix.close() >= 1


# -- 3. reading files into the results ------------------------------------------------------------

def _secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "credentials"
    secret.write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    return secret


def _read_payloads(secret: Path) -> dict[str, dict[str, list[str]]]:
    return {
        # FFmpeg 6+: "/option=PATH" loads the option's value from the file, and the error quotes it
        "filter_option_from_file": {"output": ["-filter_complex", f"volume=/volume={secret}"]},
        "af_option_from_file": {"output": ["-af", f"volume=/volume={secret}"]},
        "second_input": {"input": ["-f", "data", "-i", str(secret)], "output": ["-map", "1", "-c", "copy", "-f", "data"]},
        "amovie_source": {"output": ["-filter_complex", f"amovie={secret}"]},
    }


@pytest.mark.parametrize("payload", ["filter_option_from_file", "af_option_from_file", "second_input", "amovie_source"])
def test_ffmpeg_cannot_read_a_secret_into_the_results(payload, tmp_path, monkeypatch, capsys):
    _complete_sandbox()
    secret = _secret_file(tmp_path)
    _, text = _run_hostile(tmp_path, monkeypatch, capsys, _read_payloads(secret)[payload])
    assert SECRET not in text
    out = tmp_path / "out"
    for f in out.rglob("*") if out.exists() else ():
        assert SECRET.encode() not in f.read_bytes()


def test_the_read_payload_is_live_without_the_sandbox(tmp_path, monkeypatch, capsys):
    _sandbox_off(monkeypatch, tmp_path)
    secret = _secret_file(tmp_path)
    _, text = _run_hostile(tmp_path, monkeypatch, capsys, _read_payloads(secret)["filter_option_from_file"])
    assert SECRET in text


# -- 4. resources ---------------------------------------------------------------------------------

def test_an_output_past_max_output_bytes_fails_that_file(tmp_path, monkeypatch, capsys):
    _complete_sandbox()
    # 20 s of 48 kHz stereo 32-bit float is 7.7 MB, past the 1 MiB cap
    summary, _ = _run_hostile(tmp_path, monkeypatch, capsys, {"output": ["-ar", "48000", "-ac", "2", "-c:a", "pcm_f32le"]},
                              seconds=20, max_output_bytes=1024**2)
    assert summary["failures"][0]["reason"] == "output_too_large", summary["failures"]
    assert not (tmp_path / "out" / "a.wav").exists()


def test_the_helper_refuses_processes_and_other_programs(tmp_path):
    status = _complete_sandbox()
    helper = status.helper
    # the shell may run, but not start another program (fork refused, and exec of /bin/true too)
    marker = tmp_path / "ran"
    res = subprocess.run([helper, "--write", str(tmp_path), "--", "/bin/sh", "-c", f"/bin/true && echo yes > {marker}"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and not marker.exists(), res
    # the same with a builtin only: the shell itself and the write folder work
    res = subprocess.run([helper, "--write", str(tmp_path), "--", "/bin/sh", "-c", f"echo yes > {marker}"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and marker.read_text() == "yes\n", res


def test_the_helper_sets_the_resource_limits(tmp_path):
    status = _complete_sandbox()
    script = "import resource as r; print(r.getrlimit(r.RLIMIT_FSIZE)[0], r.getrlimit(r.RLIMIT_CORE)[0], r.getrlimit(r.RLIMIT_NPROC)[0])"
    res = subprocess.run([status.helper, "--fsize", "12345", "--nproc", "77",
                          "--lib", sys.base_prefix, "--lib", sys.prefix, "--", sys.executable, "-S", "-c", script],
                         capture_output=True, text=True)
    assert res.stdout.split() == ["12345", "0", "77"], res


def test_ffmpeg_sees_none_of_ffleets_environment(monkeypatch):
    _complete_sandbox()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("FFREPORT", "file=/tmp/ffreport.log")  # would make FFmpeg write a log where it says
    res = run_process(["/usr/bin/env"], timeout=30, capture_stdout=True)
    env = res.stdout.decode()
    assert res.returncode == 0 and "PATH=" in env
    assert SECRET not in env and "FFREPORT" not in env


def test_probe_reports_what_the_kernel_enforces():
    status = _complete_sandbox()
    found = json.loads(subprocess.run([status.helper, "--probe"], capture_output=True, text=True).stdout)
    assert found["landlock_abi"] >= 1 and found["files_blocked"] and found["sockets_blocked"] and found["fork_blocked"]


# -- 5. require_sandbox ---------------------------------------------------------------------------

def test_require_sandbox_refuses_to_start_without_it(tmp_path, monkeypatch):
    _sandbox_off(monkeypatch, tmp_path)
    inp = tmp_path / "in"
    make_tone(inp / "a.wav", 0.5)
    request = parse_request({"name": "r", "input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out")},
                             "processing": {"require_sandbox": True}})
    with pytest.raises(sandbox.SandboxRequired, match="require_sandbox"):
        run_request(request, workers=1, work_dir=tmp_path / "work")
    assert not (tmp_path / "out").exists()


def test_require_sandbox_defaults_to_the_environment(monkeypatch):
    monkeypatch.delenv("FFLEET_REQUIRE_SANDBOX", raising=False)
    assert sandbox.required_by_default() is False
    monkeypatch.setenv("FFLEET_REQUIRE_SANDBOX", "1")
    assert sandbox.required_by_default() is True


def test_ffleet_run_says_why_it_refuses(tmp_path):
    from conftest import run_cli, write_json

    inp = tmp_path / "in"
    make_tone(inp / "a.wav", 0.5)
    req = write_json(tmp_path / "job.json", {"name": "r", "input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out")},
                                             "processing": {"require_sandbox": True}})
    p = run_cli("run", str(req), "--no-progress", env={"FFLEET_SANDBOX_HELPER": str(tmp_path / "none")})
    assert p.returncode == 2 and "require_sandbox" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_the_helper_builds_from_source(tmp_path):
    if not (os.environ.get("CC") or __import__("shutil").which("cc") or __import__("shutil").which("gcc")):
        pytest.skip("no C compiler")
    built = sandbox.build_helper(tmp_path / "helper")
    assert json.loads(subprocess.run([str(built), "--probe"], capture_output=True, text=True).stdout)["seccomp"] is True


def test_ffmpeg_gets_a_fixed_path_and_locale_and_only_the_gpu_and_qemu_variables(monkeypatch):
    # FFmpeg runs with none of ffleet's environment (AWS credentials, a user's PATH): only the
    # variables the NVIDIA runtime and QEMU need pass
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("PATH", "/home/someone/bin:/usr/bin")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")
    monkeypatch.setenv("XNVIDIA_NOT_A_PREFIX", "x")
    env = sandbox.child_env()
    assert env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "NVIDIA_VISIBLE_DEVICES": "0",
                   "CUDA_VISIBLE_DEVICES": "1", "QEMU_LD_PREFIX": "/usr/aarch64-linux-gnu"}


def test_ffmpeg_inherits_no_descriptor_of_ffleet_beyond_stdin_stdout_and_stderr(tmp_path):
    # a descriptor ffleet's process holds inheritable (a library's, say) must not reach the program
    # (close_fds: posix_spawn, which closes nothing itself, measured no cheaper per file here)
    _complete_sandbox()
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    read_end, write_end = os.pipe()
    leaked = 57
    os.dup2(write_end, leaked, inheritable=True)
    try:
        # bash builtins only (no new process, no file opened): write to the inherited descriptor
        run = run_process([bash, "-c", f"echo leaked >&{leaked}; echo done"], timeout=30)
    finally:
        os.close(leaked)
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b""  # every writer is closed now: EOF, nothing written
    assert "Bad file descriptor" in run.stderr, run.stderr
