"""Key mapping: the original prefix + key + suffix rule, with an optional extension swap."""
import pytest

from ffleet.inventory import parse_manifest
from ffleet.keys import matches_extensions, output_key


@pytest.mark.parametrize("key,prefix,suffix,ext,expected", [
    ("media-assets/a.wav", "output/", "", None, "output/media-assets/a.wav"),  # the original rule
    ("media-assets/a.wav", "output/", ".processed", None, "output/media-assets/a.wav.processed"),
    ("media-assets/a.wav", "output/", "", ".flac", "output/media-assets/a.flac"),
    ("a/b.c/d.tar.wav", "", "", ".flac", "a/b.c/d.tar.flac"),
    ("noext", "o/", "", ".flac", "o/noext.flac"),
    ("dir.v2/noext", "o/", "", ".flac", "o/dir.v2/noext.flac"),
    (".hidden", "o/", "", ".flac", "o/.hidden.flac"),
    ("with space/and+plus/ünïcødé 音声.mp3", "out/", "", ".flac", "out/with space/and+plus/ünïcødé 音声.flac"),
    ("deep/ly/nested/folder/x.opus", "p", "-s", ".m4a", "pdeep/ly/nested/folder/x.m4a-s"),
])
def test_output_key(key, prefix, suffix, ext, expected):
    assert output_key(key, prefix, suffix, ext) == expected


def test_extension_filter_is_case_insensitive():
    assert matches_extensions("A/B.WAV", [".wav"])
    assert not matches_extensions("a/b.wav.txt", [".wav"])
    assert matches_extensions("anything", None)


def test_manifest_formats():
    jsonl = b'{"key": "a b.wav", "reason": "timeout"}\n\n{"Key": "c+d.mp3"}\n'
    assert [o.key for o in parse_manifest(jsonl, "m")] == ["a b.wav", "c+d.mp3"]
    csv_header = "key,size\nx/ü.wav,10\n\"y,z.wav\",3\n".encode()
    assert [o.key for o in parse_manifest(csv_header, "m")] == ["x/ü.wav", "y,z.wav"]
    bare = b"one.wav\ntwo.wav\n"
    assert [o.key for o in parse_manifest(bare, "m")] == ["one.wav", "two.wav"]


def test_manifest_error_names_line():
    with pytest.raises(ValueError, match="line 2"):
        list(parse_manifest(b'{"key": "a"}\n{"nokey": 1}\n', "redo.jsonl"))
