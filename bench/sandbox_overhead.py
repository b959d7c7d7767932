"""What the kernel sandbox costs per FFmpeg start, measured side by side in one run.

Three ways to start the same tiny conversion (0.5 s tone, WAV to 16 kHz mono WAV), interleaved:
  plain     FFmpeg exec'd directly (no parent-death signal: what no tool should do)
  setpriv   util-linux setpriv --pdeathsig KILL: what ffleet did before the sandbox
  sandbox   ffleet-sandbox: pdeathsig + rlimits + no_new_privs + Landlock + seccomp, one exec

CPU is the children's user+system time from wait4(), so other load on the machine does not count;
the extra CPU per start over `plain` is the sandbox's cost (the issue's target: under 2 ms).

    .venv/bin/python bench/sandbox_overhead.py [--starts 200]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ffleet import sandbox  # noqa: E402
from ffleet.demo import make_tone  # noqa: E402
from ffleet.ffmpeg import find_binaries, run_process  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=200, help="FFmpeg starts per way (default 200)")
    args = ap.parse_args()
    status = sandbox.sandbox_status()
    if not status.helper:
        print(f"no sandbox helper here: {status.describe()}")
        return 1
    ff = find_binaries().ffmpeg
    folder = Path(tempfile.mkdtemp(prefix="ffleet-bench-sandbox-"))
    try:
        src = make_tone(folder / "in.wav", 0.5)
        dst = folder / "out.wav"
        argv = [ff, "-hide_banner", "-nostdin", "-v", "error", "-i", str(src), "-ac", "1", "-ar", "16000", "-y", str(dst)]
        confine = sandbox.Confinement(read=(str(src),), write=(str(folder),))
        setpriv = shutil.which("setpriv")
        ways = {"plain": [], "sandbox": sandbox.prefix(confine)}
        if setpriv:
            ways["setpriv"] = [setpriv, "--pdeathsig", "KILL", "--"]
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for i in range(args.starts):
            for name in names[i % len(names):] + names[:i % len(names)]:
                # run_process adds its own prefix: hand it none, and put this way's in front ourselves
                res = run_process([*ways[name], *argv], timeout=60, confinement=_NO_PREFIX)
                if res.returncode != 0:
                    sys.exit(f"{name} failed: {res.stderr[-300:]}")
                cpu[name].append(res.cpu_seconds * 1000)
        base = statistics.median(cpu["plain"])
        print(f"{args.starts} starts per way, {ff}")
        print(f"{'way':<10}{'CPU ms/start (median)':>24}{'mean':>8}{'extra vs plain':>16}{'ratio':>8}")
        for name in names:
            med = statistics.median(cpu[name])
            print(f"{name:<10}{med:>24.3f}{statistics.mean(cpu[name]):>8.3f}{med - base:>+16.3f}{med / base:>8.3f}")
        print(status.describe())
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _NoPrefix(sandbox.Confinement):
    pass


_NO_PREFIX = _NoPrefix()


if __name__ == "__main__":
    _original_prefix = sandbox.prefix
    sandbox.prefix = lambda confinement: [] if isinstance(confinement, _NoPrefix) else _original_prefix(confinement)
    sys.exit(main())
