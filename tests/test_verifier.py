"""The sandboxed verifier: confined to the run's work folder, and one that fails fails only its file."""
import os
import shutil
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest

from conftest import run_cli
from ffleet import sandbox, verifier, verify, wav_header
from ffleet.demo import make_tone
from ffleet.ffmpeg import Binaries, find_binaries, input_guard
from ffleet.request import parse_request
from ffleet.results import FAILED, SUCCEEDED
from ffleet.sandbox import SandboxRequired
from ffleet.storage import ListedObject
from ffleet.verifier import NoAnswer, VerifierPool
from ffleet.worker import WorkContext, process_item, run_items

pytest.importorskip("av")


@pytest.fixture(autouse=True)
def default_reader(monkeypatch):
    monkeypatch.delenv("FFLEET_VERIFY", raising=False)
    monkeypatch.setattr(verify, "_av", None)
    # these tests are about the verifier, which a plain PCM WAV no longer reaches (ffleet.wav_header)
    monkeypatch.setattr(wav_header, "read", lambda path, whitelist: None)


@pytest.fixture
def sandbox_off(monkeypatch):
    """No helper: the verifier runs as FFmpeg then would (pdeathsig, a clean environment, no rules)."""
    monkeypatch.setenv("FFLEET_SANDBOX_HELPER", "/nonexistent/ffleet-sandbox")
    sandbox.helper_path.cache_clear()
    sandbox.sandbox_status.cache_clear()
    yield
    monkeypatch.delenv("FFLEET_SANDBOX_HELPER")
    sandbox.helper_path.cache_clear()
    sandbox.sandbox_status.cache_clear()


def _needs_sandbox():
    if not sandbox.sandbox_status().available:
        pytest.skip(f"the sandbox is not available here: {sandbox.sandbox_status().describe()}")


def _ask(pool: VerifierPool, path, guard=None):
    try:
        return pool.ask(Path(path), guard or input_guard())
    finally:
        pool.close()


@pytest.mark.parametrize("target", ["a tone outside the work folder", "/etc/passwd"])
@pytest.mark.parametrize("confined", [True, False], ids=["sandboxed", "sandbox-off"])
def test_the_verifier_reads_nothing_outside_the_work_folder(tmp_path, request, target, confined):
    """A request (as a subverted verifier could make one) for a file outside the work folder is
    refused by the kernel; the same request with the sandbox off reads the file."""
    if confined:
        _needs_sandbox()
    else:
        request.getfixturevalue("sandbox_off")
    work = tmp_path / "work"
    work.mkdir()
    inside = make_tone(work / "in.flac", 1.0, ".flac")
    outside = make_tone(tmp_path / "secret.flac", 1.0, ".flac") if target.startswith("a tone") else Path(target)
    pool = VerifierPool((str(work),))
    assert _ask(pool, inside).info["codec"] == "flac"  # it works where it may read
    answer = _ask(pool, outside)
    if confined:
        assert answer.info is None and "Permission denied" in answer.stderr, answer
    else:
        assert "Permission denied" not in answer.stderr, answer
        if target.startswith("a tone"):
            assert answer.info["codec"] == "flac" and answer.info["duration"] == pytest.approx(1.0, abs=0.01)
        else:  # read, and found not to be media
            assert answer.info is None and "Invalid data" in answer.stderr, answer


@pytest.mark.parametrize("confined", [True, False], ids=["sandboxed", "sandbox-off"])
def test_the_verifier_opens_no_socket(tmp_path, request, confined):
    """Asked to open tcp:// (the guard it is sent allows it), the verifier cannot create a socket;
    with the sandbox off the listener sees it connect."""
    if confined:
        _needs_sandbox()
    else:
        request.getfixturevalue("sandbox_off")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    connected = []

    def accept():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        connected.append(True)
        conn.close()  # libav then fails at once instead of waiting for data

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    guard = ["-protocol_whitelist", "file,tcp", "-format_whitelist", "wav"]
    answer = _ask(VerifierPool((str(tmp_path),)), f"tcp://127.0.0.1:{listener.getsockname()[1]}", guard)
    if confined:
        listener.close()
    thread.join(15)
    listener.close()
    assert answer.info is None
    if confined:
        assert not connected and "Permission denied" in answer.stderr, answer
    else:
        assert connected, answer


# A verifier that misbehaves on files whose bytes say so, and reads the others as the real one does
_STAND_IN = """
import os, signal, sys, time
from ffleet import verifier, verify
real = verify.read_with_pyav
def read(av, path, guard, errors=None):
    head = open(path, "rb").read(8)
    if head == b"CRASH!!!":
        os.kill(os.getpid(), signal.SIGSEGV)
    if head == b"HANG!!!!":
        time.sleep(3600)
    if head == b"GARBAGE!":
        sys.stdout.buffer.write(b"this is not an answer\\n"); sys.stdout.buffer.flush()
    if head == b"LIES!!!!":
        sys.stdout.buffer.write(b'{"info": {"stream_types": "audio"}, "stderr": "", "cpu": 0}\\n'); sys.stdout.buffer.flush()
    return real(av, path, guard, errors)
verify.read_with_pyav = read
sys.exit(verifier.serve())
"""


@pytest.fixture
def misbehaving_verifier(monkeypatch):
    real = verifier.server_argv
    pids = []

    def argv(read):
        args = real(read)
        return [*args[:-2], "-c", _STAND_IN]  # ... python -P -s -m ffleet.verifier -> -c STAND_IN

    class Recording(verifier._Server):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            pids.append(self.proc.pid)

    monkeypatch.setattr(verifier, "server_argv", argv)
    monkeypatch.setattr(verifier, "_Server", Recording)
    monkeypatch.setattr(verifier, "ANSWER_TIMEOUT_SECONDS", 3.0)
    return pids


def copying_ffmpeg(tmp_path) -> Binaries:
    """An 'FFmpeg' that copies its input to its output, so a test chooses the output's bytes. It
    logs the input as FFmpeg does, so the worker reads only the output back."""
    script = tmp_path / "copy-ffmpeg"
    script.write_text(f"#!{sys.executable}\nimport shutil, sys\n"
                      "shutil.copyfile(sys.argv[sys.argv.index('-i') + 1], sys.argv[-1])\n"
                      "sys.stderr.write(\"Input #0, wav, from 'x':\\n  Duration: 00:00:01.00, bitrate: 1411 kb/s\\n"
                      "  Stream #0:0: Audio: pcm_s16le, 44100 Hz, stereo, s16, 1411 kb/s\\n\")\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return Binaries(str(script), "")  # no ffprobe: the verifier's verdicts stand alone


def make_ctx(tmp_path, binaries: Binaries, **processing) -> WorkContext:
    request = parse_request({
        "name": "t", "input": {"path": str(tmp_path / "in")},
        "output": {"path": str(tmp_path / "out"), "extension": ".wav", "file_options": "-c copy"},
        "processing": {"verify_duration": False, **processing},
    })
    (tmp_path / "in").mkdir(exist_ok=True)
    ctx = WorkContext.for_request(request, work_dir=tmp_path / "work")
    ctx.binaries = binaries
    return ctx


def put(tmp_path, key, data: bytes) -> ListedObject:
    (tmp_path / "in" / key).write_bytes(data)
    return ListedObject(key, len(data))


def _reaped(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")  # a zombie would still be listed


@pytest.mark.parametrize("fault, says", [
    ("CRASH!!!", "ended without an answer (killed by SIGSEGV)"),
    ("HANG!!!!", "gave no answer in 3 s (killed by SIGKILL)"),
    ("GARBAGE!", "not JSON"),
    ("LIES!!!!", "wrong shape"),
])
def test_a_verifier_that_fails_fails_only_its_file(tmp_path, tone_cache, misbehaving_verifier, fault, says):
    """Crash, hang, garbage or a malformed answer: that file is invalid_output, the verifier is
    killed and reaped, and the next file gets a fresh one that reads it."""
    ctx = make_ctx(tmp_path, copying_ffmpeg(tmp_path))
    good = tone_cache(".wav", 1.0).read_bytes()
    items = [put(tmp_path, "a.wav", good), put(tmp_path, "bad.wav", fault.encode() + good[8:]),
             put(tmp_path, "c.wav", good), put(tmp_path, "d.wav", good)]
    results = {r.key: r for r in (process_item(ctx, item) for item in items)}
    bad = results.pop("bad.wav")
    assert (bad.status, bad.reason) == (FAILED, "invalid_output") and says in bad.detail, bad
    assert all(r.status == SUCCEEDED and r.codec == "pcm_s16le" for r in results.values()), results
    assert not (tmp_path / "out" / "bad.wav").exists()
    assert ctx.verifiers.started == 2 and len(misbehaving_verifier) == 2  # the first, then one after the failure
    assert _reaped(misbehaving_verifier[0])
    ctx.verifiers.close()
    assert all(_reaped(pid) for pid in misbehaving_verifier)


def test_a_verifier_that_cannot_start_is_a_sandbox_error_without_ffprobe(tmp_path, tone_cache, monkeypatch):
    """Not the file's fault: sandbox_error, saying why; with ffprobe there, ffprobe reads instead."""
    monkeypatch.setattr(verifier, "server_argv", lambda read: [sys.executable, "-c", "import sys; sys.exit('no av here')"])
    good = tone_cache(".wav", 1.0).read_bytes()
    ctx = make_ctx(tmp_path, copying_ffmpeg(tmp_path))
    r = process_item(ctx, put(tmp_path, "a.wav", good))
    assert (r.status, r.reason) == (FAILED, "sandbox_error") and "no av here" in r.detail, r
    with_ffprobe = Binaries(ctx.binaries.ffmpeg, find_binaries().ffprobe)
    ctx = make_ctx(tmp_path, with_ffprobe)
    r = process_item(ctx, put(tmp_path, "b.wav", good))
    assert r.status == SUCCEEDED and r.codec == "pcm_s16le", r


def test_a_verifier_that_cannot_start_in_the_sandbox_says_why(monkeypatch):
    """Its stderr (the traceback) reaches the message: the sandbox lets it write that file alone."""
    real = verifier.server_argv
    monkeypatch.setattr(verifier, "server_argv", lambda read: [*real(read)[:-1], "ffleet.no_such_module"])
    with pytest.raises(verifier.VerifierUnavailable, match="No module named ffleet.no_such_module"):
        _ask(VerifierPool(("/tmp",)), "/tmp/x.wav")


def test_without_ffprobe_the_verifier_says_why_a_playlist_output_fails(tmp_path, tone_cache):
    """The refused demuxer is named from the verifier's own log, as ffprobe's log named it."""
    secret = make_tone(tmp_path / "secret.mp3", 1.0)
    ctx = make_ctx(tmp_path, copying_ffmpeg(tmp_path))
    (tmp_path / "work").mkdir(exist_ok=True)
    shutil.copy(secret, tmp_path / "work")
    r = process_item(ctx, put(tmp_path, "x.wav", f"ffconcat version 1.0\nfile '{secret.name}'\nduration 1\n".encode()))
    assert (r.status, r.reason) == (FAILED, "invalid_output"), r
    assert "reads as concat" in r.detail, r.detail


def test_an_unknown_reader_is_refused_before_any_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FFLEET_VERIFY", "pyav-sandboxed")
    with pytest.raises(ValueError, match="FFLEET_VERIFY='pyav-sandboxed': use 'pyav'"):
        make_ctx(tmp_path, find_binaries())


def test_a_request_that_requires_the_sandbox_refuses_the_in_process_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("FFLEET_VERIFY", "pyav")
    with pytest.raises(SandboxRequired, match="FFLEET_VERIFY=pyav"):
        make_ctx(tmp_path, find_binaries(), require_sandbox=True)
    monkeypatch.delenv("FFLEET_VERIFY")
    assert make_ctx(tmp_path, find_binaries(), require_sandbox=True).verifiers.started == 0  # started on first use


def _our_verifiers() -> list[int]:
    """Verifier processes running this worktree's ffleet (their PYTHONPATH names its src)."""
    src = str(Path(verifier.__file__).resolve().parents[1]).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if b"ffleet.verifier" in cmdline and b"PYTHONPATH=" + src + b"\0" in environ + b"\0":
            found.append(int(entry))
    return found


def test_a_run_leaves_no_verifier_behind(tmp_path, tone_cache):
    """Two worker threads, each with its verifier, all ended and reaped when the batch ends."""
    ctx = make_ctx(tmp_path, find_binaries())
    ctx.request.output.file_options = "-ac 1"
    ctx.tokens = ctx.request.option_tokens()
    good = tone_cache(".wav", 1.0).read_bytes()
    items = [put(tmp_path, f"{i}.wav", good) for i in range(6)]
    results = list(run_items(ctx, items, workers=2))
    assert all(r.status == SUCCEEDED and r.channels == 1 for r in results), results
    assert 1 <= ctx.verifiers.started <= 2 and ctx.verifiers.cpu_seconds > 0
    assert _our_verifiers() == []
    zombies = [line for line in os.popen(f"ps -o pid=,stat= --ppid {os.getpid()}").read().splitlines() if "Z" in line]
    assert zombies == []


def test_the_cli_leaves_no_verifier_behind(tmp_path, tone_cache):
    import json

    (tmp_path / "in").mkdir()
    for i in range(3):
        shutil.copy(tone_cache(".wav", 1.0), tmp_path / "in" / f"{i}.wav")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "t", "input": {"path": str(tmp_path / "in")},
                               "output": {"path": str(tmp_path / "out"), "file_options": "-ac 1"}}))
    proc = run_cli("run", str(job), "--no-progress", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").iterdir())) == 3
    assert _our_verifiers() == []


def test_answers_of_the_wrong_shape_are_not_believed():
    good = {"info": {"stream_types": ["audio"], "duration": 1.0, "codec": "flac", "sample_rate": 48000,
                     "channels": 1, "format_name": "flac"}, "stderr": "", "cpu": 0.001}
    assert verifier._checked(good).info["codec"] == "flac"
    for broken in ({**good, "cpu": True}, {**good, "stderr": None}, {**good, "info": []},
                   {**good, "info": {**good["info"], "duration": "1.0"}},
                   {**good, "info": {**good["info"], "channels": True}},
                   {**good, "info": {**good["info"], "stream_types": [1]}},
                   {**good, "info": {**good["info"], "extra": 1}}):
        with pytest.raises(NoAnswer):
            verifier._checked(broken)


@pytest.mark.parametrize("av_installed", [True, False])
def test_doctor_names_the_verifier_and_needs_no_ffprobe_with_it(monkeypatch, av_installed):
    """The cpu image ships no ffprobe (FFLEET_FFPROBE points nowhere): fine with the verifier,
    a problem where PyAV is missing and ffprobe would read the outputs."""
    from ffleet import doctor

    monkeypatch.setenv("FFLEET_FFMPEG", find_binaries().ffmpeg)
    monkeypatch.setenv("FFLEET_FFPROBE", "/nonexistent/ffprobe")
    monkeypatch.delenv("FFLEET_REQUIRE_SANDBOX", raising=False)
    if not av_installed:
        monkeypatch.setitem(sys.modules, "av", None)
    find_binaries.cache_clear()
    try:
        d = doctor.diagnose()
    finally:
        find_binaries.cache_clear()
    text = doctor.format_diagnosis(d)
    if av_installed:
        assert d.sections["verifier"] == {"reader": "verifier", "detail": d.sections["verifier"]["detail"]}
        assert d.sections["ffprobe"]["needed"] is False and d.ready, d.problems
        assert "in the sandbox" in text and "ffprobe  not used" in text
    else:
        assert d.sections["verifier"]["reader"] == "ffprobe" and not d.ready
        assert any("ffprobe: /nonexistent/ffprobe does not exist" in p for p in d.problems), d.problems


def test_threads_share_a_verifier_but_a_stuck_one_holds_up_no_one(tmp_path, tone_cache, misbehaving_verifier):
    """Reads take about a millisecond: threads wait for a busy verifier rather than start one each;
    a verifier stuck on a file is not waited for past PATIENCE_SECONDS: another starts."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    good = tone_cache(".wav", 1.0).read_bytes()
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.wav")
        paths[-1].write_bytes(good)
    stuck = tmp_path / "stuck.wav"
    stuck.write_bytes(b"HANG!!!!" + good[8:])
    pool = VerifierPool((str(tmp_path),))
    try:
        with ThreadPoolExecutor(4) as threads:
            answers = list(threads.map(lambda p: pool.ask(p, input_guard()), paths))
        assert all(a.info["codec"] == "pcm_s16le" for a in answers) and pool.started == 1
        with ThreadPoolExecutor(2) as threads:
            hung = threads.submit(pool.ask, stuck, input_guard(), 10)  # time for a second verifier to start
            time.sleep(0.5)  # the hang has begun
            answer = threads.submit(pool.ask, paths[0], input_guard()).result()
            assert answer.info["codec"] == "pcm_s16le" and not hung.done(), hung.exception()  # read while the other hangs
            with pytest.raises(NoAnswer, match="no answer in 10 s"):
                hung.result()
        assert pool.started == 2
    finally:
        pool.close()
    assert all(_reaped(pid) for pid in misbehaving_verifier)


def test_a_verifier_that_does_not_end_is_waited_for_no_longer_than_the_timeout():
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            verifier._wait4(proc.pid, 0.3)
        assert time.monotonic() - started < 10  # bounded by the timeout, not by the child's 30 s
    finally:
        proc.kill()
    status, usage = verifier._wait4(proc.pid, 10)  # ended now: reaped, with its CPU
    assert os.waitstatus_to_exitcode(status) == -9 and usage.ru_utime >= 0
    proc.returncode = -9  # reaped here, not by Popen


def test_a_verifier_ends_at_the_end_of_its_input_without_a_traceback(tmp_path):
    # the batch waits for it at its end: it leaves with os._exit once stdin is done, and with code 0
    import subprocess

    proc = subprocess.run([sys.executable, "-P", "-s", "-m", "ffleet.verifier"], input=b'{"hello": true}\n',
                          capture_output=True, timeout=60, env={**verifier.server_env(), "PYTHONPATH": str(Path(verifier.__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b'{"ready": true') and proc.stderr == b""
