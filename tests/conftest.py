"""Shared fixtures: generated audio, a moto S3 server, and a way to run the CLI as a user would."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"

# Tests never talk to real AWS: fake credentials and a region, whatever the developer's shell has.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.pop("AWS_PROFILE", None)
os.environ["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
# Several tests stand in for FFmpeg with a Python script; in ffleet's sandbox the script's
# interpreter must be readable and executable. The containment tests remove this again.
os.environ["FFLEET_SANDBOX_LIBS"] = os.pathsep.join(dict.fromkeys([sys.base_prefix, sys.prefix]))


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `ffleet ARGS` in a subprocess, exactly as a user would (this checkout's code)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ffleet.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, **kw,
    )


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A moto server on loopback, standing in for any S3 endpoint. Yields its URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_endpoint(moto_server, monkeypatch):
    """AWS_ENDPOINT_URL pointed at the moto server, and a fresh boto3 client for it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    yield client
    # leave no buckets behind for the next test
    for b in client.list_buckets().get("Buckets", []):
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=b["Name"]):
            objs = [{"Key": o["Key"], "VersionId": o["VersionId"]} for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if objs:
                client.delete_objects(Bucket=b["Name"], Delete={"Objects": objs})
        client.delete_bucket(Bucket=b["Name"])


@pytest.fixture(scope="session")
def tone_cache(tmp_path_factory):
    """Generated tones, made once per session: {name: path}. Use copies, not the originals."""
    from ffleet.demo import make_tone

    folder = tmp_path_factory.mktemp("tones")
    cache: dict[str, Path] = {}

    def get(ext: str = ".wav", seconds: float = 2.0, **kw) -> Path:
        name = f"{seconds}-{kw.get('freq', 440)}-{kw.get('rate', 44100)}-{kw.get('channels', 2)}{ext}"
        if name not in cache:
            cache[name] = make_tone(folder / name, seconds, ext, **kw)
        return cache[name]

    return get
