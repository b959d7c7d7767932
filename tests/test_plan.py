"""ffleet plan and ffleet calibrate: the capacity arithmetic on known cases, and the CLI's JSON."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, write_json
from ffleet import plan as P
from ffleet.plan import Fleet, PlanError, Workload, design, make_plan, recommended_files_per_job, workload_from

REQUIRED = {"batch_jobs", "submit_seconds", "state_transitions", "vcpu_hours", "wall_seconds"}


def s3_request(**processing) -> dict:
    return {
        "name": "plan-test",
        "input": {"s3_bucket": "in-bucket", "s3_prefix": "media/"},
        "output": {"s3_bucket": "out-bucket", "s3_prefix": "flac/", "file_options": "-ac 1 -ar 48000"},
        "global": {"options": "null"},
        "processing": processing,
    }


# --- arithmetic --------------------------------------------------------------------------------

def test_three_million_files_one_job_each_spend_hours_in_submitjob():
    plan = make_plan(Workload(files=3_000_000, mean_seconds=45), Fleet(vcpus=1000))
    one, bat = plan["one_job_per_file"], plan["batched"]
    assert one["batch_jobs"] == 3_000_000
    assert one["submit_seconds"] >= 60_000  # 3,000,000 / 50 TPS
    assert one["submit_seconds"] == pytest.approx(3_000_000 / P.BATCH_SUBMIT_JOB_TPS)
    assert one["wall_seconds"] >= one["submit_seconds"]  # nothing can finish before it is submitted
    assert one["wall_bound_by"] == "submit_job_rate"
    assert one["state_transitions"] >= 3_000_000
    assert one["exceeds_submitted_queue_if_submitted_at_once"] is True
    assert bat["batch_jobs"] == math.ceil(3_000_000 / bat["files_per_job"])
    assert bat["submit_seconds"] < 100
    assert bat["state_transitions"] < one["state_transitions"] / 100
    assert bat["wall_seconds"] < one["wall_seconds"]
    assert bat["vcpu_hours"] < one["vcpu_hours"]


def test_design_arithmetic_on_a_small_known_case():
    w = Workload(files=1000, mean_seconds=60, cpu_seconds_per_audio_second=0.005, file_io_seconds=0.0)
    f = Fleet(vcpus=8, job_vcpus=4, max_concurrency=100, job_overhead_seconds=0.0)
    d = design(w, f, files_per_job=100, job_vcpus=4, transitions_per_child=2)
    assert w.file_seconds == pytest.approx(0.3)
    assert d["batch_jobs"] == 10
    assert d["job_seconds"] == pytest.approx(25 * 0.3)  # 100 files, 4 at a time
    assert d["concurrent_jobs"] == 2 and d["concurrency_limited_by"] == "vcpus"
    assert d["submit_seconds"] == pytest.approx(0.2)
    assert d["wall_seconds"] == pytest.approx(5 * 7.5)  # 10 jobs, 2 at a time, 7.5 s each
    assert d["vcpu_hours"] == pytest.approx(round(10 * 7.5 * 4 / 3600, 2))
    assert d["state_transitions"] == 10 * 2 + P.TRANSITIONS_PER_EXECUTION
    assert d["state_transitions_usd"] == pytest.approx(round(d["state_transitions"] * 0.025 / 1000, 2))
    assert d["s3_requests"]["put"] == 1000 * P.S3_PUT_PER_FILE + 10 * P.S3_PUT_PER_JOB_BATCHED


def test_submit_rate_bounds_wall_time_when_the_fleet_is_huge():
    w = Workload(files=100_000, mean_seconds=30, file_io_seconds=0.0)
    d = design(w, Fleet(vcpus=100_000, job_overhead_seconds=0.0), files_per_job=1, job_vcpus=1, transitions_per_child=1)
    assert d["wall_bound_by"] == "submit_job_rate"
    assert d["wall_seconds"] == pytest.approx(100_000 / 50 + d["job_seconds"], rel=1e-3)


def test_recommended_files_per_job_gives_three_to_five_minute_jobs():
    for mean in (5, 45, 600):
        w = Workload(files=10_000_000, mean_seconds=mean)
        f = Fleet(vcpus=4000, job_vcpus=4)
        rec = recommended_files_per_job(w, f)
        assert rec["min"] <= rec["recommended"] <= rec["max"]
        for k in (rec["min"], rec["recommended"], rec["max"]):
            seconds = design(w, f, k, 4, 2)["job_seconds"]
            assert 180 - w.file_seconds <= seconds <= 300 + w.file_seconds, (mean, k, seconds)


def test_max_concurrency_limits_batched_jobs_and_the_planner_says_so():
    w = Workload(files=1_000_000, mean_seconds=45)
    plan = make_plan(w, Fleet(vcpus=4000, job_vcpus=4, max_concurrency=100))
    assert plan["batched"]["concurrent_jobs"] == 100
    assert plan["batched"]["concurrency_limited_by"] == "max_concurrency"
    # one job per file is given its best case: all vCPUs, up to the map's own cap
    assert plan["one_job_per_file"]["concurrent_jobs"] == 4000
    assert "max_concurrency=100" in P.format_plan(plan)


def test_s3_prefix_limits_are_flagged_when_the_batched_run_is_fast():
    w = Workload(files=10_000_000, mean_seconds=10, cpu_seconds_per_audio_second=0.001, file_io_seconds=0.0)
    plan = make_plan(w, Fleet(vcpus=40_000, job_vcpus=4, max_concurrency=10_000))
    bat = plan["batched"]
    assert bat["s3_input_prefix_get_head_per_second"] > P.S3_GET_PER_SECOND_PER_PREFIX
    assert bat["s3_prefixes_needed"] >= math.ceil(bat["s3_input_prefix_get_head_per_second"] / P.S3_GET_PER_SECOND_PER_PREFIX)
    assert "503 SlowDown" in P.format_plan(plan)


@pytest.mark.parametrize(
    "workload, fleet, word",
    [
        (Workload(files=0, mean_seconds=10), Fleet(vcpus=4), "--files"),
        (Workload(files=10, mean_seconds=0), Fleet(vcpus=4), "--mean-seconds"),
        (Workload(files=10, mean_seconds=10), Fleet(vcpus=2, job_vcpus=4), "--job-vcpus"),
    ],
)
def test_bad_inputs_name_the_option(workload, fleet, word):
    with pytest.raises(PlanError, match=word):
        make_plan(workload, fleet)


def test_workload_takes_calibrated_figures_and_explicit_mean_wins():
    cal = {"cpu_seconds_per_audio_second": 0.01, "mean_seconds": 20.0, "mean_input_bytes": 1000, "output_bytes_per_input_byte": 0.5}
    w = workload_from(100, None, cal)
    assert (w.mean_seconds, w.cpu_seconds_per_audio_second) == (20.0, 0.01)
    assert workload_from(100, 60, cal).mean_seconds == 60
    with pytest.raises(PlanError, match="--mean-seconds"):
        workload_from(100, None, None)
    with pytest.raises(PlanError, match="cpu_seconds_per_audio_second"):
        workload_from(100, None, {"cpu_seconds_per_audio_second": None, "mean_seconds": 3})


def test_spread_takes_first_and_last_and_never_repeats():
    items = list(range(101))
    assert P._spread(items, 5) == [0, 25, 50, 75, 100]
    assert P._spread(items, 500) == items
    assert len(set(P._spread(items, 37))) == 37


# --- CLI ---------------------------------------------------------------------------------------

def test_plan_cli_json_shape(tmp_path):
    req = write_json(tmp_path / "req.json", s3_request())
    proc = run_cli("plan", str(req), "--files", "3000000", "--mean-seconds", "45", "--vcpus", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    for side in ("one_job_per_file", "batched"):
        assert REQUIRED <= set(plan[side]), side
        assert all(isinstance(plan[side][k], (int, float)) for k in REQUIRED)
    assert plan["one_job_per_file"]["submit_seconds"] >= 60_000
    assert plan["batched"]["concurrent_jobs"] <= 100  # the request's default processing.max_concurrency


def test_plan_cli_table_and_errors(tmp_path):
    req = write_json(tmp_path / "req.json", s3_request(max_concurrency=1000))
    proc = run_cli("plan", str(req), "--files", "1000", "--mean-seconds", "30")
    assert proc.returncode == 0, proc.stderr
    assert "one job per file" in proc.stdout and "SubmitJob at 50 TPS" in proc.stdout
    proc = run_cli("plan", str(req), "--files", "1000")
    assert proc.returncode == 2 and "--mean-seconds" in proc.stderr
    proc = run_cli("plan", str(req), "--files", "1000", "--calibration", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr
    bad = write_json(tmp_path / "bad.json", {"name": "x"})
    proc = run_cli("plan", str(bad), "--files", "10", "--mean-seconds", "3")
    assert proc.returncode == 2 and "input" in proc.stderr


@pytest.fixture
def small_corpus(tmp_path, tone_cache):
    inp = tmp_path / "in"
    for i, (ext, secs) in enumerate([(".wav", 2.0), (".mp3", 3.0), (".flac", 2.0), (".opus", 3.0), (".m4a", 2.0)]):
        dest = inp / f"d{i % 2}" / f"clip{i}{ext}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tone_cache(ext, secs), dest)
    return inp


def local_request(tmp_path, inp) -> dict:
    return {
        "name": "calib-test",
        "input": {"path": str(inp)},
        "output": {"path": str(tmp_path / "out"), "extension": ".flac", "file_options": "-ac 1 -ar 48000 -c:a flac"},
        "global": {"options": "null"},
    }


def test_calibrate_measures_a_sample_and_writes_nothing_to_the_output(tmp_path, small_corpus):
    req = write_json(tmp_path / "req.json", local_request(tmp_path, small_corpus))
    proc = run_cli("calibrate", str(req), "--sample", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    cal = json.loads(proc.stdout)
    assert (cal["listed"], cal["sampled"], cal["succeeded"]) == (5, 3, 3)
    assert cal["failed"] == []
    assert 1.9 <= cal["mean_seconds"] <= 3.1  # the sample's tones last 2 or 3 s
    assert cal["cpu_seconds_per_file"] > 0 and cal["cpu_seconds_per_audio_second"] > 0
    assert cal["cpu_seconds_per_audio_second"] == pytest.approx(cal["cpu_seconds_per_file"] / cal["mean_seconds"], rel=0.01)
    assert cal["output_bytes_per_input_byte"] > 0
    assert not (tmp_path / "out").exists()  # nothing written where the user's outputs go
    # plan reads calibrate's output
    cal_path = tmp_path / "cal.json"
    cal_path.write_text(proc.stdout)
    proc = run_cli("plan", str(req), "--files", "1000", "--calibration", str(cal_path), "--vcpus", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["inputs"]["mean_seconds"] == cal["mean_seconds"]
    assert plan["inputs"]["cpu_seconds_per_audio_second"] == cal["cpu_seconds_per_audio_second"]
    assert "output_gb" in plan["inputs"]


def test_calibrate_reports_a_broken_file_and_fails_when_nothing_succeeds(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "garbage.mp3").write_bytes(b"not audio\n" * 100)
    req = write_json(tmp_path / "req.json", local_request(tmp_path, inp))
    proc = run_cli("calibrate", str(req), "--json")
    assert proc.returncode == 1, proc.stderr
    cal = json.loads(proc.stdout)
    assert cal["succeeded"] == 0 and cal["failed"][0]["key"] == "garbage.mp3"
    assert cal["cpu_seconds_per_audio_second"] is None
    empty = tmp_path / "empty"
    empty.mkdir()
    req = write_json(tmp_path / "req2.json", local_request(tmp_path, empty))
    proc = run_cli("calibrate", str(req))
    assert proc.returncode == 2 and "no files" in proc.stderr


# --- the benchmark harness (not the benchmark: its figures are not checked) -------------------

def test_bench_micro_mode_runs_and_writes_its_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_bench.py"), "--micro", "--no-s3", "--no-debian",
         "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "results").glob("micro-*.json")
    report = json.loads(path.read_text())
    assert set(report["median_wall_seconds"]) == {"naive", "limit", "ffleet_local"}
    assert {"speedup_over_naive", "efficiency_vs_limit", "overhead_ms_per_file"} <= set(report["ratios"])
    assert "ffmpeg" in report["profile"]["ms_per_file"]
    # every scenario wrote one FLAC per input file
    for name in ("naive", "limit", "ffleet"):
        assert len(list((tmp_path / "work" / "out" / name).rglob("*.flac"))) == report["corpus"]["files"], name


def test_calibrate_on_an_s3_endpoint_writes_nothing_to_the_output_bucket(s3_endpoint, tone_cache):
    from ffleet.plan import calibrate
    from ffleet.request import parse_request

    s3_endpoint.create_bucket(Bucket="cal-in")
    s3_endpoint.create_bucket(Bucket="cal-out")
    for i, ext in enumerate((".mp3", ".opus", ".wav")):
        s3_endpoint.upload_file(str(tone_cache(ext, 2.0)), "cal-in", f"media/clip {i}{ext}")
    req = parse_request({**s3_request(), "input": {"s3_bucket": "cal-in", "s3_prefix": "media/"},
                         "output": {"s3_bucket": "cal-out", "s3_prefix": "flac/", "extension": ".flac", "file_options": "-ac 1"}})
    cal = calibrate(req, sample=2, client=s3_endpoint)
    assert (cal["listed"], cal["sampled"], cal["succeeded"]) == (3, 2, 2), cal["failed"]
    assert cal["mean_seconds"] == pytest.approx(2.0, abs=0.1)
    assert s3_endpoint.list_objects_v2(Bucket="cal-out").get("KeyCount", 0) == 0


def test_transition_counts_match_the_shipped_state_machine():
    """The planner's transition constants are the states the shipped ASL really enters."""
    import re

    from conftest import REPO

    text = re.sub(r"\$\{[A-Za-z]+\}", "1", (REPO / "statemachine" / "pipeline.asl.json").read_text())
    top = json.loads(text)["States"]
    prefix_map = top["Process prefix"]
    child = prefix_map["ItemProcessor"]
    # a succeeded child walks from StartAt to the first End, skipping the Catch branch
    walked, name = [], child["StartAt"]
    while name:
        walked.append(name)
        state = child["States"][name]
        name = None if state.get("End") else state["Next"]
    assert len(walked) == P.TRANSITIONS_PER_CHILD_BATCHED, walked
    # the parent: compute choice, its queue, source choice, the map, summarize, map check, done
    parent = ["Choose compute", "Use intel queue", "Prefix or manifest?", "Process prefix", "Summarize run",
              "Did the map finish?", "Done"]
    assert all(s in top for s in parent)
    assert len(parent) == P.TRANSITIONS_PER_EXECUTION
