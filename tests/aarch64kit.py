"""The arm64 cpu image's static FFmpeg (the imageio-ffmpeg wheel's aarch64 build), found here and run under QEMU user emulation."""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from conftest import REPO

DOCKERFILE = REPO / "container" / "Dockerfile"
# scripts/setup --dev puts the wheel the Dockerfile pins here, and its binary beside it
# (FFLEET_FFMPEG_AARCH64 names that binary elsewhere, with the wheel beside it)
SETUP_FOLDER = (Path(os.environ["FFLEET_FFMPEG_AARCH64"]).parent if os.environ.get("FFLEET_FFMPEG_AARCH64")
                else Path(sys.prefix) / "ffmpeg-aarch64")


def pinned_wheel() -> tuple[str, str, str]:
    """(wheel, version, binary name) of the arm64 build, as container/Dockerfile pins and copies it."""
    text = DOCKERFILE.read_text()
    pin = re.search(r'"(imageio-ffmpeg)==([\w.]+)"', text)
    binary = re.search(r"imageio_ffmpeg/binaries/(ffmpeg-linux-aarch64-\S+)", text)
    assert pin and binary, "container/Dockerfile no longer installs the imageio-ffmpeg wheel's aarch64 FFmpeg"
    return pin.group(1), pin.group(2), binary.group(1)


@lru_cache(maxsize=None)
def aarch64_ffmpeg() -> tuple[str | None, str]:
    """(a path that runs the aarch64 FFmpeg, "") or (None, why not). The path is a small wrapper that
    execs it under qemu-aarch64-static, so that no binfmt registration is needed."""
    _, version, name = pinned_wheel()
    binary = str(SETUP_FOLDER / name)
    if not Path(binary).is_file():
        return None, (f"no aarch64 FFmpeg at {binary}: scripts/setup --dev downloads it (imageio-ffmpeg=={version}), "
                      "or set FFLEET_FFMPEG_AARCH64")
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not qemu:
        return None, "no qemu-aarch64-static to run the aarch64 FFmpeg (apt-get install qemu-user-static)"
    folder = Path(tempfile.mkdtemp(prefix="ffleet-aarch64-"))
    wrapper = folder / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\nexec "{qemu}" "{binary}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), ""


def aarch64_binary() -> tuple[str | None, str]:
    """(the aarch64 FFmpeg itself, "") where the kernel runs it through QEMU (binfmt_misc), so that
    ffleet can start it like any FFmpeg, in its sandbox; else (None, why not)."""
    runner, why_not = aarch64_ffmpeg()
    if not runner:
        return None, why_not
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        enabled = binfmt.read_text().splitlines()[0] == "enabled"
    except (OSError, IndexError):
        enabled = False
    if not enabled:
        return None, ("qemu-aarch64 is not registered with binfmt_misc (as root: mount -t binfmt_misc binfmt_misc "
                      "/proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64)")
    return str(SETUP_FOLDER / pinned_wheel()[2]), ""
