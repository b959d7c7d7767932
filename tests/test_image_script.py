"""scripts/image-test without Docker: shellcheck, its visible skip where Docker cannot start, and the build contexts' ignore files."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO
from test_container import _tool

SCRIPT = REPO / "scripts" / "image-test"


def test_shellcheck_image_test_script():
    proc = subprocess.run([_tool("shellcheck"), str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _as_non_root(env: dict[str, str]) -> subprocess.CompletedProcess:
    # The script comes on standard input, from '/': a non-root user may not be able to read the
    # checkout itself (a clone in a `mktemp -d` folder is mode 0700). It decides to skip before it
    # touches the repository.
    argv = ["bash", "-s"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to run the script as a non-root user")
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return subprocess.run(argv, input=SCRIPT.read_text(), cwd="/", capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_skips_visibly_without_root_and_fails_when_required():
    skipped = _as_non_root({"FFLEET_IMAGE_TEST_REQUIRED": "0"})
    assert skipped.returncode == 0 and "image-test: SKIPPED" in skipped.stderr and "root" in skipped.stderr, skipped
    required = _as_non_root({"FFLEET_IMAGE_TEST_REQUIRED": "1"})
    assert required.returncode == 1 and "image-test: FAILED" in required.stderr, required


def _patterns(path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_root_dockerignore_matches_the_dockerfiles():
    """The classic builder reads only the context's .dockerignore (without it, .venv, node_modules
    and .git go to the daemon); BuildKit prefers container/Dockerfile.dockerignore. Same rules."""
    root = REPO / ".dockerignore"
    assert root.is_file(), "no .dockerignore at the repository root"
    assert _patterns(root) == _patterns(REPO / "container" / "Dockerfile.dockerignore")
    assert _patterns(root)[0] == "*", "the context is an allowlist: everything is ignored first"
