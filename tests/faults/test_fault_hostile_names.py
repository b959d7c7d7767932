"""Fault: hostile file names and keys. Symlink loops in an input folder, S3 keys that are not one
distinct path ('.', 'a/..', 'a/./b.wav', 'a//b.wav', '/abs'), keys with NUL, lone surrogates,
newlines or 300-byte names. Each such entry must end with its own record and reason; the run goes
on, nothing is written outside the output folder, and the output folder stays a folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, write_json

ALL_FAIL_OK = {"tolerated_failure_percent": 100}


def _records(results: Path) -> dict[str, dict]:
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    return {r["key"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_a_symlink_loop_in_the_input_folder_fails_alone_and_the_run_goes_on(tmp_path, tone_cache):
    """It aborted the whole run with a traceback (the listing's stat() raised ELOOP)."""
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    shutil.copy(tone_cache(".wav", 1.0), inp / "good.wav")
    os.symlink("loop.wav", inp / "loop.wav")  # points at itself
    os.symlink("b.wav", inp / "sub" / "a.wav")  # a two-link loop
    os.symlink("a.wav", inp / "sub" / "b.wav")
    os.symlink(".", inp / "sub" / "here")  # a folder loop: not descended into
    (tmp_path / "secret.wav").write_bytes(tone_cache(".wav", 1.0).read_bytes())
    os.symlink(tmp_path / "secret.wav", inp / "escape.wav")  # leads out of the input folder
    req = write_json(tmp_path / "job.json", {"name": "loops", "input": {"path": str(inp)},
                                             "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
                                             "processing": ALL_FAIL_OK})
    p = run_cli("run", str(req), "--json", "--no-progress")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    recs = _records(tmp_path / "out.ffleet-results")
    assert recs["good.wav"]["status"] == "succeeded"
    for key in ("loop.wav", "sub/a.wav", "sub/b.wav"):
        assert recs[key]["status"] == "failed" and recs[key]["reason"] == "not_found", recs[key]
        assert "symlink loop" in recs[key]["detail"]
    assert recs["escape.wav"]["reason"] == "invalid_key" and "outside" in recs["escape.wav"]["detail"]
    assert _files_under(tmp_path / "out") == ["good.flac"]


HOSTILE_S3_KEYS = [".", "..", "a/..", "sub/..", "a/./b.wav", "a//b.wav", "/abs.wav", "a/b.wav/", "sub/../../x.wav"]


def test_s3_keys_that_are_not_one_distinct_path_fail_as_invalid_key_with_a_local_output(
        tmp_path, s3_endpoint, tone_cache):
    """'.', 'a/..' and 'sub/..' turned the output folder into a file; 'a/./b.wav' and 'a//b.wav'
    wrote the same file as 'a/b.wav' and all three "succeeded". Only 'a/b.wav' may."""
    s3 = s3_endpoint
    s3.create_bucket(Bucket="hostile-in")
    tone = tone_cache(".wav", 1.0).read_bytes()
    for key in ["a/b.wav", *HOSTILE_S3_KEYS]:
        s3.put_object(Bucket="hostile-in", Key=key, Body=tone)
    out = tmp_path / "deep" / "out"
    req = write_json(tmp_path / "job.json", {"name": "keys", "input": {"s3_bucket": "hostile-in"},
                                             "output": {"path": str(out)}, "processing": ALL_FAIL_OK})
    p = run_cli("run", str(req), "--json", "--no-progress", env={"AWS_ENDPOINT_URL": s3_endpoint.meta.endpoint_url})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    recs = _records(tmp_path / "deep" / "out.ffleet-results")
    assert recs["a/b.wav"]["status"] == "succeeded", recs["a/b.wav"]
    # 'a/b.wav/' is a folder marker and is not an input at all
    for key in set(HOSTILE_S3_KEYS) - {"a/b.wav/"}:
        assert recs[key]["status"] == "failed" and recs[key]["reason"] == "invalid_key", recs[key]
    assert out.is_dir() and _files_under(out) == ["a/b.wav"]
    assert _files_under(tmp_path / "deep") == sorted(
        ["out/a/b.wav", *(f"out.ffleet-results/{f}" for f in _files_under(tmp_path / "deep" / "out.ffleet-results"))])
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "abs.wav").exists()


def test_manifest_keys_with_nul_surrogates_or_overlong_names_fail_alone(tmp_path, tone_cache):
    """From a JSON Lines manifest any string can be a key. NUL used to fail as internal_error
    (ValueError from the file system), a 300-byte name as storage_error (which counts as an
    infrastructure fault). A lone surrogate can be no S3 key and no record: the manifest is refused
    naming its line (it crashed the run while writing the record)."""
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(tone_cache(".wav", 1.0), inp / "good.wav")
    bad = ["a\x00b.wav", "n" * 300 + ".wav", "../in/good.wav", "./good.wav"]
    manifest = tmp_path / "keys.jsonl"
    manifest.write_text("".join(json.dumps({"key": k}) + "\n" for k in ["good.wav", *bad]))
    req = write_json(tmp_path / "job.json", {"name": "m", "input": {"path": str(inp), "manifest": str(manifest)},
                                             "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
                                             "processing": ALL_FAIL_OK})
    p = run_cli("run", str(req), "--json", "--no-progress")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    recs = _records(tmp_path / "out.ffleet-results")
    assert recs["good.wav"]["status"] == "succeeded"
    for key in bad:
        assert recs[key]["reason"] == "invalid_key", recs[key]
    assert _files_under(tmp_path / "out") == ["good.flac"]

    manifest.write_text(manifest.read_text() + json.dumps({"key": "\ud800.wav"}) + "\n")
    p = run_cli("run", str(req), "--json", "--no-progress")
    assert p.returncode == 2 and "Traceback" not in p.stderr and f"{manifest} line {len(bad) + 2}" in p.stderr, p.stderr


def test_unicode_and_newline_names_are_ordinary_files(tmp_path, tone_cache):
    """Distinct, valid names (a newline, NFC and NFD forms of one word, a 250-byte name) convert one
    to one; the records stay one JSON object per line."""
    inp = tmp_path / "in"
    inp.mkdir()
    names = ["new\nline.wav", "caf\u00e9.wav", "cafe\u0301.wav", "\u00e9" * 123 + ".wav", "-i.wav", "a:b.wav"]
    for name in names:
        shutil.copy(tone_cache(".wav", 1.0), inp / name)
    req = write_json(tmp_path / "job.json", {"name": "u", "input": {"path": str(inp)},
                                             "output": {"path": str(tmp_path / "out"), "extension": ".flac"}})
    p = run_cli("run", str(req), "--json", "--no-progress")
    assert p.returncode == 0, p.stderr
    recs = _records(tmp_path / "out.ffleet-results")
    assert {k: r["status"] for k, r in recs.items()} == {n: "succeeded" for n in names}
    assert sorted(os.listdir(tmp_path / "out")) == sorted(n[:-4] + ".flac" for n in names)


# ---------------------------------------------------------------------------------------------
# Outputs in the inputs' own bucket (a manifest may name any key there) never replace an input

def _same_bucket_setup(s3, tone_cache, tmp_path, keys: list[str]) -> tuple[Path, dict[str, bytes]]:
    s3.create_bucket(Bucket="media-shared")
    bodies = {}
    for i, key in enumerate(keys):
        ext = "." + key.rsplit(".", 1)[1]
        bodies[key] = tone_cache(ext, 0.5 + 0.25 * i, freq=300 + 50 * i).read_bytes()
        s3.put_object(Bucket="media-shared", Key=key, Body=bodies[key])
    manifest = tmp_path / "keys.jsonl"
    manifest.write_text("".join(json.dumps({"key": k}) + "\n" for k in keys))
    return manifest, bodies


def _run_shared(tmp_path, s3, manifest: Path, output: dict) -> dict[str, dict]:
    req = write_json(tmp_path / "job.json", {
        "name": "shared", "input": {"s3_bucket": "media-shared", "manifest": str(manifest)},
        "output": {"s3_bucket": "media-shared", **output}, "results": {"path": str(tmp_path / "results")},
        "processing": ALL_FAIL_OK})
    p = run_cli("run", str(req), "--json", "--no-progress", env={"AWS_ENDPOINT_URL": s3.meta.endpoint_url})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return _records(tmp_path / "results")


def test_overwrite_never_replaces_an_input_of_the_run_with_a_transcode(tmp_path, s3_endpoint, tone_cache):
    """overwrite: true with output.extension .flac in the manifest's own bucket: a.flac's output is
    a.flac itself, and b.wav's is b.flac, another input. Both inputs were replaced."""
    s3 = s3_endpoint
    manifest, bodies = _same_bucket_setup(s3, tone_cache, tmp_path, ["a.flac", "b.wav", "b.flac", "c.wav"])
    recs = _run_shared(tmp_path, s3, manifest, {"extension": ".flac", "overwrite": True})
    assert recs["c.wav"]["status"] == "succeeded"
    for key, whose in (("a.flac", "the input itself"), ("b.wav", "another input"), ("b.flac", "the input itself")):
        assert recs[key]["reason"] == "output_collision" and whose in recs[key]["detail"], recs[key]
    for key in ("a.flac", "b.wav", "b.flac"):
        assert s3.get_object(Bucket="media-shared", Key=key)["Body"].read() == bodies[key], f"{key} was written over"


def test_an_inputs_key_never_shadows_another_inputs_output(tmp_path, s3_endpoint, tone_cache):
    """x.wav's output under the prefix 'out/' is out/x.wav, which is itself an input: with
    overwrite it was replaced, without it x.wav was "skipped" as already done."""
    s3 = s3_endpoint
    manifest, bodies = _same_bucket_setup(s3, tone_cache, tmp_path, ["x.wav", "out/x.wav", "y.wav"])
    for overwrite in (True, False):
        recs = _run_shared(tmp_path, s3, manifest, {"s3_prefix": "out/", "overwrite": overwrite})
        assert recs["x.wav"]["reason"] == "output_collision" and "another input" in recs["x.wav"]["detail"], recs
        assert recs["out/x.wav"]["status"] in ("succeeded", "skipped") and recs["y.wav"]["status"] in ("succeeded", "skipped")
        assert s3.get_object(Bucket="media-shared", Key="out/x.wav")["Body"].read() == bodies["out/x.wav"]
        shutil.rmtree(tmp_path / "results")


def test_the_batch_worker_never_replaces_an_input_of_its_batch(tmp_path, s3_endpoint, tone_cache):
    """The same in a Batch job: it knows every key of its batch before its first conversion."""
    s3 = s3_endpoint
    _, bodies = _same_bucket_setup(s3, tone_cache, tmp_path, ["a.flac", "b.wav", "b.flac", "c.wav"])
    s3.create_bucket(Bucket="results-w")
    request = {"name": "shared", "input": {"s3_bucket": "media-shared", "manifest": "s3://media-shared/keys.jsonl"},
               "output": {"s3_bucket": "media-shared", "extension": ".flac", "overwrite": True}}
    batch = {"BatchInput": {"request": request, "results_prefix": "s3://results-w/runs/e/", "batch_id": "b1"},
             "Items": [{"Key": k} for k in bodies]}
    p = run_cli("worker", env={"FFLEET_BATCH_JSON": json.dumps(batch), "FFLEET_WORKERS": "1",
                               "AWS_ENDPOINT_URL": s3.meta.endpoint_url})
    assert p.returncode == 0, p.stderr
    body = s3.get_object(Bucket="results-w", Key="runs/e/records/b1.jsonl")["Body"].read().decode()
    recs = {r["key"]: r for r in map(json.loads, body.splitlines())}
    assert recs["c.wav"]["status"] == "succeeded"
    assert all(recs[k]["reason"] == "output_collision" for k in ("a.flac", "b.wav", "b.flac")), recs
    for key in ("a.flac", "b.wav", "b.flac"):
        assert s3.get_object(Bucket="media-shared", Key=key)["Body"].read() == bodies[key], f"{key} was written over"


@pytest.mark.parametrize("as_json", [False, True])
def test_escape_sequences_in_a_name_never_reach_the_terminal(tmp_path, as_json):
    """A failing file's key is printed in the summary: ESC and C1 sequences in it (retitle the
    terminal, OSC 52 writes the clipboard) were printed raw. They appear escaped; --json still
    parses to the same key."""
    inp = tmp_path / "in"
    inp.mkdir()
    name = "x\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x9b31m.wav"
    (inp / name).write_bytes(b"not audio at all")
    req = write_json(tmp_path / "job.json", {"name": "esc", "input": {"path": str(inp)},
                                             "output": {"path": str(tmp_path / "out"), "extension": ".flac"},
                                             "processing": ALL_FAIL_OK})
    p = run_cli("run", str(req), "--no-progress", *(["--json"] if as_json else []))
    assert p.returncode == 0, p.stderr
    assert not any(ch in p.stdout for ch in "\x1b\x07\x9b"), repr(p.stdout)
    if as_json:
        assert json.loads(p.stdout)["failures"][0]["key"] == name
    else:
        assert "x\\x1b]52;c;" in p.stdout
