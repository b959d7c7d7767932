"""The dataset card: a streaming, bounded-memory description of the audio a run produced."""
from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import Counter
from typing import Any

from ffleet.results import REJECTED, SUCCEEDED, ItemResult

# Fixed bin edges keep memory constant whatever the run's size, and make cards of different runs
# comparable. The first and last bins are open-ended ("< 1 s", ">= 600 s").
DURATION_EDGES = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
LOUDNESS_EDGES = (-60, -50, -40, -35, -30, -27, -24, -21, -18, -15, -12, -9, -6)  # LUFS
OUTLIER_COUNT = 20
DISTINCT_LIMIT = 50  # codec and sample-rate names beyond this many are counted as "other"
TARGET_LUFS = -23.0  # EBU R 128; loudness this far from it is not in itself an outlier:
LOUDNESS_TOLERANCE = 7.0  # -30 .. -16 LUFS covers speech corpora as commonly published


def _bin_labels(edges: tuple[float, ...], unit: str) -> list[str]:
    labels = [f"< {edges[0]:g}{unit}"]
    labels += [f"{a:g}-{b:g}{unit}" for a, b in zip(edges, edges[1:])]
    labels.append(f">= {edges[-1]:g}{unit}")
    return labels


def _bin(edges: tuple[float, ...], value: float) -> int:
    """Index of the bin holding value: bins are [edge[i-1], edge[i]), open at both ends."""
    return bisect.bisect_right(edges, value)


class _Histogram:
    """Counts of kept and rejected files per fixed bin."""

    def __init__(self, edges: tuple[float, ...], unit: str):
        self.edges, self.labels = edges, _bin_labels(edges, unit)
        self.kept = [0] * len(self.labels)
        self.rejected = [0] * len(self.labels)

    def add(self, value: float | None, rejected: bool) -> None:
        if value is None or not math.isfinite(value):
            return
        (self.rejected if rejected else self.kept)[_bin(self.edges, value)] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.labels, "kept": self.kept, "rejected": self.rejected}


class _Tally:
    """A Counter that stops growing at DISTINCT_LIMIT names (a corrupt header can invent any codec name)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, name: Any) -> None:
        if name is None:
            return
        name = str(name)
        if name not in self.counts and len(self.counts) >= DISTINCT_LIMIT:
            name = "other"
        self.counts[name] += 1

    def to_dict(self) -> dict[str, int]:
        return dict(self.counts.most_common())


def outlier_issues(audio: dict[str, Any]) -> list[tuple[str, float]]:
    """(issue, severity 0..1+) for each way a file's measurements stray from clean training audio."""
    issues = []
    silence = audio.get("silence_ratio")
    if silence:
        issues.append(("silence", float(silence)))
    lufs = audio.get("lufs")
    if lufs is not None:
        off = abs(lufs - TARGET_LUFS) - LOUDNESS_TOLERANCE
        if off > 0:
            issues.append(("too_quiet" if lufs < TARGET_LUFS else "too_loud", off / 10))
    tp = audio.get("true_peak_db")
    if tp is not None and tp > -1.0:
        issues.append(("true_peak", (tp + 1.0) / 3))
    clipped = audio.get("clipped_samples") or 0
    if clipped and audio.get("clipped"):
        issues.append(("clipped", min(1.0, math.log10(1 + clipped) / 3)))
    dc = audio.get("dc_offset")
    if audio.get("dc_offset_flag") and dc is not None:
        issues.append(("dc_offset", min(1.0, abs(dc) / 0.05)))
    return issues


class DatasetCardBuilder:
    """Feeds on ItemResults one at a time (like SummaryBuilder); card() gives the summary's "dataset"."""

    def __init__(self, outliers: int = OUTLIER_COUNT):
        self.seconds_in = 0.0
        self.seconds_out = 0.0
        self.files_measured = 0
        self.files_kept = 0
        self.files_rejected = 0
        self.duration = _Histogram(DURATION_EDGES, " s")
        self.loudness = _Histogram(LOUDNESS_EDGES, " LUFS")
        self.rate_in, self.rate_out = _Tally(), _Tally()
        self.codec_in, self.codec_out = _Tally(), _Tally()
        self.measured_at = _Tally()  # "output" (the audio as written) or "source" (the decoded input)
        self.rejected_by_reason: Counter[str] = Counter()
        self.flags: Counter[str] = Counter()
        self.outlier_limit = outliers
        self._heap: list[tuple[float, int, dict[str, Any]]] = []  # min-heap: the worst N seen so far
        self._seq = itertools.count()

    def add(self, r: ItemResult) -> None:
        if r.status not in (SUCCEEDED, REJECTED):
            return  # failed/skipped/not_done files are not part of the dataset this run made
        self.seconds_in += r.duration_in or 0.0
        pieces = (r.extra or {}).get("segments")
        if pieces is None:
            self._add_item(r)
            return
        for p in pieces:  # a segmented input: its pieces are what a training set is made of
            self._add_item(ItemResult(
                key=p.get("key") or r.key, status=REJECTED if p.get("rejected_for") else SUCCEEDED,
                duration_out=p.get("duration"), sample_rate=r.sample_rate, codec=r.codec,
                reason=(p.get("rejected_for") or [None])[0],
                extra={"audio": p.get("audio") or {}, "rejected_for": p.get("rejected_for")}))

    def _add_item(self, r: ItemResult) -> None:
        rejected = r.status == REJECTED
        audio = (r.extra or {}).get("audio") or {}
        if rejected:
            self.files_rejected += 1
            for reason in (r.extra or {}).get("rejected_for") or [r.reason or "unknown"]:
                self.rejected_by_reason[reason] += 1
        else:
            self.files_kept += 1
            self.seconds_out += r.duration_out or 0.0
            self.rate_out.add(r.sample_rate)
            self.codec_out.add(r.codec)
        if audio:
            self.files_measured += 1
            self.measured_at.add(audio.get("measured_at"))
        self.duration.add(r.duration_out if r.duration_out is not None else audio.get("duration"), rejected)
        self.loudness.add(audio.get("lufs"), rejected)
        self.rate_in.add(audio.get("sample_rate"))
        self.codec_in.add(audio.get("codec"))
        for flag in ("clipped", "dc_offset_flag"):
            if audio.get(flag):
                self.flags[flag] += 1
        self._consider_outlier(r, audio, rejected)

    def _consider_outlier(self, r: ItemResult, audio: dict[str, Any], rejected: bool) -> None:
        issues = outlier_issues(audio)
        score = sum(s for _, s in issues) + (1.0 if rejected else 0.0)
        if score <= 0 or (len(self._heap) >= self.outlier_limit and score <= self._heap[0][0]):
            return  # not among the worst: build nothing
        entry = {
            "key": r.key, "score": round(score, 3), "status": r.status,
            "issues": [name for name, _ in sorted(issues, key=lambda x: -x[1])],
            "rejected_for": (r.extra or {}).get("rejected_for") or ([r.reason] if rejected and r.reason else []),
            "duration": r.duration_out if r.duration_out is not None else audio.get("duration"),
            **{k: audio.get(k) for k in ("lufs", "true_peak_db", "silence_ratio", "clipped_samples", "dc_offset")},
        }
        item = (score, next(self._seq), entry)
        if len(self._heap) < self.outlier_limit:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def card(self) -> dict[str, Any]:
        return {
            "files": {"kept": self.files_kept, "rejected": self.files_rejected, "measured": self.files_measured},
            "measured_at": self.measured_at.to_dict(),
            "hours": {"input": round(self.seconds_in / 3600, 4), "output": round(self.seconds_out / 3600, 4)},
            "histograms": {
                "duration_seconds": self.duration.to_dict(),
                "loudness_lufs": self.loudness.to_dict(),
                "sample_rate_hz": {"input": self.rate_in.to_dict(), "output": self.rate_out.to_dict()},
            },
            "codecs": {"input": self.codec_in.to_dict(), "output": self.codec_out.to_dict()},
            "rejected_by_reason": dict(self.rejected_by_reason.most_common()),
            "flagged": {"clipped": self.flags["clipped"], "dc_offset": self.flags["dc_offset_flag"]},
            "outliers": [e for _, _, e in sorted(self._heap, key=lambda x: (-x[0], x[1]))],
        }
