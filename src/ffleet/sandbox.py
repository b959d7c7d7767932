"""The kernel sandbox around every FFmpeg and ffprobe a run starts: Landlock, seccomp and rlimits.

The option policy (ffleet.policy) is the first layer: it refuses what it knows is dangerous. This is
the second, for what it does not know: each FFmpeg runs under the small C helper `ffleet-sandbox`
(sandbox_helper.c), which sets the parent-death signal, RLIMIT_FSIZE/CORE/NPROC and no_new_privs,
lets the kernel (Landlock) refuse every path but the input (read) and the work folder (write), and a
seccomp filter refuse sockets and new processes, then execs FFmpeg: one exec, as setpriv was before.

The helper is compiled once with the system C compiler into ffleet's cache (or found on PATH, as
the worker image installs it). Where it cannot be built or the kernel lacks Landlock, ffleet says so
once per run; `processing.require_sandbox` (default: FFLEET_REQUIRE_SANDBOX=1, which the worker image
sets) turns that into a refusal before any file is touched.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

HELPER_NAME = "ffleet-sandbox"
HELPER_SOURCE = Path(__file__).with_name("sandbox_helper.c")
HELPER_EXIT = 126  # the helper's own refusals; FFmpeg itself never exits with it
DEFAULT_MAX_OUTPUT_BYTES = 10 * 1024**3  # no honest transcode of one file writes 10 GiB
# A backstop for threads: RLIMIT_NPROC counts every process of the user and does not bind root;
# new processes are refused by seccomp for everyone, threads are capped by the policy's -threads.
MAX_USER_PROCESSES = 4096
# GPU device nodes FFmpeg's NVENC/CUDA path opens; read, write and ioctl on these alone.
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset",
               "/dev/nvidia[0-9]*", "/dev/dri/*")
# Environment FFmpeg may see: it needs none of ffleet's (AWS credentials, FFREPORT, which makes
# FFmpeg write a log file wherever it names, AV_LOG_FORCE_*), except the GPU runtime's and QEMU's.
_KEPT_ENV_PREFIXES = ("NVIDIA_", "CUDA_", "QEMU_")
# FFLEET_SANDBOX_LIBS: folders (os.pathsep-separated) an FFmpeg installed outside /usr needs to read
# and map as code, e.g. /opt/ffmpeg/lib. System library folders are always readable.


@dataclass(frozen=True)
class Confinement:
    """What one FFmpeg may touch: read these paths, write inside these folders, up to this size."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    max_output_bytes: int | None = None


@dataclass
class SandboxStatus:
    """What the sandbox enforces on this machine, from the helper's self-test (`--probe`)."""

    helper: str | None = None
    landlock_abi: int = 0
    landlock: bool = False  # file system rules enforced (the self-test could not open /etc/passwd)
    seccomp: bool = False  # sockets and new processes refused (the self-test tried both)
    problems: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        """Complete: every FFmpeg runs confined to its own files, with no sockets and no processes."""
        return bool(self.helper) and self.landlock and self.seccomp

    def to_dict(self) -> dict:
        return {**asdict(self), "available": self.available}

    def describe(self) -> str:
        if self.available:
            return f"sandbox: Landlock ABI {self.landlock_abi} + seccomp ({self.helper})"
        return "sandbox incomplete: " + "; ".join(self.problems)


class SandboxRequired(ValueError):
    """The request requires the sandbox and this machine cannot give all of it."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ffleet"


# Linked statically where the C library allows (Debian's libc6-dev ships libc.a): the helper is exec'd
# before every FFmpeg, and without the dynamic loader's work each start costs ~0.13 ms less CPU
# (bench/sandbox_overhead.py). Part of the cache name, so a build by the older recipe is not reused.
_CFLAGS = ("-O2", "-Wall", "-Werror")
_STATIC = "-static"


def _cached_helper_path() -> Path:
    import hashlib  # OpenSSL's 3 ms at import: not for a helper given by FFLEET_SANDBOX_HELPER or on PATH

    recipe = " ".join((*_CFLAGS, _STATIC)).encode()
    digest = hashlib.sha256(HELPER_SOURCE.read_bytes() + recipe).hexdigest()[:16]
    return _cache_dir() / f"{HELPER_NAME}-{os.uname().machine}-{digest}"


def build_helper(dest: Path | None = None, compiler: str | None = None) -> Path:
    """Compile sandbox_helper.c (atomically: a half-written helper is never used), statically linked if
    the C library allows, else dynamically. Returns its path."""
    dest = Path(dest or _cached_helper_path())
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FileNotFoundError("no C compiler (cc/gcc) to build the sandbox helper; on Debian: apt-get install gcc libc6-dev")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", dir=dest.parent)
    os.close(fd)
    try:
        for link in ([_STATIC], []):  # without a static C library (no libc.a): dynamic
            res = subprocess.run([cc, *_CFLAGS, *link, "-o", tmp, str(HELPER_SOURCE)],
                                 capture_output=True, text=True, timeout=120)
            if res.returncode == 0:
                break
        if res.returncode != 0:
            raise RuntimeError(f"building the sandbox helper failed:\n{res.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


@lru_cache(maxsize=1)
def helper_path() -> str | None:
    """FFLEET_SANDBOX_HELPER, else `ffleet-sandbox` on PATH (the worker image), else ffleet's cached
    build of this version's source, built now if a C compiler is there. None: no helper."""
    configured = os.environ.get("FFLEET_SANDBOX_HELPER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    on_path = shutil.which(HELPER_NAME)
    if on_path:
        return on_path
    if not sys.platform.startswith("linux"):
        return None
    cached = _cached_helper_path()
    if os.access(cached, os.X_OK):
        return str(cached)
    try:
        return str(build_helper(cached))
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return None


@lru_cache(maxsize=1)
def sandbox_status() -> SandboxStatus:
    """Run the helper's self-test once per process and say what this kernel enforces."""
    status = SandboxStatus()
    if not sys.platform.startswith("linux"):
        status.problems.append(f"no sandbox on {sys.platform}: it needs Linux (Landlock and seccomp)")
        return status
    status.helper = helper_path()
    if status.helper is None:
        status.problems.append(
            "the ffleet-sandbox helper is missing and could not be built (install a C compiler, "
            "or set FFLEET_SANDBOX_HELPER)")
        return status
    try:
        res = subprocess.run([status.helper, "--probe"], capture_output=True, text=True, timeout=30)
        found = json.loads(res.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        status.problems.append(f"the sandbox helper's self-test failed: {exc}")
        return status
    status.landlock_abi = int(found.get("landlock_abi") or 0)
    status.landlock = bool(found.get("landlock_applied") and found.get("files_blocked"))
    status.seccomp = bool(found.get("seccomp") and found.get("sockets_blocked") and found.get("fork_blocked"))
    if not status.landlock:
        status.problems.append(
            "this kernel has no Landlock (Linux 5.13+, enabled in the lsm= boot list): FFmpeg is not "
            "kept to its own files")
    if not status.seccomp:
        status.problems.append("seccomp did not take effect: FFmpeg may open sockets and start processes")
    return status


def require(required: bool) -> SandboxStatus:
    """The sandbox status; raises SandboxRequired when `required` and it is incomplete."""
    status = sandbox_status()
    if required and not status.available:
        raise SandboxRequired(
            "processing.require_sandbox is true, but " + "; ".join(status.problems)
            + " (set require_sandbox false to run without it, at your own risk)")
    return status


def required_by_default() -> bool:
    """The default of processing.require_sandbox: on in the worker image, off elsewhere."""
    return os.environ.get("FFLEET_REQUIRE_SANDBOX") == "1"


@lru_cache(maxsize=1)
def _gpu_devices() -> tuple[str, ...]:
    return tuple(sorted({p for pattern in GPU_DEVICES for p in glob.glob(pattern)}))


@lru_cache(maxsize=1)
def _setpriv_prefix() -> tuple[str, ...]:
    """Without the helper, at least the parent-death signal (util-linux's setpriv, in place)."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or not setpriv:
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--")


def child_env() -> dict[str, str]:
    """The environment FFmpeg runs with: a fixed PATH and locale, nothing of ffleet's own."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}
    # keys first, values only of the kept ones: os.environ decodes each value it hands out, and this
    # runs for every FFmpeg
    env.update({k: os.environ[k] for k in os.environ if k.startswith(_KEPT_ENV_PREFIXES)})
    return env


def prefix(confinement: Confinement) -> list[str]:
    """The argv to put before an FFmpeg argv so that it runs confined (or with pdeathsig only,
    where the helper is missing: the run has then said so, or refused to start)."""
    helper = helper_path() if sys.platform.startswith("linux") else None
    if helper is None:
        return list(_setpriv_prefix())
    args = [helper, "--ppid", str(os.getpid()), "--nproc", str(MAX_USER_PROCESSES),
            "--fsize", str(confinement.max_output_bytes or DEFAULT_MAX_OUTPUT_BYTES)]
    if sandbox_status().landlock:
        for path in confinement.read:
            args += ["--read", path]
        for path in confinement.write:
            args += ["--write", path]
        for path in filter(None, os.environ.get("FFLEET_SANDBOX_LIBS", "").split(os.pathsep)):
            args += ["--lib", path]
        for path in _gpu_devices():
            args += ["--device", path]
    return [*args, "--"]


def main(argv: list[str] | None = None) -> int:
    """`python -m ffleet.sandbox [--build]`: build the helper (scripts/setup does), print the status."""
    args = sys.argv[1:] if argv is None else argv
    if "--build" in args:
        print(f"built {build_helper(_cached_helper_path())}", file=sys.stderr)
        helper_path.cache_clear()
    status = sandbox_status()
    print(json.dumps(status.to_dict(), indent=2))
    return 0 if status.available else 1


if __name__ == "__main__":
    sys.exit(main())
