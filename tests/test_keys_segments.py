"""Segment naming (keys.segment_folder / segment_key): stable, documented keys for the pieces of an input."""
import pytest

from ffleet.keys import SEGMENT_DIGITS, segment_folder, segment_key


@pytest.mark.parametrize("out_key, folder, ext", [
    ("out/rec/talk.flac", "out/rec/talk/", ".flac"),
    ("talk.wav.flac", "talk.wav/", ".flac"),  # a suffix's extension is the last one
    ("talk.flac", "talk/", ".flac"),  # a key at the top
    ("out/noext", "out/noext/", ""),  # no extension: the whole name is the folder
    ("out/.flac", "out/.flac/", ""),  # a leading dot starts a name, not an extension
    ("out/.hidden.flac", "out/.hidden/", ".flac"),
    ("a b/ü.opus", "a b/ü/", ".opus"),
])
def test_segment_folder(out_key, folder, ext):
    assert segment_folder(out_key) == (folder, ext)


@pytest.mark.parametrize("index, name", [(0, "00000"), (7, "00007"), (12345, "12345"), (99999, "99999")])
def test_segment_key_has_five_digits(index, name):
    assert SEGMENT_DIGITS == 5
    assert segment_key("out/talk/", index, ".flac") == f"out/talk/{name}.flac"
    assert segment_key("out/noext/", index, "") == f"out/noext/{name}"
