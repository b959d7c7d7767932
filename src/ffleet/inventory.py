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
    """The key a manifest line or a map item names (the first of KEY_FIELDS it has), if a non-empty string."""
    key = next((row[f] for f in KEY_FIELDS if isinstance(row, dict) and f in row), None)
    return key if isinstance(key, str) and key else None


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
    """Yield the keys of a manifest. JSON Lines when the first non-blank line starts with '{'."""
    text = data.decode("utf-8-sig")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{source} line {n}: not JSON ({exc.msg})") from None
            key = item_key(row)
            if key is None:
                raise ManifestError(f"{source} line {n}: no 'key' field")
            size = row.get("size") if isinstance(row.get("size"), int) else None
            yield ListedObject(key, size)
        return
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return
    column = next((header.index(f) for f in KEY_FIELDS if f in header), None)
    if column is None:
        # No recognised header: a bare list of keys, one per row, the first row included.
        column = 0
        if header and header[0].strip():
            yield ListedObject(header[0])
    for n, row in enumerate(reader, 2):
        if not row or not row[column].strip():
            continue
        yield ListedObject(row[column])


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

