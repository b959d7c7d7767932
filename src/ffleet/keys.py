"""Output key mapping: output prefix + input key (extension replaced) + suffix, as in the original sample."""
from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Iterable, Iterator

from ffleet.storage import ListedObject


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
        key = posixpath.join(head, tail)  # head "" (a key at the top): join gives tail alone
    return f"{prefix}{key}{suffix}"


SEGMENT_DIGITS = 5  # 00000 .. 99999: at the 3600 s max_seconds ceiling, longer than any recording


def segment_folder(out_key: str) -> tuple[str, str]:
    """(folder, extension) of a segmented output: ``out/a/b.flac`` -> (``out/a/b/``, ``.flac``).

    The extension is the last one of the key's last path part (the suffix's, if it has one); the
    folder is the key without it, plus '/'. A key without an extension keeps its whole name.
    """
    head, tail = posixpath.split(out_key)
    stem, ext = posixpath.splitext(tail)  # ".flac" alone is a name, not an extension: ("", ".flac") never comes back
    return posixpath.join(head, stem) + "/", ext


def segment_key(folder: str, index: int, ext: str) -> str:
    """The key of piece `index` (from 0) in a segment folder: ``out/a/b/00003.flac``."""
    return f"{folder}{index:0{SEGMENT_DIGITS}d}{ext}"


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
        import sqlite3  # here: a run whose keys cannot collide never needs it, and pays for it at start

        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(folder / "output-claims.sqlite"), check_same_thread=False)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                              "CREATE TABLE IF NOT EXISTS claim(output TEXT PRIMARY KEY, input TEXT)")
        self._holding = False  # is_input knows nothing until hold_inputs has stored the inputs

    def hold_inputs(self, items: Iterable[ListedObject]) -> Iterator[ListedObject]:
        """Store every input of the run first, then yield them back in order, so that is_input
        knows them all before the first output is written.

        Needed where outputs share the inputs' bucket (a manifest can name any key there): an
        output key may be another input's key, or the input's own (`overwrite: true` replaced an
        input with its transcode). On disk, not in memory: 1.2 million 50-byte keys took 5.0 s of
        CPU and 140 MB to store and read back, and a look-up 9.5 us (one conversion costs more).
        """
        self.db.execute("CREATE TABLE IF NOT EXISTS item(n INTEGER PRIMARY KEY, key TEXT, size INTEGER)")
        with self.db:
            self.db.executemany("INSERT INTO item(key, size) VALUES (?, ?)", ((o.key, o.size) for o in items))
        self.db.execute("CREATE INDEX IF NOT EXISTS item_key ON item(key)")
        self._holding = True
        for key, size in self.db.execute("SELECT key, size FROM item ORDER BY n"):
            yield ListedObject(key, size)

    def is_input(self, key: str) -> bool:
        """Whether key is an input of the run (only known after hold_inputs)."""
        return self._holding and self.db.execute(
            "SELECT 1 FROM item WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def claim(self, output_key: str, input_key: str) -> str | None:
        """Claim output_key for input_key; the input that already holds it, if another."""
        if self.db.execute("INSERT OR IGNORE INTO claim VALUES (?, ?)", (output_key, input_key)).rowcount:
            return None
        (holder,) = self.db.execute("SELECT input FROM claim WHERE output = ?", (output_key,)).fetchone()
        return holder if holder != input_key else None

    def close(self) -> None:
        self.db.close()
