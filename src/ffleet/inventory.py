"""What to process: list a prefix or folder, or read a manifest (CSV or JSON Lines of keys)."""
from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Iterator

from ffleet.keys import is_folder_marker, matches_extensions
from ffleet.storage import ListedObject, input_storage, open_location

# Column or field names accepted for the key, in order of preference. "Key" is what Step Functions'
# S3 inventory and ListObjectsV2 use; "key" is what ffleet's own failed-files manifest writes.
KEY_FIELDS = ("key", "Key", "s3_key", "object_key")


class ManifestError(ValueError):
    pass


def item_key(row: object) -> str | None:
    """The key a manifest line or a map item names (the first of KEY_FIELDS it has), if a non-empty
    string that S3 could hold (JSON's "\\ud800" decodes to a string no file system or record takes)."""
    key = next((row[f] for f in KEY_FIELDS if isinstance(row, dict) and f in row), None)
    return key if isinstance(key, str) and key and _encodable(key) else None


def _encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def wanted(objects: Iterable[ListedObject], extensions, dedupe: bool) -> Iterator[ListedObject]:
    """The objects to process: no folder markers, only the request's extensions, and with dedupe each key once."""
    seen: set[str] = set()
    for obj in objects:
        if is_folder_marker(obj.key) or not matches_extensions(obj.key, extensions):
            continue
        if dedupe:
            if obj.key in seen:
                continue
            seen.add(obj.key)
        yield obj


def parse_manifest(data: bytes, source: str) -> Iterator[ListedObject]:
    """Yield the keys of a manifest: JSON Lines when the first non-blank line starts with '{', else CSV.

    CSV (RFC 4180, read with the csv module): if the first non-blank row names a column of
    KEY_FIELDS, that column holds the keys ("c,d.wav" quoted as a field keeps its comma, '""' is a
    quote, a quoted field may span lines); otherwise the file is one key per line, each line taken
    whole (commas and quotes included), except that a line that is one quoted field is unquoted.
    A UTF-8 byte order mark is ignored, blank lines are skipped anywhere, and a quote left open is
    an error naming its line, never a field that swallows the lines after it.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    first_at = next((n for n, line in enumerate(lines) if line.strip()), None)
    if first_at is None:
        return
    if lines[first_at].lstrip().startswith("{"):
        yield from _json_lines(lines, source)
        return
    header = _csv_row(lines[first_at], source, first_at + 1)
    names = [h.strip() for h in header] if header else []
    column = next((names.index(f) for f in KEY_FIELDS if f in names), None)
    if column is None:
        yield from _key_lines(lines, source)
    else:
        yield from _csv_column(text, column, names[column], source)


def _json_lines(lines: list[str], source: str) -> Iterator[ListedObject]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source} line {n}: not JSON ({exc.msg})") from None
        except (RecursionError, ValueError) as exc:
            raise ManifestError(f"{source} line {n}: not a usable JSON object ({type(exc).__name__})") from None
        key = item_key(row)
        if key is None:
            raise ManifestError(f"{source} line {n}: no 'key' field holding a non-empty string of valid UTF-8")
        size = row.get("size") if isinstance(row.get("size"), int) else None
        yield ListedObject(key, size)


def _csv_row(line: str, source: str, n: int) -> list[str] | None:
    try:
        return next(csv.reader([line], strict=True), None)
    except csv.Error as exc:
        raise ManifestError(f"{source} line {n}: not a CSV row ({exc})") from None


def _key_lines(lines: list[str], source: str) -> Iterator[ListedObject]:
    """One key per line, taken whole; a line that is exactly one quoted CSV field is unquoted."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) >= 2 and line[0] == '"' and line[-1] == '"':
            row = _csv_row(line, source, n)
            if row is not None and len(row) == 1:
                line = row[0]
        if not _encodable(line):
            raise ManifestError(f"{source} line {n}: not valid UTF-8")
        yield ListedObject(line)


def _csv_column(text: str, column: int, name: str, source: str) -> Iterator[ListedObject]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    width = None
    try:
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue  # a blank row: skip it, the manifest goes on
            if width is None:
                width = len(row)  # the header
                continue
            if len(row) > width:
                # an unquoted comma in a key: 'c,d.wav' under a one-column header became 'c'
                raise ManifestError(f"{source} line {reader.line_num}: {len(row)} fields, but the header has {width}; "
                                    'quote a key holding a comma as "c,d.wav"')
            if column >= len(row):
                raise ManifestError(f"{source} line {reader.line_num}: no '{name}' column (the row has {len(row)} fields)")
            if row[column].strip():
                yield ListedObject(row[column])
    except csv.Error as exc:
        # strict: an opening quote never closed (or text after a closing one) is an error, not a
        # field that runs on over every line after it
        raise ManifestError(f"{source} line {reader.line_num}: not valid CSV ({exc}); "
                            'quote a key holding a comma or a quote as "c,d.wav" (a quote doubled: "")') from None


def read_manifest(uri_or_path: str, client=None) -> Iterator[ListedObject]:
    storage, key = open_location(uri_or_path, client)
    return parse_manifest(storage.read_bytes(key), uri_or_path)


def list_items(request, client=None) -> Iterator[ListedObject]:
    """Every input the request names, filtered by extension, in a stable order."""
    if request.input.manifest:
        source: Iterable[ListedObject] = read_manifest(request.input.manifest, client)
    else:
        storage, prefix = input_storage(request, client)
        source = storage.list(prefix)
    # a manifest may name a key twice; process it once (a listing names each key once)
    yield from wanted(source, request.input.extensions, dedupe=bool(request.input.manifest))


def batches(items: Iterable[ListedObject], size: int) -> Iterator[list[ListedObject]]:
    batch: list[ListedObject] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

