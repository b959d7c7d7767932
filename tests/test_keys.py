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


# ---------------------------------------------------------------------------------------------
# CSV manifests: RFC 4180 with a header naming the key column, or one key per line


def _keys(text: str) -> list[str]:
    return [o.key for o in parse_manifest(text.encode("utf-8"), "m.csv")]


@pytest.mark.parametrize("text,expected", [
    # one key per line: each line whole ("c,d.wav" became "c")
    ("a.wav\nc,d.wav\nx \"y\".wav\n", ["a.wav", "c,d.wav", 'x "y".wav']),
    # ... a line that is one quoted field is unquoted; one that only starts with '"' is a key as written
    ('"e,f.wav"\n"q.wav\nb.wav\n', ["e,f.wav", '"q.wav', "b.wav"]),
    # header: quoted commas, doubled quotes, a quoted field over two lines, other columns
    ('key,size\n"c,d.wav",3\n"say ""hi"".wav",4\n"multi\nline.wav",5\n', ["c,d.wav", 'say "hi".wav', "multi\nline.wav"]),
    ("size,Key\n1,x.wav\n", ["x.wav"]),
    # a byte order mark, spaces around the header's names, blank rows before, between and after
    ("\ufeff\n\n key , size\n\na.wav,1\n\n,\nb.wav,2\n\n", ["a.wav", "b.wav"]),
    ("\ufeffone.wav\r\n\r\ntwo.wav\r\n", ["one.wav", "two.wav"]),
    # a blank first line does not turn the header into a key
    ("\nkey\na.wav\n", ["a.wav"]),
])
def test_csv_manifests(text, expected):
    assert _keys(text) == expected


@pytest.mark.parametrize("text,line,why", [
    ('key\na.wav\n"open.wav\nb.wav\nc.wav\n', 5, "not valid CSV"),  # a quote never closed swallowed every line after it
    ('key\n"a.wav"x\nb.wav\n', 2, "not valid CSV"),
    ("key\nc,d.wav\n", 2, "2 fields, but the header has 1"),  # 'c,d.wav' unquoted under a one-column header became 'c'
    ("size,key\n3\n", 2, "no 'key' column"),
])
def test_malformed_csv_manifests_are_refused_naming_the_line(text, line, why):
    with pytest.raises(ValueError) as exc:
        _keys(text)
    assert f"m.csv line {line}" in str(exc.value) and why in str(exc.value)


def test_manifest_that_is_not_utf8_is_refused():
    with pytest.raises(ValueError, match="not UTF-8"):
        list(parse_manifest(b"key\n\xff.wav\n", "m.csv"))


@pytest.mark.parametrize("key", [".", "..", "a/..", "sub/..", "a/./b.wav", "a//b.wav", "/abs.wav", "a/", "",
                                 "a\x00b", "\ud800", "n" * 256, "d/" * 2100 + "x"])
def test_keys_that_do_not_name_one_distinct_file_have_a_local_key_problem(key):
    from ffleet.storage import local_key_problem

    assert local_key_problem(key)


@pytest.mark.parametrize("key", ["a/b.wav", "..a", "a..", ".hidden/x", "new\nline.wav", "é" * 127, "a:b", "-i"])
def test_ordinary_keys_have_no_local_key_problem(key):
    from ffleet.storage import local_key_problem

    assert local_key_problem(key) is None


def test_s3_key_limits():
    from ffleet.storage import s3_key_problem

    assert s3_key_problem("a//b") is None and s3_key_problem("é" * 512) is None and s3_key_problem("..a/b.") is None
    assert s3_key_problem("é" * 513) and s3_key_problem("") and s3_key_problem("\udc80")
    assert s3_key_problem("out/../in/a.wav") and s3_key_problem("a/./b") and s3_key_problem(".")
