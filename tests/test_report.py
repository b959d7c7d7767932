"""The dataset card (streaming aggregation) and the self-contained HTML report, rendered in headless Chromium."""
from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ffleet.dataset import DISTINCT_LIMIT, OUTLIER_COUNT, DatasetCardBuilder
from ffleet.report import render_html
from ffleet.results import FAILED, REJECTED, SKIPPED, SUCCEEDED, ItemResult, SummaryBuilder

CHART_NAMES = ("duration", "loudness", "sample-rate-input", "sample-rate-output", "codec-input", "codec-output", "rejected")


def _record(i: int, rng: random.Random) -> ItemResult:
    rejected = i % 7 == 0
    seconds = rng.choice([0.4, 3, 8, 15, 45, 200, 900])
    audio = {
        "duration": seconds, "sample_rate": rng.choice([16000, 44100, 48000]), "channels": 1,
        "codec": rng.choice(["pcm_s16le", "mp3", "flac"]), "lufs": rng.uniform(-65, -5),
        "true_peak_db": rng.uniform(-20, 0.5), "silence_ratio": rng.random() * 0.3,
        "clipped_samples": 0, "clipped": False, "dc_offset": 0.0, "dc_offset_flag": False,
    }
    extra = {"audio": audio}
    if rejected:
        extra["rejected_for"] = ["too_short", "too_quiet"] if i % 2 else ["clipped"]
    return ItemResult(
        key=f"clips/{i:05d}.wav", status=REJECTED if rejected else SUCCEEDED, reason=(extra.get("rejected_for") or [None])[0],
        duration_in=seconds, duration_out=seconds, sample_rate=16000, channels=1, codec="flac", extra=extra,
    )


@pytest.fixture(scope="module")
def summary() -> dict:
    rng = random.Random(8)
    builder = SummaryBuilder()
    for i in range(700):
        builder.add(_record(i, rng))
    builder.add(ItemResult(key="broken.wav", status=FAILED, reason="corrupt_input"))
    builder.add(ItemResult(key="done-before.wav", status=SKIPPED))
    # a key that would break the page if it were not escaped
    evil = _record(1, rng)
    evil.key, evil.extra["audio"]["silence_ratio"] = "<script>alert(1)</script>&.wav", 1.0
    builder.add(evil)
    return builder.summary(wall_seconds=1.0, name="card-test", run_id="r1", mode="local")


# --- the dataset card -------------------------------------------------------------------------------

def test_card_counts_kept_rejected_and_hours(summary):
    card = summary["dataset"]
    rejected = len([i for i in range(700) if i % 7 == 0])
    assert card["files"] == {"kept": 701 - rejected, "rejected": rejected, "measured": 701}
    assert summary["files"]["rejected"] == rejected
    dur = card["histograms"]["duration_seconds"]
    assert sum(dur["kept"]) == 701 - rejected and sum(dur["rejected"]) == rejected
    odd = sum(1 for i in range(700) if i % 7 == 0 and i % 2)
    assert card["rejected_by_reason"] == {"too_short": odd, "too_quiet": odd, "clipped": rejected - odd}
    assert card["codecs"]["output"] == {"flac": 701 - rejected}
    assert set(card["histograms"]["sample_rate_hz"]["input"]) == {"16000", "44100", "48000"}


def test_duration_bins_are_exact():
    b = DatasetCardBuilder()
    for seconds in (0.5, 1.0, 1.5, 599.9, 600, 5000):
        b.add(ItemResult(key=str(seconds), status=SUCCEEDED, duration_out=seconds, extra={"audio": {"lufs": -23.0}}))
    h = b.card()["histograms"]["duration_seconds"]
    assert h["bins"][0] == "< 1 s" and h["bins"][-1] == ">= 600 s"
    assert h["kept"][0] == 1 and h["kept"][1] == 2 and h["kept"][-2] == 1 and h["kept"][-1] == 2
    loud = b.card()["histograms"]["loudness_lufs"]
    assert loud["kept"][loud["bins"].index("-24--21 LUFS")] == 6 and sum(loud["kept"]) == 6


def test_outliers_are_the_worst_20_by_score():
    rng = random.Random(3)
    b = DatasetCardBuilder()
    silences = [rng.random() for _ in range(2000)]
    for i, s in enumerate(silences):
        b.add(ItemResult(key=f"f{i}", status=SUCCEEDED, duration_out=10, extra={"audio": {"silence_ratio": s}}))
    out = b.card()["outliers"]
    assert len(out) == OUTLIER_COUNT and len(b._heap) == OUTLIER_COUNT  # bounded, whatever the run's size
    assert [o["silence_ratio"] for o in out] == sorted(silences, reverse=True)[:OUTLIER_COUNT]
    assert all(o["issues"] == ["silence"] for o in out)


def test_failed_and_skipped_files_are_not_in_the_card():
    b = DatasetCardBuilder()
    b.add(ItemResult(key="a", status=FAILED, reason="corrupt_input", duration_in=5))
    b.add(ItemResult(key="b", status=SKIPPED))
    card = b.card()
    assert card["files"] == {"kept": 0, "rejected": 0, "measured": 0} and card["hours"]["input"] == 0


def test_codec_names_are_bounded():
    b = DatasetCardBuilder()
    for i in range(DISTINCT_LIMIT + 30):
        b.add(ItemResult(key=str(i), status=SUCCEEDED, extra={"audio": {"codec": f"c{i}"}}))
    codecs = b.card()["codecs"]["input"]
    assert len(codecs) == DISTINCT_LIMIT + 1 and codecs["other"] == 30


def test_summary_without_card_when_asked():
    assert "dataset" not in SummaryBuilder(dataset=None).summary(wall_seconds=0)


# --- the HTML report --------------------------------------------------------------------------------

def test_report_is_self_contained_and_escaped(summary):
    html = render_html(summary)
    assert "<script" not in html.replace("&lt;script&gt;", "")  # no scripts of ours, and the key is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;.wav" in html
    assert not re.search(r"""\s(src|href)=|@import|url\(""", html)  # nothing is fetched
    assert "default-src 'none'" in html
    for name in CHART_NAMES:
        assert f'data-chart="{name}"' in html
    assert html.count("<svg") == len(CHART_NAMES)
    assert html.count("<tr>") == 1 + OUTLIER_COUNT  # header + the 20 outliers


def test_empty_summary_renders():
    html = render_html(SummaryBuilder().summary(wall_seconds=0))
    assert html.count("no data") == len(CHART_NAMES) and "no outliers" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if not exe:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; scripts/setup --dev does it as root)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,1600"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


# Added to a copy of the report only: measures what the browser laid out, and prints it in the DOM.
_PROBE = """<script>
const out = {};
for (const fig of document.querySelectorAll('figure.chart')) {
  const svg = fig.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
  const bars = [...fig.querySelectorAll('rect.bar')].filter(r => r.getBoundingClientRect().height > 0);
  out[fig.dataset.chart] = {width: box ? box.width : 0, height: box ? box.height : 0, bars: bars.length};
}
document.body.insertAdjacentHTML('beforeend', '<pre id="probe">' + JSON.stringify(out) + '</pre>');
</script>"""


def test_charts_render_in_headless_chromium(summary, tmp_path):
    html = render_html(summary)
    probe_page = tmp_path / "probe.html"
    # the report forbids scripts (CSP); the copy drops that meta tag to let the probe run
    probe_page.write_text(re.sub(r"<meta http-equiv=\"Content-Security-Policy\"[^>]*>", "", html).replace("</body>", _PROBE + "</body>"))
    res = _run_chromium(tmp_path, "--dump-dom", probe_page.as_uri())
    found = re.findall(r'<pre id="probe">(\{.*?)</pre>', res.stdout, re.S)  # the script's own text has no '{'
    assert found, f"Chromium produced no probe output: {res.stderr[-1000:]}"
    laid_out = json.loads(found[-1].replace("&quot;", '"'))
    card = summary["dataset"]
    assert set(laid_out) == set(CHART_NAMES)
    for name, box in laid_out.items():
        assert box["width"] > 300 and box["height"] > 150, (name, box)
    # one visible bar per non-empty bin and series
    dur = card["histograms"]["duration_seconds"]
    assert laid_out["duration"]["bars"] == sum(1 for v in dur["kept"] + dur["rejected"] if v)
    assert laid_out["rejected"]["bars"] == len(card["rejected_by_reason"])
    assert laid_out["codec-input"]["bars"] == len(card["codecs"]["input"])


def test_report_screenshot(summary, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(summary))
    shot = tmp_path / "report.png"
    res = _run_chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), res.stderr[-1000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600)
    # a blank page of this size compresses to a few KB; charts and text make it far larger
    assert len(data) > 30_000, len(data)


def test_s3_run_uploads_the_report(s3_endpoint, tone_cache):
    """With S3 results, report.html lands beside summary.json, typed as HTML."""
    from ffleet.request import parse_request
    from ffleet.runner import run_request

    s3 = s3_endpoint
    for bucket in ("in-bucket", "out-bucket"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(tone_cache(".wav", seconds=1.0)), "in-bucket", "media/a.wav")
    request = parse_request({"name": "s3-report", "input": {"s3_bucket": "in-bucket", "s3_prefix": "media/"},
                             "output": {"s3_bucket": "out-bucket", "s3_prefix": "flac/", "extension": ".flac"},
                             "quality": {"measure": True}})
    outcome = run_request(request, workers=1, client=s3)
    assert outcome.summary["files"]["succeeded"] == 1
    prefix = outcome.results_uri.removeprefix("s3://out-bucket/")
    head = s3.head_object(Bucket="out-bucket", Key=prefix + "report.html")
    assert head["ContentType"].startswith("text/html")
    body = s3.get_object(Bucket="out-bucket", Key=prefix + "report.html")["Body"].read().decode()
    assert 'data-chart="loudness"' in body and "s3-report" in body
    summary = json.loads(s3.get_object(Bucket="out-bucket", Key=prefix + "summary.json")["Body"].read())
    assert summary["dataset"]["files"]["measured"] == 1 and summary["dataset"]["codecs"]["output"] == {"flac": 1}


def _outlier_card(n: int, dc: float) -> dict:
    b = SummaryBuilder()
    for i in range(n):
        audio = {"duration": 5.0, "lufs": -60.0, "dc_offset": dc, "dc_offset_flag": False}
        b.add(ItemResult(key=f"quiet-{i}.wav", status=SUCCEEDED, duration_out=5.0, extra={"audio": audio}))
    return b.summary(wall_seconds=0)


@pytest.mark.parametrize("n", [3, 10])
def test_outliers_heading_names_the_limit_the_card_keeps(n):
    """The heading said "(up to 10)" for a run of 10 outliers while the card keeps OUTLIER_COUNT (20)."""
    summary = _outlier_card(n, 0.0)
    assert len(summary["dataset"]["outliers"]) == n
    html = render_html(summary)
    assert re.search(r"Worst outliers \(up to (\d+)\)", html).group(1) == str(OUTLIER_COUNT)


@pytest.mark.parametrize("dc, shown", [(-0.00001, "0.0000"), (-0.00004, "0.0000"), (0.0, "0.0000"), (-0.0004, "-0.0004")])
def test_dc_offset_that_rounds_to_zero_has_no_sign(dc, shown):
    html = render_html(_outlier_card(1, dc))
    cells = re.findall(r'<td class="num">([^<]*)</td></tr>', html)  # DC is each row's last cell
    assert cells == [shown]
