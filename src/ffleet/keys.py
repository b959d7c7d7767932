"""Output key mapping: output prefix + input key (extension replaced) + suffix, as in the original sample."""
from __future__ import annotations

import posixpath
import sqlite3
from pathlib import Path


def output_key(input_key: str, prefix: str = "", suffix: str = "", extension: str | None = None) -> str:
    """Map an input key to its output key.

    The original FFmpeg-on-Batch rule is ``prefix + key + suffix``; ffleet replaces the input's
    extension first when ``extension`` is given (``a/b.wav`` -> ``a/b.flac``).
    """
    key = input_key
    if extension:
        head, tail = posixpath.split(key)
        stem, dot, _ = tail.rpartition(".")
        tail = (stem if dot and stem else tail) + extension
        key = posixpath.join(head, tail) if head else tail
    return f"{prefix}{key}{suffix}"


# Limits of the places a key must fit: an S3 key is at most 1,024 bytes of UTF-8; a file name
# (one path segment) at most 255 bytes on Linux file systems, and a path at most 4,096.
S3_MAX_KEY_BYTES = 1024
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4000  # of the key; the folder's own path takes the rest


def _utf8(key: str) -> bytes | None:
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON manifest's "\ud800"
        return None


def s3_key_problem(key: str) -> str | None:
    """Why key cannot name an S3 object, or None."""
    data = _utf8(key)
    if not key:
        return "is empty"
    if data is None:
        return "is not valid UTF-8"
    if len(data) > S3_MAX_KEY_BYTES:
        return f"is {len(data):,} bytes long; S3 keys are at most {S3_MAX_KEY_BYTES:,}"
    return None


def local_key_problem(key: str) -> str | None:
    """Why key cannot name one distinct file inside a folder, or None.

    S3 keys are plain strings: '.', 'a/..', 'a/./b.wav', 'a//b.wav' and '/abs' are distinct objects
    there, but as paths they name the folder itself, its parent, or the same file as another key
    ('a/b.wav'). Written to a folder, '.' turned the output folder into a file and 'a/./b.wav' and
    'a//b.wav' both "succeeded" into one file. Only keys whose '/'-separated segments are all
    ordinary names map one-to-one onto files.
    """
    if not key:
        return "is empty"
    if "\x00" in key:
        return "contains a NUL character, which no file name can hold"
    data = _utf8(key)
    if data is None:
        return "is not valid UTF-8"
    if key.startswith("/"):
        return "is an absolute path"
    segments = key.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "has an empty, '.' or '..' path segment, so as a path it is not one distinct file in the folder"
    if any(len(s.encode("utf-8")) > NAME_MAX_BYTES for s in segments):
        return f"has a path segment longer than {NAME_MAX_BYTES} bytes, the longest file name"
    if len(data) > PATH_MAX_BYTES:
        return f"is {len(data):,} bytes long, too long for a file path"
    return None


def matches_extensions(key: str, extensions: list[str] | None) -> bool:
    if not extensions:
        return True
    lower = key.lower()
    return any(lower.endswith(ext) for ext in extensions)


def is_folder_marker(key: str) -> bool:
    """S3 consoles create zero-byte 'folder/' objects; they are never media."""
    return key.endswith("/")


class OutputClaims:
    """Which input each output key belongs to: in a run (ffleet run), a batch (a Batch job), or the
    records of a whole cloud run (the summarizer).

    Two inputs share an output only when output.extension replaces their own (song.wav and song.mp3
    both become song.flac). Without a check the second would overwrite the first, or be skipped as
    "already done" on a re-run, and both would report success. The worker claims in listing order, so
    the first listed input converts and every later one fails with output_collision. Kept in SQLite
    on disk: a dict of 3 million key pairs would hold about half a gigabyte; a claim costs about 4 us.
    """

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(folder / "output-claims.sqlite"), check_same_thread=False)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                              "CREATE TABLE IF NOT EXISTS claim(output TEXT PRIMARY KEY, input TEXT)")

    def claim(self, output_key: str, input_key: str) -> str | None:
        """Claim output_key for input_key; the input that already holds it, if another."""
        if self.db.execute("INSERT OR IGNORE INTO claim VALUES (?, ?)", (output_key, input_key)).rowcount:
            return None
        (holder,) = self.db.execute("SELECT input FROM claim WHERE output = ?", (output_key,)).fetchone()
        return holder if holder != input_key else None

    def close(self) -> None:
        self.db.close()
