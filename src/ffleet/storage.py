"""Storage backends behind one small interface: S3 (any endpoint) and local folders."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse


CHUNK = 1 << 16  # bytes per read when an object is streamed


class StorageError(RuntimeError):
    """Storage could not be read or written (after retries). The file is not the problem."""


class NotFound(StorageError):
    pass


class InvalidKey(StorageError):
    """A key that cannot name one distinct file or object in this storage. The key, not the storage, is the problem."""


class MissingBucket(StorageError):
    """The bucket itself does not exist: no retry will help."""


class Forbidden(StorageError):
    """S3 refused the request (AccessDenied). For a GetObject without s3:ListBucket, also what a missing key looks like."""


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
    if any(s in (".", "..") for s in key.split("/")):
        # S3 itself keeps them, but HTTP stacks, S3-compatible stores and sync tools resolve them,
        # so the object read or written could be another one (even another input of the run)
        return "has a '.' or '..' path segment, which S3-compatible stores and tools may resolve to another key"
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


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int | None = None


class Storage(Protocol):
    def uri(self, key: str) -> str: ...
    def key_problem(self, key: str) -> str | None: ...
    def check_writable(self, prefix: str = "") -> None: ...
    def list(self, prefix: str = "") -> Iterator[ListedObject]: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def fetch(self, key: str, dest: Path) -> int: ...
    def readable_path(self, key: str, staging: Path) -> tuple[Path, int]: ...
    def store(self, src: Path, key: str, content_type: str | None = None) -> None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]: ...
    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...
    def delete(self, key: str) -> None: ...


_TMP_MARK = ".ffleet-tmp-"


class LocalStorage:
    """A folder; keys are '/'-separated paths relative to it. Writes are atomic (temp + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._real_root: Path | None = None

    def _resolved_root(self) -> Path:
        """The folder's real path, resolved once it exists (every file's key is checked against it:
        resolving it again for each of them cost a stat of every component of the folder's path)."""
        if self._real_root is not None:
            return self._real_root
        real = self.root.resolve()
        if real.is_dir():  # before the folder is made, a path resolved now could change when it is
            self._real_root = real
        return real

    def key_problem(self, key: str) -> str | None:
        return local_key_problem(key)

    def check_writable(self, prefix: str = "") -> None:
        """Raise StorageError unless a file can be written here (the folder is made if missing).

        Checked before the first conversion: a folder that cannot be written was found only after
        every file had been converted, and each then failed alone.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_TMP_MARK, dir=self.root)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise StorageError(f"cannot write to the folder {self.root}: {exc.strerror or exc}") from None

    def _path(self, key: str) -> Path:
        problem = local_key_problem(key)
        if problem:
            raise InvalidKey(f"key {key!r} {problem}")
        try:
            p = (self.root / key).resolve()
        except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError on a symlink loop
            raise NotFound(f"{self.uri(key)} names no file (a symlink loop: {exc})") from None
        root = self._resolved_root()
        if root not in p.parents:
            raise InvalidKey(f"key {key!r} resolves outside {self.root} (through a symlink)")
        return p

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def readable_path(self, key: str, staging: Path) -> tuple[Path, int]:
        """(path, size) for FFmpeg to read key from: the file itself, in place (staging is not used).

        Copying it cost ~2.5 ms of CPU per file (bench/). An absolute path, so FFmpeg never takes a
        ':' in a name for a protocol; keys that escape the folder are refused.
        """
        path = self._path(key)
        try:
            return path, path.stat().st_size
        except FileNotFoundError:  # vanished since it was listed
            raise NotFound(f"{self.uri(key)} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotFound(f"{self.uri(key)} names no file (a symlink loop)") from None
            raise StorageError(f"cannot read {self.uri(key)}: {exc.strerror}") from None

    def list(self, prefix: str = "") -> Iterator[ListedObject]:
        if not self.root.is_dir():
            raise StorageError(f"input folder {self.root} does not exist")
        # sorted walk: deterministic order, so batches and reports are reproducible; a prefix that
        # names a folder starts the walk there (a segment folder is listed without the whole tree)
        top = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if top != self.root and top.resolve() != self.root.resolve() / top.relative_to(self.root):
            top = self.root  # a symlink on the way: the full walk does not follow it, nor may this one
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if _TMP_MARK in name:
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        size = full.stat().st_size
                    except FileNotFoundError:  # vanished, or a dangling symlink: nothing to process
                        continue
                    except OSError:
                        # a symlink loop (ELOOP) aborted the whole run with a traceback: list it, and
                        # its processing fails it alone with the reason (not_found: it names no file)
                        size = None
                    yield ListedObject(key, size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None

    def fetch(self, key: str, dest: Path) -> int:
        src = self._path(key)
        try:
            shutil.copyfile(src, dest)
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # the work disk, not the input, is the problem
                raise StorageError(f"cannot copy {src} to the work folder {dest.parent}: {exc.strerror}") from exc
            raise StorageError(f"cannot read {src}: {exc.strerror}") from exc
        return dest.stat().st_size

    def store(self, src: Path, key: str, content_type: str | None = None) -> None:
        dest = self._path(key)
        tmp = None
        try:
            try:
                try:
                    os.replace(src, dest)  # same filesystem: one atomic rename, no copy
                except FileNotFoundError:  # the first output in its folder (a missing src fails again)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # another filesystem: a copy beside dest, then a rename; a reader sees the old file
                # or the whole new one. The temp name must fit where dest's does (255 bytes).
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f"{_TMP_MARK}{os.urandom(16).hex()}")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {dest}: {exc.strerror}") from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None

    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes, a chunk at a time (never the whole file in memory)."""
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound(f"{self.uri(key)} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc.strerror}") from exc
        with f:
            while chunk := f.read(size):
                yield chunk

    def delete(self, key: str) -> None:
        """Remove key's file; an absent one is no error."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri(key)}: {exc.strerror}") from exc

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with tempfile.NamedTemporaryFile(delete=False, dir=self.root if self.root.exists() else None) as f:
            f.write(data)
        try:
            self.store(Path(f.name), key)
        finally:
            Path(f.name).unlink(missing_ok=True)


def s3_client():
    """A boto3 S3 client with retries for throttling (503 SlowDown) and 5xx.

    boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, so a moto server or any S3-compatible
    endpoint works without code changes. 'adaptive' mode adds client-side rate limiting on top of
    'standard' retries, which is what a prefix under SlowDown needs.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": int(os.environ.get("FFLEET_S3_MAX_ATTEMPTS", "10")), "mode": "adaptive"},
        max_pool_connections=int(os.environ.get("FFLEET_S3_MAX_POOL", "32")),
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", config=config)


class S3Storage:
    """One bucket. Keys are used exactly as given (spaces, '+', unicode)."""

    def __init__(self, bucket: str, client=None):
        self.bucket = bucket
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_problem(self, key: str) -> str | None:
        return s3_key_problem(key)

    def check_writable(self, prefix: str = "") -> None:
        """Raise StorageError unless objects can be written under prefix: MissingBucket, Forbidden, or another.

        A multipart upload is started and aborted: PutObject's permission (and KMS key) is
        checked, and no object appears. The worker's role has s3:AbortMultipartUpload but no
        s3:DeleteObject, so a test object could not be removed again.
        """
        key = f"{prefix}{_TMP_MARK}write-check-{os.urandom(16).hex()}"
        try:
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "write to", prefix) from exc
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
        except Exception:  # noqa: BLE001 - an upload with no parts holds no data
            pass

    def _error(self, exc: Exception, what: str, key: str) -> StorageError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return NotFound(f"{self.uri(key)} does not exist")
            kind = Forbidden if code in ("AccessDenied", "403") else MissingBucket if code == "NoSuchBucket" else StorageError
            return kind(f"cannot {what} {self.uri(key)}: {code} {exc.response.get('Error', {}).get('Message', '')}".strip())
        return StorageError(f"cannot {what} {self.uri(key)}: {exc}")

    def list(self, prefix: str = "") -> Iterator[ListedObject]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ListedObject(obj["Key"], obj.get("Size"))
        except Exception as exc:  # noqa: BLE001 - every failure here is a storage failure
            raise self._error(exc, "list", prefix) from exc

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "read", key) from exc

    def readable_path(self, key: str, staging: Path) -> tuple[Path, int]:
        """(path, size) for FFmpeg to read key from: the object downloaded to staging.

        Staging on disk costs ~5% against pipes (measured) and lets FFmpeg seek (m4a index at end).
        """
        return staging, self.fetch(key, staging)

    def fetch(self, key: str, dest: Path) -> int:
        try:
            self.client.download_file(self.bucket, key, str(dest))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "download", key) from exc
        return dest.stat().st_size

    def store(self, src: Path, key: str, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        try:
            # An S3 object appears whole or not at all, so a killed upload leaves no partial output.
            self.client.upload_file(str(src), self.bucket, key, ExtraArgs=extra)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "upload", key) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "read", key) from exc

    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes, a chunk at a time (never the whole object in memory)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "read", key) from exc
        try:
            yield from body.iter_chunks(size)
        except Exception as exc:  # noqa: BLE001 - a connection lost mid-object
            raise self._error(exc, "read", key) from exc
        finally:
            body.close()

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        try:
            kwargs = {"ContentType": content_type} if content_type else {}
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "write", key) from exc

    def delete(self, key: str) -> None:
        """Remove the object (S3 answers a missing one with success too)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "delete", key) from exc


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def open_location(uri_or_path: str, client=None) -> tuple[Storage, str]:
    """'s3://b/p' -> (S3Storage(b), 'p'); a local path -> (LocalStorage(parent or path), name or '')."""
    if uri_or_path.startswith("s3://"):
        bucket, key = split_s3_uri(uri_or_path)
        return S3Storage(bucket, client), key
    p = Path(uri_or_path)
    if p.is_dir():
        return LocalStorage(p), ""
    return LocalStorage(p.parent), p.name


def input_storage(request, client=None) -> tuple[Storage, str]:
    if request.input.path:
        return LocalStorage(request.input.path), ""
    return S3Storage(request.input.s3_bucket, client), request.input.s3_prefix


def output_storage(request, client=None) -> Storage:
    if request.output.path:
        return LocalStorage(request.output.path)
    return S3Storage(request.output.s3_bucket, client)


def results_storage(request, client=None) -> tuple[Storage, str]:
    loc = request.results_location()
    if "path" in loc:
        try:
            Path(loc["path"]).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot make the results folder {loc['path']}: {exc.strerror or exc}") from None
        return LocalStorage(loc["path"]), ""
    return S3Storage(loc["s3_bucket"], client), loc["s3_prefix"]
