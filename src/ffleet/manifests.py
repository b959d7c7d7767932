"""Training manifests (NeMo, Hugging Face audiofolder, Lhotse) written from result records, one row at a time."""
from __future__ import annotations

import gzip
import json
import posixpath
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from ffleet.results import SUCCEEDED, ItemResult
from ffleet.storage import CHUNK, LocalStorage, NotFound, Storage, local_key_problem

FORMATS = ("nemo", "audiofolder", "lhotse")
MANIFESTS_DIR = "manifests/"  # under the run's results prefix or folder
NEMO_FILE = "nemo.jsonl"
AUDIOFOLDER_FILE = "metadata.jsonl"  # the name `datasets` looks for; one sits at the output root
AUDIOFOLDER_RUN_FILE = "audiofolder-metadata.jsonl"  # this run's rows only, beside the other manifests
# rows of the earlier metadata.jsonl that no loader could use (kept here, not at the output root)
AUDIOFOLDER_DROPPED_FILE = "audiofolder-earlier-unusable.jsonl"
LHOTSE_RECORDINGS = "lhotse-recordings.jsonl.gz"
LHOTSE_SUPERVISIONS = "lhotse-supervisions.jsonl.gz"

# The measurements (docs/dataset-card.md) a row carries when the run measured them.
MEASURED_FIELDS = ("lufs", "true_peak_db", "peak_db", "silence_ratio", "clipped_samples", "dc_offset")


@dataclass
class Clip:
    """One piece of audio a run stored and did not reject: a whole output, or one segment of it."""

    key: str  # its output key
    duration: float
    source_key: str
    sample_rate: int | None = None
    channels: int | None = None
    codec: str | None = None
    start: float | None = None  # a segment's span in the source, seconds
    end: float | None = None
    segment: int | None = None
    audio: dict[str, Any] = field(default_factory=dict)

    def measured(self) -> dict[str, Any]:
        return {k: self.audio[k] for k in MEASURED_FIELDS if self.audio.get(k) is not None}


def clips(r: ItemResult) -> Iterator[Clip]:
    """The clips of one record: none unless it succeeded; one per segment not rejected for a segmented
    record (its output_key is then the segments' folder); else its output."""
    if r.status != SUCCEEDED:
        return
    extra = r.extra or {}
    segments = extra.get("segments")
    common = {"source_key": r.key, "sample_rate": r.sample_rate, "channels": r.channels, "codec": r.codec}
    if isinstance(segments, list):
        for s in segments:
            if not isinstance(s, dict) or s.get("rejected_for") or not s.get("key") or not _seconds(s.get("duration")):
                continue
            yield Clip(key=s["key"], duration=float(s["duration"]), start=s.get("start"), end=s.get("end"),
                       segment=s.get("index"), audio=s.get("audio") or {}, **common)
    elif r.output_key and _seconds(r.duration_out):
        yield Clip(key=r.output_key, duration=float(r.duration_out), audio=extra.get("audio") or {}, **common)


def _seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def output_root(output_prefix: str) -> str:
    """The folder of output.s3_prefix ('out/' for 'out/' and 'out/x-'; '' for 'x-'): every output key is under it."""
    return output_prefix[: output_prefix.rfind("/") + 1]


# one encoder for every row: json.dumps with any option builds a new one per call
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def _line(row: dict[str, Any]) -> str:
    return _ENCODE(row) + "\n"


class ManifestWriter:
    """Feeds on ItemResults one at a time (like SummaryBuilder) and writes each manifest's rows straight
    to a file in `folder`: memory does not grow with the run. publish() then stores them."""

    def __init__(self, formats: Iterable[str], folder: Path, output_prefix: str, locate: Callable[[str], str]):
        self.formats = tuple(f for f in FORMATS if f in set(formats))
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root = output_root(output_prefix)
        self.locate = locate  # output key -> what NeMo and Lhotse open: an absolute path or an s3:// URI
        self.rows = dict.fromkeys(self.formats, 0)
        self._files: dict[str, IO[str]] = {}
        if "nemo" in self.formats:
            self._files["nemo"] = open(self.folder / NEMO_FILE, "w", encoding="utf-8")
        if "audiofolder" in self.formats:
            self._files["audiofolder"] = open(self.folder / AUDIOFOLDER_RUN_FILE, "w", encoding="utf-8")
            # which file names (and segment folders) this run wrote, for the merge with the output root's file
            db = self.folder / "audiofolder-written.sqlite"
            db.unlink(missing_ok=True)  # the folder is this writer's own; a file left there is an earlier writer's
            self._written = sqlite3.connect(str(db))
            self._names: list[tuple[str]] = []
            self._folders: list[tuple[str]] = []
            self._written.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                                        "CREATE TABLE name(n TEXT PRIMARY KEY); CREATE TABLE folder(f TEXT PRIMARY KEY)")
        if "lhotse" in self.formats:
            # gzip level 6 at about 150 bytes a row costs microseconds; the files are a tenth of the size
            for name, file in (("recordings", LHOTSE_RECORDINGS), ("supervisions", LHOTSE_SUPERVISIONS)):
                self._files[name] = gzip.open(self.folder / file, "wt", encoding="utf-8", compresslevel=6)

    def add(self, r: ItemResult) -> None:
        if not self.formats:
            return
        for clip in clips(r):
            described = self.described(clip)  # shared by every row of this clip: only read, never changed
            if "nemo" in self._files:
                self._files["nemo"].write(_line(self.nemo_row(clip, described)))
                self.rows["nemo"] += 1
            if "audiofolder" in self._files:
                name = self.file_name(clip)
                self._files["audiofolder"].write(_line(self.audiofolder_row(clip, name, described)))
                self._names.append((name,))
                if clip.segment is not None:
                    self._folders.append((posixpath.dirname(name),))
                if len(self._names) >= 1000:
                    self._flush_names()
                self.rows["audiofolder"] += 1
            if "recordings" in self._files and clip.sample_rate:
                recording, supervision = self.lhotse_rows(clip, described)
                self._files["recordings"].write(_line(recording))
                self._files["supervisions"].write(_line(supervision))
                self.rows["lhotse"] += 1

    def _flush_names(self) -> None:
        # in batches: one executemany of 1,000 names costs what a few single INSERTs do
        with self._written:
            self._written.executemany("INSERT OR IGNORE INTO name VALUES (?)", self._names)
            self._written.executemany("INSERT OR IGNORE INTO folder VALUES (?)", self._folders)
        self._names, self._folders = [], []

    def add_all(self, records: Iterable[ItemResult]) -> "ManifestWriter":
        for r in records:
            self.add(r)
        return self

    # --- rows ---------------------------------------------------------------------------
    def file_name(self, clip: Clip) -> str:
        return clip.key[len(self.root):] if clip.key.startswith(self.root) else clip.key

    def described(self, clip: Clip) -> dict[str, Any]:
        """What every format carries beyond its own fields: the measurements, and where the clip came from."""
        out = clip.measured()
        out["source_key"] = clip.source_key
        if clip.segment is not None:
            out.update(segment=clip.segment, source_start=clip.start, source_end=clip.end)
        return out

    def nemo_row(self, clip: Clip, described: dict[str, Any] | None = None) -> dict[str, Any]:
        # A segment is its own cut file, so no `offset`: NeMo reads the file from its start.
        row = {"audio_filepath": self.locate(clip.key), "duration": round(clip.duration, 6)}
        row.update({k: v for k, v in (("sample_rate", clip.sample_rate), ("channels", clip.channels)) if v is not None})
        return {**row, **(described if described is not None else self.described(clip))}

    def audiofolder_row(self, clip: Clip, name: str, described: dict[str, Any] | None = None) -> dict[str, Any]:
        row = {"file_name": name, "duration": round(clip.duration, 6),
               "sample_rate": clip.sample_rate, "channels": clip.channels}
        return {**row, **(described if described is not None else self.described(clip))}

    def lhotse_rows(self, clip: Clip, described: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A Recording and a SupervisionSegment covering it, as Lhotse's to_dict() writes them."""
        rid = self.file_name(clip)
        sr = int(clip.sample_rate or 0)
        channels = list(range(clip.channels or 1))
        num_samples = round(clip.duration * sr)
        location = self.locate(clip.key)
        recording = {
            "id": rid,
            "sources": [{"type": "url" if "://" in location else "file", "channels": channels, "source": location}],
            "sampling_rate": sr,
            "num_samples": num_samples,
            # Lhotse checks duration == num_samples / sampling_rate
            "duration": num_samples / sr,
            "channel_ids": channels,
        }
        supervision = {
            "id": rid, "recording_id": rid, "start": 0.0, "duration": num_samples / sr,
            "channel": channels[0] if len(channels) == 1 else channels,
            "custom": described if described is not None else self.described(clip),
        }
        return recording, supervision

    # --- storing ------------------------------------------------------------------------
    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def publish(self, results: Storage, results_prefix: str, outputs: Storage) -> dict[str, Any]:
        """Store the manifests under <results_prefix>manifests/ and audiofolder's metadata.jsonl at the
        output root; what the summary says about them ({format: {"rows", "files"}})."""
        self.close()
        out: dict[str, Any] = {}
        at = results_prefix + MANIFESTS_DIR
        if "nemo" in self.formats:
            results.store(self.folder / NEMO_FILE, at + NEMO_FILE, content_type="application/x-ndjson")
            out["nemo"] = {"rows": self.rows["nemo"], "files": [results.uri(at + NEMO_FILE)]}
        if "lhotse" in self.formats:
            for name in (LHOTSE_RECORDINGS, LHOTSE_SUPERVISIONS):
                results.store(self.folder / name, at + name, content_type="application/gzip")
            out["lhotse"] = {"rows": self.rows["lhotse"],
                             "files": [results.uri(at + n) for n in (LHOTSE_RECORDINGS, LHOTSE_SUPERVISIONS)]}
        if "audiofolder" in self.formats:
            merged = self._merge_root_metadata(outputs)
            outputs.store(merged, self.root + AUDIOFOLDER_FILE, content_type="application/x-ndjson")
            results.store(self.folder / AUDIOFOLDER_RUN_FILE, at + AUDIOFOLDER_RUN_FILE, content_type="application/x-ndjson")
            out["audiofolder"] = {"rows": self.rows["audiofolder"],
                                  "files": [outputs.uri(self.root + AUDIOFOLDER_FILE), results.uri(at + AUDIOFOLDER_RUN_FILE)]}
            if self.unusable_from_before:
                results.store(self.folder / AUDIOFOLDER_DROPPED_FILE, at + AUDIOFOLDER_DROPPED_FILE,
                              content_type="application/x-ndjson")
                out["audiofolder"]["earlier_unusable_rows"] = self.unusable_from_before
                out["audiofolder"]["files"].append(results.uri(at + AUDIOFOLDER_DROPPED_FILE))
            self._written.close()
        return out

    def _merge_root_metadata(self, outputs: Storage) -> Path:
        """The output root's metadata.jsonl: an earlier run's rows (a re-drive, or a re-run that skipped
        what exists) stay, except those this run wrote again (the same file, or a segment folder it
        rebuilt); then this run's rows. Streamed: neither file is held in memory."""
        self._flush_names()
        merged = self.folder / ("merged-" + AUDIOFOLDER_FILE)
        kept = unusable = 0
        with open(merged, "wb") as dst, open(self.folder / AUDIOFOLDER_DROPPED_FILE, "wb") as dropped:
            try:
                for line in _lines(outputs.iter_chunks(self.root + AUDIOFOLDER_FILE)):
                    if not line.strip():
                        continue
                    name = _usable_file_name(line)
                    if name is None:
                        # one unreadable row makes load_dataset fail, and a name out of the root makes
                        # it read a file outside the dataset: such rows go to the run's results instead
                        dropped.write(line.rstrip(b"\r\n") + b"\n")
                        unusable += 1
                    elif not self._rewritten(name):
                        dst.write(line.rstrip(b"\r\n") + b"\n")
                        kept += 1
            except NotFound:
                pass
            with open(self.folder / AUDIOFOLDER_RUN_FILE, "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
        self.kept_from_before, self.unusable_from_before = kept, unusable
        return merged

    def _rewritten(self, name: str) -> bool:
        db = self._written
        return bool(db.execute("SELECT 1 FROM name WHERE n = ?", (name,)).fetchone()
                    or db.execute("SELECT 1 FROM folder WHERE f = ?", (posixpath.dirname(name),)).fetchone())


def _usable_file_name(line: bytes) -> str | None:
    """The row's file_name if the row is a JSON object naming a file inside the output root."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    name = row.get("file_name") if isinstance(row, dict) else None
    # a name that is one distinct file inside the root, as a key of a local folder must be; no '\\',
    # which a Windows loader reads as a separator
    if not isinstance(name, str) or local_key_problem(name) or "\\" in name:
        return None
    return name


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


def local_locator(storage: Storage) -> Callable[[str], str]:
    """Output key -> absolute path for a folder, s3:// URI for a bucket."""
    if isinstance(storage, LocalStorage):
        # joined as strings: pathlib interns every part of every path, and a run has millions of them
        base = str(storage.root.resolve()).rstrip("/") + "/"
        return lambda key: base + key
    return storage.uri
