"""The run report: one self-contained HTML file (inline CSS and SVG charts, no scripts, no network)."""
from __future__ import annotations

from html import escape
from typing import Any

from ffleet.dataset import OUTLIER_COUNT

REPORT_FILE = "report.html"

KEPT, REJECTED = "#2f7ed8", "#d9534f"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666}.stats{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}
.stat{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}.stat b{display:block;font-size:20px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:18px}
figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:10px}figcaption{font-weight:600;margin-bottom:6px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
.empty{color:#888;font-style:italic;padding:20px 0}
"""


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        text = f"{v:.{digits}f}"
        # -0.00001 rounds to "-0.0000": a sign on zero reads as a measured negative offset
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return escape(str(v))


def bar_chart(name: str, title: str, labels: list[str], series: list[tuple[str, str, list[int]]],
              width: int = 520, height: int = 240) -> str:
    """A stacked bar chart as inline SVG. series: (legend, colour, values per label)."""
    totals = [sum(s[2][i] for s in series) for i in range(len(labels))]
    if not labels or not any(totals):
        return (f'<figure class="chart" data-chart="{escape(name)}"><figcaption>{escape(title)}</figcaption>'
                '<div class="empty">no data</div></figure>')
    left, right, top, bottom = 44, 8, 18, 62
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max(totals)
    step = plot_w / len(labels)
    bar_w = min(64.0, max(2.0, step * 0.72))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{escape(title)}">']
    for tick in sorted({0, top_value // 2, top_value}):  # gridlines at whole counts
        y = top + plot_h * (1 - tick / top_value)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#666">{tick}</text>')
    for i, label in enumerate(labels):
        x = left + i * step + (step - bar_w) / 2
        y = top + plot_h
        for legend, colour, values in series:
            v = values[i]
            if not v:
                continue
            h = plot_h * v / top_value
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{escape(label)}: {v} {escape(legend)}</title></rect>')
        if totals[i]:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" font-size="10" text-anchor="middle" fill="#333">{totals[i]}</text>')
        lx, ly = x + bar_w / 2, top + plot_h + 12
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" text-anchor="end" fill="#444" '
                     f'transform="rotate(-35 {lx:.1f} {ly:.1f})">{escape(label[:22])}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span style="background:{c}"></span>{escape(n)}' for n, c, _ in series) if len(series) > 1 else ""
    return (f'<figure class="chart" data-chart="{escape(name)}"><figcaption>{escape(title)}'
            f'<span class="legend muted">{legend}</span></figcaption>{"".join(parts)}</figure>')


def _histogram_chart(name: str, title: str, hist: dict[str, Any]) -> str:
    return bar_chart(name, title, list(hist.get("bins", [])),
                     [("kept", KEPT, list(hist.get("kept", []))), ("rejected", REJECTED, list(hist.get("rejected", [])))])


def _counts_chart(name: str, title: str, counts: dict[str, int], colour: str = KEPT) -> str:
    return bar_chart(name, title, [str(k) for k in counts], [("files", colour, list(counts.values()))])


def _stat(label: str, value: str) -> str:
    return f'<div class="stat"><span class="muted">{escape(label)}</span><b>{value}</b></div>'


def _measured_note(measured_at: dict[str, int]) -> str:
    where = {"output": "the audio as written", "source": "the decoded source audio"}
    parts = [f"{n} file{'s' if n != 1 else ''}: {where.get(k, k)}" for k, n in measured_at.items()]
    return f"Measurements describe {'; '.join(parts)} (see docs/dataset-card.md)." if parts else ""


def render_html(summary: dict[str, Any]) -> str:
    """The report for one run's summary (summary.json with its "dataset" card)."""
    run = summary.get("run") or {}
    files = summary.get("files") or {}
    card = summary.get("dataset") or {}
    hist = card.get("histograms") or {}
    rates = hist.get("sample_rate_hz") or {}
    codecs = card.get("codecs") or {}
    hours = card.get("hours") or summary.get("audio_hours") or {}
    title = f"ffleet run {run.get('name', '')} {run.get('run_id', '')}".strip()
    stats = "".join([
        _stat("files", _fmt(files.get("total"))),
        _stat("kept", _fmt(files.get("succeeded"))),
        _stat("rejected", _fmt(files.get("rejected"))),
        _stat("failed", _fmt(files.get("failed"))),
        _stat("skipped", _fmt(files.get("skipped"))),
        _stat("hours in", _fmt(hours.get("input"), 3)),
        _stat("hours out", _fmt(hours.get("output"), 3)),
        _stat("clipped", _fmt((card.get("flagged") or {}).get("clipped"))),
        _stat("DC offset", _fmt((card.get("flagged") or {}).get("dc_offset"))),
    ])
    charts = "".join([
        _histogram_chart("duration", "Duration (files per bin)", hist.get("duration_seconds") or {}),
        _histogram_chart("loudness", "Integrated loudness (files per bin)", hist.get("loudness_lufs") or {}),
        _counts_chart("sample-rate-input", "Sample rate of the inputs (Hz)", rates.get("input") or {}),
        _counts_chart("sample-rate-output", "Sample rate of the kept outputs (Hz)", rates.get("output") or {}),
        _counts_chart("codec-input", "Input codecs", codecs.get("input") or {}),
        _counts_chart("codec-output", "Output codecs (kept files)", codecs.get("output") or {}),
        _counts_chart("rejected", "Rejected files by reason", card.get("rejected_by_reason") or {}, REJECTED),
    ])
    rows = []
    for o in card.get("outliers") or []:
        rows.append(
            "<tr>" + f"<td>{escape(str(o.get('key')))}</td><td>{escape(str(o.get('status')))}</td>"
            f"<td>{escape(', '.join(o.get('rejected_for') or []))}</td><td>{escape(', '.join(o.get('issues') or []))}</td>"
            + "".join(f'<td class="num">{_fmt(o.get(k))}</td>' for k in ("score", "duration", "lufs", "true_peak_db", "silence_ratio", "clipped_samples"))
            + f'<td class="num">{_fmt(o.get("dc_offset"), 4)}</td></tr>'
        )
    table = (
        '<table class="outliers"><thead><tr><th>file</th><th>status</th><th>rejected for</th><th>issues</th>'
        '<th class="num">score</th><th class="num">s</th><th class="num">LUFS</th><th class="num">dBTP</th>'
        '<th class="num">silence</th><th class="num">clipped</th><th class="num">DC</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table>"
    ) if rows else '<div class="empty">no outliers</div>'
    meta = " · ".join(escape(str(run[k])) for k in ("started_at", "mode", "results") if run.get(k))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # no network: a report opened from an archive years later must look the same
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><div class="muted">{meta}</div>'
        f'<div class="stats">{stats}</div>'
        f'<h2>Dataset</h2><div class="charts">{charts}</div>'
        f'<h2>Worst outliers (up to {OUTLIER_COUNT})</h2>{table}'
        f'<p class="muted">{escape(_measured_note(card.get("measured_at") or {}))} Kept = stored outputs; '
        "rejected = failed a quality filter.</p></body></html>\n"
    )
