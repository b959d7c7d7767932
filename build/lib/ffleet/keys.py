"""Output key mapping: output prefix + input key (extension replaced) + suffix, as in the original sample."""
from __future__ import annotations

import posixpath


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


def matches_extensions(key: str, extensions: list[str] | None) -> bool:
    if not extensions:
        return True
    lower = key.lower()
    return any(lower.endswith(ext) for ext in extensions)


def is_folder_marker(key: str) -> bool:
    """S3 consoles create zero-byte 'folder/' objects; they are never media."""
    return key.endswith("/")
