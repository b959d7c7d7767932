"""Manifests, filters and batches: the cases mutation testing found untested (issue 20)."""
import json

import pytest

from ffleet.inventory import ManifestError, batches, item_key, list_items, parse_manifest, wanted
from ffleet.request import parse_request
from ffleet.storage import ListedObject

BOM = "\ufeff".encode()


def keys(data: bytes) -> list[str]:
    return [o.key for o in parse_manifest(data, "m")]


# --- blank rows, BOM, leading spaces ---------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"key\na.wav\n\nb.wav\n\n\nc.wav\n",  # blank rows in the middle of a CSV with a header
    b"a.wav\n\nb.wav\n  \nc.wav\n",  # and of a bare list, one row only spaces
    b"\na.wav\nb.wav\n\nc.wav\n",  # a bare list that starts with a blank row
    b'{"key": "a.wav"}\n\n{"key": "b.wav"}\n   \n{"key": "c.wav"}\n',  # JSON Lines
    b'\n\n{"key": "a.wav"}\n{"key": "b.wav"}\n{"key": "c.wav"}\n',
])
def test_blank_rows_skip_nothing_after_them(data):
    assert keys(data) == ["a.wav", "b.wav", "c.wav"]


@pytest.mark.parametrize("data", [
    BOM + b"key,size\na.wav,1\nb.wav,2\n",  # Excel writes "UTF-8 CSV" with a BOM
    BOM + b"a.wav\nb.wav\n",
    BOM + b'{"key": "a.wav"}\n{"key": "b.wav"}\n',
])
def test_a_byte_order_mark_is_not_part_of_the_first_key_or_header(data):
    assert keys(data) == ["a.wav", "b.wav"]


def test_json_lines_with_leading_spaces_are_json_lines():
    data = b'   {"key": "a.wav", "size": 3}\n\t{"Key": "b.wav"}\n'
    assert [(o.key, o.size) for o in parse_manifest(data, "m")] == [("a.wav", 3), ("b.wav", None)]


@pytest.mark.parametrize("data", [b"", b"\n", b"  \n\n", BOM])
def test_an_empty_manifest_names_no_keys(data):
    assert keys(data) == []


# --- JSON Lines -------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["key", "Key", "s3_key", "object_key"])
def test_every_key_field_is_read(field):
    assert keys(json.dumps({field: "a.wav"}).encode()) == ["a.wav"]
    assert keys(f"{field},size\na.wav,1\n".encode()) == ["a.wav"]


def test_key_field_preference():
    assert item_key({"object_key": "d", "s3_key": "c", "Key": "b", "key": "a"}) == "a"
    assert item_key({"object_key": "d", "s3_key": "c"}) == "c"


@pytest.mark.parametrize("row", [{"key": ""}, {"key": 5}, {"key": None}, {"name": "a.wav"}, ["key"], "a.wav"])
def test_item_key_needs_a_non_empty_string(row):
    assert item_key(row) is None


def test_size_is_kept_when_an_integer():
    data = b'{"key": "a", "size": 10}\n{"key": "b", "size": "10"}\n{"key": "c"}\n'
    assert [(o.key, o.size) for o in parse_manifest(data, "m")] == [("a", 10), ("b", None), ("c", None)]


@pytest.mark.parametrize("data,line,what", [
    (b'{"key": "a"}\n{"key": \n', 2, "is not JSON"),
    (b'{"key": "a"}\n\n{"key": ""}\n', 3, "needs a \"key\" field"),
    (b'{"key": 5}\n', 1, 'needs a "key" field'),
    (b'{"key": "a"}\n{"key": "b", "size": ' + b'9' * 5000 + b'}\n', 2, "holds a number too long"),
])
def test_manifest_errors_name_the_source_and_line(data, line, what):
    with pytest.raises(ManifestError) as exc:
        list(parse_manifest(data, "s3://b/redo.jsonl"))
    assert str(exc.value).startswith(f"s3://b/redo.jsonl line {line}: {what}")


# --- filters, dedupe, batches -------------------------------------------------------------------------

def objs(*names: str) -> list[ListedObject]:
    return [ListedObject(n) for n in names]


def test_wanted_drops_folder_markers_and_other_extensions_and_goes_on():
    got = wanted(objs("dir/", "a.txt", "a.wav", "sub/", "b.WAV", "c.mp3"), [".wav"], dedupe=False)
    assert [o.key for o in got] == ["a.wav", "b.WAV"]
    got = wanted(objs("dir/", "a.txt", "a.wav"), None, dedupe=False)
    assert [o.key for o in got] == ["a.txt", "a.wav"]


def test_dedupe_keeps_the_first_of_each_key_and_goes_on():
    got = wanted(objs("a.wav", "b.wav", "a.wav", "c.wav", "b.wav"), None, dedupe=True)
    assert [o.key for o in got] == ["a.wav", "b.wav", "c.wav"]
    got = wanted(objs("a.wav", "a.wav"), None, dedupe=False)
    assert [o.key for o in got] == ["a.wav", "a.wav"]


@pytest.mark.parametrize("n,size,sizes", [(0, 3, []), (1, 3, [1]), (3, 3, [3]), (4, 3, [3, 1]), (7, 3, [3, 3, 1]),
                                           (2, 1, [1, 1])])
def test_batches(n, size, sizes):
    items = objs(*(f"{i}.wav" for i in range(n)))
    got = list(batches(items, size))
    assert [len(b) for b in got] == sizes
    assert [o for b in got for o in b] == items  # every item once, in order


def _local_request(tmp_path, **input_extra):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.wav", "b.mp3", "sub/c.wav"):
        (tmp_path / "in" / name).write_bytes(b"x")
    return parse_request({"name": "t", "input": {"path": str(tmp_path / "in"), **input_extra},
                          "output": {"path": str(tmp_path / "out")}})


def test_list_items_lists_the_input_folder_with_the_extension_filter(tmp_path):
    r = _local_request(tmp_path, extensions=[".wav"])
    assert sorted(o.key for o in list_items(r)) == ["a.wav", "sub/c.wav"]


def test_list_items_reads_a_manifest_once_per_key(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("key\nb.mp3\na.wav\nb.mp3\nnot-listed.wav\n")
    r = _local_request(tmp_path, manifest=str(manifest), extensions=[".wav", ".mp3"])
    assert [o.key for o in list_items(r)] == ["b.mp3", "a.wav", "not-listed.wav"]


class _FakeS3:
    """Just enough of an S3 client: list_items must use the client it is given."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        fake = self

        class Pages:
            def paginate(self, Bucket, Prefix):
                yield {"Contents": [{"Key": k, "Size": len(v)} for k, v in fake.objects.items() if k.startswith(Prefix)]}
        return Pages()

    def get_object(self, Bucket, Key):
        import io
        return {"Body": io.BytesIO(self.objects[Key])}


@pytest.fixture
def no_real_s3(monkeypatch):
    # a client made without the one given would go here and fail at once
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


def test_list_items_uses_the_given_client(no_real_s3):
    client = _FakeS3({"in/a.wav": b"12", "in/b.txt": b"1", "other/c.wav": b"1", "lists/m.jsonl": b'{"key": "x.wav"}\n'})
    r = parse_request({"name": "t", "input": {"s3_bucket": "b", "s3_prefix": "in/", "extensions": [".wav"]},
                       "output": {"s3_bucket": "o"}})
    assert [(o.key, o.size) for o in list_items(r, client)] == [("in/a.wav", 2)]
    r = parse_request({"name": "t", "input": {"s3_bucket": "b", "manifest": "s3://b/lists/m.jsonl"},
                       "output": {"s3_bucket": "o"}})
    assert [o.key for o in list_items(r, client)] == ["x.wav"]


def test_read_manifest_errors_name_the_manifest(tmp_path):
    from ffleet.inventory import read_manifest
    path = tmp_path / "redo.jsonl"
    path.write_text('{"key": "a.wav"}\n{"nokey": 1}\n')
    with pytest.raises(ManifestError) as exc:
        list(read_manifest(str(path)))
    assert str(exc.value).startswith(f'{path} line 2: needs a "key" field')
