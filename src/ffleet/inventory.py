"""What to process: list a prefix or folder, or read a manifest (CSV or JSON Lines of keys)."""
from __future__ import annotations

import io
import itertools
import json
from typing import Iterable, Iterator

from ffleet.keys import is_folder_marker, matches_extensions
from ffleet.storage import ListedObject, input_storage, open_location

# Column or field names accepted for the key, in order of preference. "Key" is what Step Functions'
# S3 inventory and ListObjectsV2 use; "key" is what ffleet's own failed-files manifest writes.
KEY_FIELDS = ("key", "Key", "s3_key", "object_key")


# Header cells that name a CSV manifest's key column, compared case-insensitively with the spaces
# around them ignored, in order of preference.
KEY_COLUMNS = tuple(dict.fromkeys(f.lower() for f in KEY_FIELDS))


class ManifestError(ValueError):
    """A manifest that cannot be read; `line` is set when one line is to blame."""

    def __init__(self, source: str, reason: str, line: int | None = None):
        self.source, self.reason, self.line = source, reason, line
        super().__init__(f"{source} line {line}: {reason}" if line is not None else f"{source}: {reason}")


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
    """Yield the keys of a manifest: JSON Lines when the first non-blank line starts with '{', else CSV
    (csv_manifest_keys). A UTF-8 byte order mark is ignored; lines end at '\n' (or '\r\n') only, so a
    key may hold any other line-breaking character, as S3 keys may."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(source, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    first = next((line for line in manifest_lines(text) if line.strip()), None)
    if first is None:
        return
    if looks_like_json_lines(first):
        yield from _json_lines(manifest_lines(text), source)
    else:
        for _, key in csv_manifest_keys(manifest_lines(text), source):
            yield ListedObject(key)


def manifest_lines(text: str) -> Iterator[str]:
    """A manifest's lines, split at '\n' only, line ends kept (what csv_manifest_keys reads)."""
    return iter(io.StringIO(text, newline="\n"))


def looks_like_json_lines(first_line: str) -> bool:
    """A manifest whose first non-blank line starts with '{' is JSON Lines, whatever its name."""
    return first_line.lstrip().startswith("{")


class ManifestLineError(ValueError):
    """One line of a JSON Lines manifest that names no usable key (line counts from 1)."""

    def __init__(self, line: int, problem: str):
        self.line, self.problem = line, problem
        super().__init__(f"line {line} {problem}")


def json_lines_rows(lines: Iterable[str]) -> Iterator[tuple[int, dict, str]]:
    """(line, row, key) for each non-blank line of a JSON Lines manifest: the one set of rules for
    `ffleet run` and for a manifest dropped into the trigger bucket. ManifestLineError names the line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestLineError(n, f"is not JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise ManifestLineError(n, "is JSON nested too deeply to be a manifest line") from None
        except ValueError:  # an integer of more than 4,300 digits, which Python refuses to convert
            raise ManifestLineError(n, "holds a number too long to read") from None
        named = next((row[f] for f in KEY_FIELDS if f in row), None) if isinstance(row, dict) else None
        if isinstance(named, str) and not _encodable(named):
            raise ManifestLineError(n, "names a key that is not valid Unicode (a lone surrogate escape)")
        key = item_key(row)
        if key is None:
            raise ManifestLineError(n, 'needs a "key" field holding a non-empty string, e.g. {"key": "media/a.wav"}')
        yield n, row, key


def _json_lines(lines: Iterable[str], source: str) -> Iterator[ListedObject]:
    try:
        for _, row, key in json_lines_rows(lines):
            size = row.get("size")
            yield ListedObject(key, size if isinstance(size, int) else None)
    except ManifestLineError as exc:
        raise ManifestError(source, exc.problem, exc.line) from None


def csv_manifest_keys(lines: Iterable[str], source: str) -> Iterator[tuple[int, str]]:
    """(line, key) for each key of a CSV manifest: the one set of rules for `ffleet run` and for a
    manifest dropped into the trigger bucket. `lines` are the text split at '\n', ends kept.

    If the first non-blank line has a cell named 'key' (any case, spaces around it ignored; 's3_key'
    and 'object_key' too, 'key' preferred), it is a header and that column holds the keys: RFC 4180,
    strict ("c,d.wav" quoted keeps its comma, '""' is a quote, a quoted field may span lines), other
    columns ignored, rows with an empty key cell and blank rows skipped; a row with more fields than
    the header, without the key column, or with a quote left open is an error naming its line (never
    a field that swallows the lines after it). Otherwise every non-blank line is one key, the first
    included, taken whole (commas and quotes included), except that a line that is exactly one quoted
    field is unquoted.
    """
    it = iter(lines)
    header_line = 0
    for first in it:
        header_line += 1
        if first.strip():
            break
    else:
        return
    header = _csv_row(_line_text(first))
    names = [c.strip().lower() for c in header or []]
    column = next((names.index(f) for f in KEY_COLUMNS if f in names), None)
    if column is None:
        yield from _key_lines(itertools.chain([first], it), header_line)
    else:
        yield from _csv_column(it, column, len(names), header[column].strip(), source, header_line)


def _line_text(line: str) -> str:
    return line[:-1].removesuffix("\r") if line.endswith("\n") else line


def _csv_row(line: str) -> list[str] | None:
    """The line as one CSV row, or None if it is not one (then it is no header, and a key as written)."""
    import csv  # manifests only: a listing run starts its first FFmpeg without it

    try:
        return next(csv.reader([line], strict=True), None)
    except csv.Error:
        return None


def _key_lines(lines: Iterable[str], first_line: int) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(lines, first_line):
        key = _line_text(line)
        if not key.strip():
            continue
        if len(key) >= 2 and key[0] == '"' and key[-1] == '"':
            row = _csv_row(key)
            if row is not None and len(row) == 1:
                key = row[0]
        yield n, key


def _csv_column(lines: Iterable[str], column: int, width: int, key_name: str, source: str, header_line: int
                ) -> Iterator[tuple[int, str]]:
    import csv

    reader = csv.reader(lines, strict=True)
    try:
        for row in reader:
            n = header_line + reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank row: skip it, the manifest goes on
            if len(row) > width:
                # an unquoted comma in a key: 'c,d.wav' under a one-column header became 'c'
                raise ManifestError(source, f"{len(row)} fields, but the header has {width}; "
                                    'quote a key holding a comma as "c,d.wav"', n)
            if column >= len(row):
                raise ManifestError(source, f"no {key_name!r} column (the row has {len(row)} fields)", n)
            if row[column].strip():
                yield n, row[column]
    except csv.Error as exc:
        # strict: an opening quote never closed (or text after a closing one) is an error, not a
        # field that runs on over every line after it
        raise ManifestError(source, f"not valid CSV ({exc}); quote a key holding a comma or a quote "
                            'as "c,d.wav" (a quote doubled: "")', header_line + reader.line_num) from None


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

