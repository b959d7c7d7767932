"""The sandboxed verifier: long-lived PyAV processes that read outputs back, one JSON line per request."""
from __future__ import annotations

import functools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from ffleet import sandbox
from ffleet.ffmpeg import exited_within
from ffleet.sandbox import Confinement

# Why a process of its own: PyAV reads an output for 0.5 ms of CPU against 6.6 ms for a static
# ffprobe started per file, but in ffleet's own process it parses bytes a user's options chose
# outside the kernel sandbox, where a Batch job holds AWS credentials. A verifier, started on the
# first output and kept for the batch (shared by the worker threads; another starts only while one
# is busy), runs in the same sandbox as FFmpeg (read-only to the run's work folder, no sockets, no
# new processes, none of ffleet's environment): the isolation of ffprobe for about the CPU of PyAV
# (bench/verify_cost.py).

# libav gives up opening a file after 60 s (ffleet.verify); a verifier silent for longer is stuck
ANSWER_TIMEOUT_SECONDS = 75.0
START_TIMEOUT_SECONDS = 60.0  # Python and `import av`: about 0.15 s of CPU, more on a loaded machine
# how long a thread waits for a busy verifier before it starts another (a read takes about 1 ms)
PATIENCE_SECONDS = 0.05
_MAX_ANSWER_BYTES = 1 << 20
_STDERR_BYTES = 1 << 20  # RLIMIT_FSIZE: Landlock already refuses every other file
_READY = "ready"


class VerifierUnavailable(RuntimeError):
    """A verifier could not start here (the sandbox refused it, `av` is missing in it): not the file's fault."""


class NoAnswer(RuntimeError):
    """The verifier crashed, stayed silent or answered garbage while reading one file: that file's fault."""


@dataclass
class Answer:
    info: dict | None  # verify.MediaInfo's fields, None: the file does not open as media
    stderr: str  # libav's log lines while opening, e.g. "[hls @ 0x1] Format not on whitelist ..."
    cpu_seconds: float  # the verifier's own CPU for this file


def available() -> bool:
    """Whether `av` is installed (found, not imported: importing it costs ffleet 60 ms at start)."""
    if "av" in sys.modules:  # imported here already, or made unimportable (None)
        return sys.modules["av"] is not None
    return _av_installed()


@functools.cache  # asked for every output: find_spec walks sys.path (about 57 us), installs do not change mid-run
def _av_installed() -> bool:
    try:
        return find_spec("av") is not None
    except (ImportError, ValueError):
        return False


def _python_read_paths() -> list[str]:
    """What the verifier's Python must read: its standard library, site-packages (PyAV and its
    bundled libav), the venv's pyvenv.cfg, libpython, and the folder this ffleet is imported from."""
    import sysconfig  # here, not at ffleet's start: only a verifier's start needs it

    paths = {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(os.path.join(sys.prefix, "pyvenv.cfg"))
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and sysconfig.get_config_var("LIBDIR"):
        paths.add(sysconfig.get_config_var("LIBDIR"))
    paths.add(str(Path(__file__).resolve().parents[1]))
    spec = find_spec("av")
    if spec and spec.origin:  # av installed somewhere else on sys.path
        paths.add(str(Path(spec.origin).resolve().parents[1]))
    return sorted(p for p in paths if p and os.path.exists(p))


def server_argv(read: tuple[str, ...]) -> list[str]:
    """The command that starts one verifier: ffleet's sandbox helper, then Python running serve().

    It may read `read` (the run's work folder) and Python's own files, write nothing but /dev/null
    and its stderr (a file ffleet opened for it, capped so that a traceback fits: why it did not start).
    -P: the working folder is not put on sys.path; -s: no user site-packages."""
    confinement = Confinement(read=(*read, *_python_read_paths()), max_output_bytes=_STDERR_BYTES)
    return [*sandbox.prefix(confinement), sys.executable, "-P", "-s", "-m", "ffleet.verifier"]


def server_env() -> dict[str, str]:
    """FFmpeg's environment (none of ffleet's own) and where this ffleet is, so that the verifier
    runs the same code as its parent (an editable install or PYTHONPATH may differ)."""
    return {**sandbox.child_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "PYTHONDONTWRITEBYTECODE": "1"}


# Verifiers are started from one thread that lives as long as ffleet: the kernel sends the
# parent-death signal (which the sandbox helper sets) when the *thread* that started a process
# ends, and a verifier outlives the worker thread that first needed it.
_spawn_requests: queue.SimpleQueue = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list[str], **popen_args) -> subprocess.Popen:
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawn_loop, name="ffleet-verifier-spawner", daemon=True)
            _spawner.start()
    done, box = threading.Event(), {}
    _spawn_requests.put((argv, popen_args, box, done))
    done.wait()
    if "error" in box:
        raise box["error"]
    return box["proc"]


def _spawn_loop() -> None:
    while True:
        argv, popen_args, box, done = _spawn_requests.get()
        try:
            box["proc"] = subprocess.Popen(argv, **popen_args)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that asked
            box["error"] = exc
        done.set()


class _Server:
    """One verifier process and its pipes."""

    def __init__(self, argv: list[str], registry=None) -> None:
        self._err = tempfile.TemporaryFile()
        self.proc = _spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                           env=server_env(), cwd="/", start_new_session=True, close_fds=True, bufsize=0)
        self.registry = registry
        if registry is not None:
            registry.add(self.proc)
        self._buffer = b""
        self._waited = None  # (status, rusage) once reaped
        self.cpu_seconds = 0.0  # from wait4 when it has ended: startup and every file

    def alive(self) -> bool:
        if self._waited is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._waited = status, usage
        return self._waited is None

    def stderr_tail(self, limit: int = 2000) -> str:
        self._err.seek(0, os.SEEK_END)
        size = self._err.tell()
        self._err.seek(max(0, size - limit))
        return self._err.read().decode("utf-8", "replace").strip()

    def readline(self, timeout: float) -> bytes:
        """One line from the verifier; NoAnswer on EOF (it ended), silence past timeout, or a flood."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer(f"the verifier gave no answer in {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise NoAnswer("the verifier ended without an answer")
            self._buffer += chunk
            if len(self._buffer) > _MAX_ANSWER_BYTES:
                raise NoAnswer("the verifier's answer is over 1 MiB")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def ask(self, request: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        except OSError as exc:  # a closed pipe: it has ended
            raise NoAnswer(f"the verifier ended before the request ({exc})") from None
        line = self.readline(timeout)
        try:
            answer = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NoAnswer("the verifier answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise NoAnswer("the verifier answered something that is not an answer")
        return answer

    def stop(self, kill: bool) -> str:
        """End it (closing stdin ends a healthy verifier) and reap it; returns how it ended."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if kill and self._waited is None:
            _killpg(self.proc.pid)
        if self._waited is None:
            try:
                self._waited = _wait4(self.proc.pid, 5)
            except subprocess.TimeoutExpired:  # stdin closed, yet still reading a file: it is stuck
                _killpg(self.proc.pid)
                self._waited = os.wait4(self.proc.pid, 0)[1:]
        status, usage = self._waited
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.proc.stdout.close()
        if self.registry is not None:
            self.registry.discard(self.proc)
        ended = self.proc.returncode
        self._err.close()
        if ended < 0:
            return f"killed by {signal.Signals(-ended).name}"
        return f"exit {ended}"


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait4(pid: int, timeout: float):
    """(status, rusage) of the child pid, once it ends within timeout."""
    ended = exited_within(pid, timeout)  # no sleeping past its end
    if ended is not None:
        if not ended:
            raise subprocess.TimeoutExpired(str(pid), timeout)
        return os.wait4(pid, 0)[1:]
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(str(pid), timeout)
        time.sleep(0.01)


class VerifierPool:
    """Verifiers for one run, allowed to read the `read` folders, started on first use and kept.

    A thread takes an idle verifier, else waits for a busy one that is starting or has been reading
    for under PATIENCE_SECONDS, else starts another: a read takes about a millisecond and FFmpeg far
    longer, so one verifier usually serves every thread, and a slow or stuck file holds up no one
    for long. One that fails a file is killed; the next file gets a new one."""

    def __init__(self, read: tuple[str, ...], registry=None) -> None:
        self.read = tuple(str(Path(p).resolve()) for p in read)
        self.registry = registry
        self._idle: list[_Server] = []
        self._busy: dict[object, float | None] = {}  # server (or a start's token) -> since when (None: starting)
        self._cond = threading.Condition()
        self.started = 0
        self.cpu_seconds = 0.0  # of the verifiers that have ended (wait4)
        self.unavailable: str | None = None  # why a verifier could not start here, once known
        self._finalizer = weakref.finalize(self, _stop_all, self._idle)

    def can_read(self, path: Path) -> bool:
        resolved = os.path.realpath(path)  # asked for every output: half the CPU of Path.resolve()
        return any(resolved == root or resolved.startswith(root + os.sep) for root in self.read)

    def _take(self) -> _Server:
        with self._cond:
            while True:
                while self._idle:
                    server = self._idle.pop()
                    if server.alive():
                        self._busy[server] = time.monotonic()
                        return server
                    self._end(server, kill=True)  # died while idle (killed from outside)
                if self.unavailable:
                    raise VerifierUnavailable(self.unavailable)
                now = time.monotonic()
                waits = [1.0 if since is None else PATIENCE_SECONDS - (now - since) for since in self._busy.values()]
                waits = [w for w in waits if w > 0]
                if not waits:
                    break
                self._cond.wait(min(waits))
            token = object()
            self._busy[token] = None
        try:
            server = self._start()
        finally:
            with self._cond:
                del self._busy[token]
                self._cond.notify_all()
        with self._cond:
            self._busy[server] = time.monotonic()
        return server

    def _start(self) -> _Server:
        try:
            server = _Server(server_argv(self.read), self.registry)
        except OSError as exc:  # no Python or helper to run
            self.unavailable = f"the verifier did not start: {exc}"
            raise VerifierUnavailable(self.unavailable) from None
        self.started += 1
        try:
            hello = server.ask({"hello": True}, START_TIMEOUT_SECONDS)
        except NoAnswer as exc:
            tail = server.stderr_tail()
            ended = self._end(server, kill=True)
            self.unavailable = f"the verifier did not start ({ended}): {tail or exc}"
            raise VerifierUnavailable(self.unavailable) from None
        if hello.get(_READY) is not True:
            self._end(server, kill=True)
            self.unavailable = f"the verifier did not start: {str(hello)[:300]}"
            raise VerifierUnavailable(self.unavailable)
        return server

    def _end(self, server: _Server, kill: bool) -> str:
        ended = server.stop(kill)
        self.cpu_seconds += server.cpu_seconds
        return ended

    def _give_back(self, server: _Server, failed: bool) -> str | None:
        with self._cond:
            self._busy.pop(server, None)
            ended = self._end(server, kill=True) if failed else None
            if not failed:
                self._idle.append(server)
            self._cond.notify_all()
        return ended

    def ask(self, path: Path, guard: list[str], timeout: float | None = None) -> Answer:
        """What the verifier reads in path. NoAnswer: it failed on this file (and was replaced);
        VerifierUnavailable: none can start here."""
        server = self._take()
        try:
            raw = server.ask({"path": str(path), "guard": guard}, timeout or ANSWER_TIMEOUT_SECONDS)
            answer = _checked(raw)
        except NoAnswer as exc:
            ended = self._give_back(server, failed=True)
            raise NoAnswer(f"{exc} ({ended})") from None
        except BaseException:
            self._give_back(server, failed=True)
            raise
        self._give_back(server, failed=False)
        return answer

    def close(self) -> None:
        """End every idle verifier and reap it (its CPU joins cpu_seconds)."""
        with self._cond:
            idle, self._idle[:] = list(self._idle), []
        for server in idle:
            self._end(server, kill=False)


def self_test() -> str | None:
    """Start one verifier (allowed to read an empty folder) and end it: None, or why it cannot start."""
    with tempfile.TemporaryDirectory(prefix="ffleet-verifier-") as folder:
        pool = VerifierPool((folder,))
        try:
            pool._give_back(pool._take(), failed=False)
            pool.close()
        except VerifierUnavailable as exc:
            return str(exc)
    return None


def _stop_all(idle: list[_Server]) -> None:
    for server in list(idle):
        server.stop(kill=False)
    idle.clear()


_INFO_TYPES = {"stream_types": list, "duration": (int, float), "codec": str, "sample_rate": int,
               "channels": int, "format_name": str}


def _checked(raw: dict) -> Answer:
    """The answer, if it has the shape serve() gives; a verifier that says anything else is not believed."""
    info, stderr, cpu = raw.get("info"), raw.get("stderr", ""), raw.get("cpu", 0.0)
    if not isinstance(stderr, str) or not isinstance(cpu, (int, float)) or isinstance(cpu, bool):
        raise NoAnswer("the verifier's answer has the wrong shape")
    if info is not None:
        if not isinstance(info, dict) or set(info) != set(_INFO_TYPES):
            raise NoAnswer("the verifier's answer has the wrong shape")
        for name, kind in _INFO_TYPES.items():
            value = info[name]
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise NoAnswer(f"the verifier's answer has the wrong shape ({name})")
        if not all(isinstance(t, str) for t in info["stream_types"]):
            raise NoAnswer("the verifier's answer has the wrong shape (stream_types)")
    return Answer(info, stderr, float(cpu))


def serve(stdin=None, stdout=None) -> int:
    """The verifier's loop: a request line {"path", "guard"} in, an answer line out, until stdin ends.

    It reads with ffleet.verify's PyAV code (the input whitelists, no decoder), and collects libav's
    log lines so that the worker can say why a file did not open."""
    from dataclasses import asdict

    import av
    import av.logging

    from ffleet.verify import read_with_pyav

    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    av.logging.set_level(av.logging.ERROR)
    for line in stdin:
        request = json.loads(line)
        if request.get("hello"):
            answer = {_READY: True, "av": av.__version__}
        else:
            started = time.process_time()
            errors: list[str] = []
            with av.logging.Capture() as logs:
                info = read_with_pyav(av, Path(request["path"]), request["guard"], errors)
            # why it did not open: libav's log (which demuxer the whitelist refused) and its error
            lines = [f"[{name or 'libav'} @ 0x0] {message.strip()}" for _, name, message in logs] + errors
            answer = {"info": asdict(info) if info is not None else None,
                      "stderr": "\n".join(lines)[-4000:] if info is None else "",
                      "cpu": time.process_time() - started}
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.flush()
    return 0


if __name__ == "__main__":
    code = serve()
    # Every answer is written and flushed, and nothing else is open for writing: skip the
    # interpreter's teardown (unloading libav and every module), which ffleet waited for at the end
    # of each batch.
    os._exit(code)
