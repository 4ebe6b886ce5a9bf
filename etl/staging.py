"""The staging store is the pipeline's state: data under deterministic keys, manifests written last.

Layout under the staging root (S3 `s3://bucket/prefix` or a local directory):

    export/month=YYYYMM/AWSDynamoDB/<exportId>/...     stage 1 output (AWS export layout)
    transformed/month=YYYYMM/part-NNNNN.parquet        stage 2 output
    rejected/month=YYYYMM/part-NNNNN.jsonl.gz          stage 2 quarantine
    _state/month=YYYYMM/<stage>.json                   a stage's manifest: present = done
    _state/month=YYYYMM/<stage>.failed.json            the last failure of a stage
    _state/month=YYYYMM/export.pending.json            an export started but not yet committed
    _state/month=YYYYMM/export-scan/segment-NNN.json   a scan export's checkpoint per segment (a rerun goes on)
    _state/month=YYYYMM/load/part-NNNNN.done           load checkpoints (a part finished, for one destination table)
    _state/month=YYYYMM/load-progress/part-NNNNN.json  a part's progress while it loads (its low-water mark)
    _state/month=YYYYMM/transform/part-NNNNN.done      a transformed part's checkpoint (its counts)
    _state/month=YYYYMM/transform/part-NNNNN.keys-<scheme>.npy  its rows' key fingerprints (the collision check)
    _state/month=YYYYMM/transform-collisions.parquet   rows that lost a key collision (the load skips them)
    rejected/month=YYYYMM/load-part-NNNNN.jsonl.gz     items the load quarantined (DynamoDB would refuse them)
    export/month=YYYYMM/changes/window-NNNNN/AWSDynamoDB/...  a catch-up window's changes (incremental export layout)
    changes/month=YYYYMM/window-NNNNN.parquet          a window's puts and deletes for the index (`op` column)
    rejected/month=YYYYMM/changes-window-NNNNN.jsonl.gz  change lines and images the catch-up quarantined
    _state/month=YYYYMM/catchup.json                   the catch-up's manifest: windows applied, in sync up to
    _state/month=YYYYMM/catchup/window-NNNNN.json      one window's record (source, counts, load), phase by phase
    _state/month=YYYYMM/catchup/rows-NNNNN.parquet     every key a window touched, with all its rows after it
    _state/month=YYYYMM/catchup/load-NNNNN.done        a window's load checkpoint
    _state/month=YYYYMM/catchup/final.parquet          every touched key's final winner or delete (for verify)
    verify/month=YYYYMM/part-BBBBB.parquet             differences `etl verify --method export` found, per bucket
    verify/export/<time>/AWSDynamoDB/...               the destination's PITR export it compares
    verify/buckets/<run>/bucket=BBBBB/*.parquet        both sides split by key hash while it compares (then removed)
    _state/verify/export.json                          that export while it is taken and compared (a rerun waits on it)

Every key is built here, and only here; a store hides whether it is a directory or an S3 prefix.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etl import __version__
from etl.config import AwsSide
from etl.errors import EtlError
from etl.times import iso_seconds as utcnow_iso

STAGES = ("export", "transform", "load", "verify")
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's root
    size: int
    etag: str
    mtime: float


class Store:
    """A tiny object-store interface with two implementations (local directory, S3 prefix)."""

    uri: str

    def key_uri(self, key: str) -> str:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def write(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    def open_read(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def open_write(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def list(self, prefix: str) -> list[ObjectInfo]:
        raise NotImplementedError

    def head(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def md5(self, key: str) -> tuple[str, str]:
        """(base64 md5, hex md5) of an object's bytes, streamed."""
        b64, hexd, _ = self.md5_and_head(key, 0)
        return b64, hexd

    def md5_and_head(self, key: str, head: int) -> tuple[str, str, bytes]:
        """(base64 md5, hex md5, the first `head` bytes) of an object, in one streamed read (a data file's
        checksum and its format's magic bytes)."""
        h = hashlib.md5()
        first = b""
        with self.open_read(key) as f:
            while chunk := f.read(CHUNK):
                if len(first) < head:
                    first += chunk[: head - len(first)]
                h.update(chunk)
        return base64.b64encode(h.digest()).decode(), h.hexdigest(), first

    def read_json(self, key: str) -> Any:
        return json.loads(self.read(key))

    def write_json(self, key: str, body: Any) -> None:
        self.write(key, (json.dumps(body, indent=2, sort_keys=False, default=str) + "\n").encode())

    def create(self, key: str, data: bytes) -> bool:
        """Write only if the key does not exist yet (atomically); False when it does."""
        return self.create_if_absent(key, data) is not None

    def create_json(self, key: str, body: Any) -> bool:
        return self.create(key, _json_bytes(body))

    # Conditional writes on an object's version (S3's ETag; a local file's MD5, which is what S3's ETag is
    # for a single-part put): what a lease is made of. Two writers racing on one version: exactly one wins.
    # A refused condition is an answer (None or False), not an exception; a store that cannot be reached
    # still raises.

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        """Write `data` only if `key` does not exist: its new version, or None when the key exists."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and the version they are, read at once; None when it does not exist."""
        raise NotImplementedError

    def replace_if_match(self, key: str, data: bytes, version: str) -> str | None:
        """Replace the object only if it still is `version`: the new version, or None when it was changed
        or deleted since."""
        raise NotImplementedError

    def delete_if_match(self, key: str, version: str) -> bool:
        """Delete the object only if it still is `version`; False when it was changed or deleted since."""
        raise NotImplementedError

    def create_json_if_absent(self, key: str, body: Any) -> str | None:
        return self.create_if_absent(key, _json_bytes(body))

    def read_json_versioned(self, key: str) -> tuple[Any, str] | None:
        got = self.read_versioned(key)
        return None if got is None else (json.loads(got[0]), got[1])

    def replace_json_if_match(self, key: str, body: Any, version: str) -> str | None:
        return self.replace_if_match(key, _json_bytes(body), version)

    def sub(self, prefix: str) -> Store:
        raise NotImplementedError

    def s3_location(self, key: str) -> tuple[str, str]:
        """(bucket, object key) of a key, for the AWS APIs that write to S3 themselves (exports)."""
        raise EtlError(f"{self.uri} is a local directory, not S3")

    def check(self) -> None:
        """Fail clearly when the store itself is missing (a missing bucket would otherwise read as "nothing
        committed yet")."""


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def key_uri(self, key: str) -> str:
        return str(self._path(key))

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise EtlError(f"{self.key_uri(key)} does not exist") from None
        with f:
            yield f

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [self._info(base)]
        if not base.is_dir():
            if prefix.endswith("/"):  # a folder's keys only, as on S3 ("load/" is not "load.lease")
                return []
            parent = base.parent
            if not parent.is_dir():
                return []
            paths = [p for p in parent.rglob("*") if str(p).startswith(str(base))]
        else:
            paths = list(base.rglob("*"))
        return sorted(
            (self._info(p) for p in paths if p.is_file() and not p.name.endswith(".tmp")),
            key=lambda o: o.key,
        )

    def _info(self, p: Path) -> ObjectInfo:
        st = p.stat()
        return ObjectInfo(str(p.relative_to(self.root)), st.st_size, "", st.st_mtime)

    def head(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        return self._info(p) if p.is_file() else None

    def delete_prefix(self, prefix: str) -> int:
        p = self._path(prefix)
        if p.is_dir():
            n = sum(1 for q in p.rglob("*") if q.is_file())
            shutil.rmtree(p)
            return n
        if p.is_file():
            p.unlink()
            return 1
        return 0

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """An exclusive lock on the key's folder (flock on the directory itself: no lock file to list or
        leave behind), held by every conditional write in it, so a compare and the write after it are one
        step for every process of this machine."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _staged(self, path: Path, data: bytes) -> str:
        """A hidden temporary file next to `path` holding `data` (listings skip `.tmp` names)."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return tmp

    def _current(self, path: Path) -> str | None:
        try:
            return _md5(path.read_bytes())
        except FileNotFoundError:
            return None

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        with self._locked(path):
            tmp = self._staged(path, data)
            try:
                os.link(tmp, path)  # fails if the key exists; a reader never sees a half-written object
            except FileExistsError:
                return None
            finally:
                os.unlink(tmp)
        return _md5(data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()  # writes replace the file whole: one read is one version
        except FileNotFoundError:
            return None
        return data, _md5(data)

    def replace_if_match(self, key: str, data: bytes, version: str) -> str | None:
        path = self._path(key)
        with self._locked(path):
            if self._current(path) != version:
                return None
            tmp = self._staged(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        return _md5(data)

    def delete_if_match(self, key: str, version: str) -> bool:
        path = self._path(key)
        with self._locked(path):
            if self._current(path) != version:
                return False
            path.unlink()
        return True

    def sub(self, prefix: str) -> Store:
        return LocalStore(self._path(prefix))


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, s3: Any, encryption: dict[str, str] | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.s3 = s3
        self.encryption = encryption or {}  # ServerSideEncryption (and SSEKMSKeyId) of every object written
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def bucket_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else (key or self.prefix)

    def key_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.bucket_key(key)}"

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[IO[bytes]]:
        try:
            first = self.s3.get_object(Bucket=self.bucket, Key=self.bucket_key(key))
        except self.s3.exceptions.NoSuchKey:
            raise EtlError(f"{self.key_uri(key)} does not exist") from None
        body = _ResumingBody(self.s3, self.bucket, self.bucket_key(key), first)
        try:
            yield cast(IO[bytes], body)
        finally:
            body.close()

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        with tempfile.TemporaryFile() as f:
            yield f
            f.seek(0)
            self.s3.upload_fileobj(f, self.bucket, self.bucket_key(key), ExtraArgs=self.encryption or None)

    def write(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.bucket_key(key), Body=data, **self.encryption)

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        full = self.bucket_key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for o in page.get("Contents", []):
                out.append(
                    ObjectInfo(o["Key"][strip:], o["Size"], o["ETag"].strip('"'), o["LastModified"].timestamp())
                )
        return sorted(out, key=lambda o: o.key)

    def head(self, key: str) -> ObjectInfo | None:
        import botocore.exceptions

        try:
            r = self.s3.head_object(Bucket=self.bucket, Key=self.bucket_key(key))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, r["ContentLength"], r["ETag"].strip('"'), r["LastModified"].timestamp())

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.bucket_key(o.key) for o in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            )
        return len(keys)

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.bucket_key(key))

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        return self._put_if(key, data, IfNoneMatch="*")

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        for cuts in range(_ResumingBody.RESUMES + 1):
            try:
                r = self.s3.get_object(Bucket=self.bucket, Key=self.bucket_key(key))
                break
            except self.s3.exceptions.NoSuchKey:
                return None
            except Exception as exc:  # an answer cut off in its head or in a 404's body: botocore does not retry
                if not _cut(exc) or cuts == _ResumingBody.RESUMES:
                    raise
                time.sleep(0.05 * 2**cuts)
        body = _ResumingBody(self.s3, self.bucket, self.bucket_key(key), r)  # a cut answer is read on
        try:
            return body.read(), str(r["ETag"])
        finally:
            body.close()

    def replace_if_match(self, key: str, data: bytes, version: str) -> str | None:
        return self._put_if(key, data, IfMatch=version)

    def delete_if_match(self, key: str, version: str) -> bool:
        import botocore.exceptions

        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.bucket_key(key), IfMatch=version)
        except botocore.exceptions.ClientError as exc:
            if _refused(exc):
                return False
            raise
        return True

    def _put_if(self, key: str, data: bytes, **condition: str) -> str | None:
        import botocore.exceptions

        try:
            r = self.s3.put_object(Bucket=self.bucket, Key=self.bucket_key(key), Body=data, **condition,
                                   **self.encryption)
        except botocore.exceptions.ClientError as exc:
            if _refused(exc):
                return None
            raise
        return str(r["ETag"])

    def sub(self, prefix: str) -> Store:
        return S3Store(self.bucket, self.bucket_key(prefix), self.s3, self.encryption)

    def s3_location(self, key: str) -> tuple[str, str]:
        return self.bucket, self.bucket_key(key)

    def check(self) -> None:
        self.bucket_region()

    def bucket_region(self) -> str:
        """The bucket's region; a missing bucket is a clear error."""
        import botocore.exceptions

        try:
            return str(self.s3.get_bucket_location(Bucket=self.bucket).get("LocationConstraint") or "us-east-1")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404"):
                raise EtlError(f"staging bucket {self.bucket} does not exist",
                               hint="create it in the staging region, or fix [staging] root") from None
            raise


def _refused(exc: Any) -> bool:
    """Was a conditional request refused: the condition failed (412), another conditional write to the key
    was under way (409), or the object it names is gone (404)? Each means "not this version any more"."""
    return exc.response.get("Error", {}).get("Code") in (
        "PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404", "NotFound")


def _json_bytes(body: Any) -> bytes:
    return (json.dumps(body, indent=2, default=str) + "\n").encode()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _cut(exc: BaseException) -> bool:
    """Did the connection break while an answer's body was being read?"""
    import botocore.exceptions as bx
    import urllib3.exceptions

    return isinstance(exc, bx.ResponseStreamingError | bx.IncompleteReadError | bx.ReadTimeoutError
                      | urllib3.exceptions.ProtocolError | urllib3.exceptions.ReadTimeoutError | ConnectionError)


class _ResumingBody(io.RawIOBase):
    """An S3 object's body that survives a connection broken halfway through it: the rest is asked for again
    (`Range` from the byte reached, `IfMatch` the first answer's ETag, so a replaced object fails instead of
    being spliced), up to RESUMES times per read. botocore retries a request whose answer did not come, but
    not a body cut off while it streams, and a transform task streams its data file for minutes."""

    RESUMES = 5

    def __init__(self, s3: Any, bucket: str, key: str, first: dict[str, Any]) -> None:
        super().__init__()
        self.s3, self.bucket, self.key = s3, bucket, key
        self.body = first["Body"]
        self.etag = first.get("ETag")
        self.size = int(first.get("ContentLength", -1))
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        failures = 0
        while True:
            try:
                data: bytes = self.body.read(None if size is None or size < 0 else size)
            except Exception as exc:
                if not _cut(exc) or failures >= self.RESUMES:
                    raise
                if self.pos >= self.size >= 0:
                    return b""
                failures += 1
                self._resume(failures)
                continue
            self.pos += len(data)
            return data

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _resume(self, failures: int) -> None:
        with contextlib.suppress(Exception):
            self.body.close()
        time.sleep(0.05 * 2**failures)
        extra = {"IfMatch": self.etag} if self.etag else {}
        self.body = self.s3.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-", **extra)["Body"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()
        super().close()


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def open_store(uri: str, side: AwsSide) -> Store:
    if uri.startswith("s3://"):
        from etl import aws

        bucket, prefix = split_s3(uri)
        return S3Store(bucket, prefix, aws.client(side, "s3"), encryption_args(side))
    return LocalStore(uri)


def encryption_args(side: AwsSide) -> dict[str, str]:
    """The staging side's server-side encryption as S3 request parameters (none configured: the bucket's own)."""
    sse = getattr(side, "sse", None)
    if not sse:
        return {}
    key = getattr(side, "kms_key_id", None)
    return {"ServerSideEncryption": sse, **({"SSEKMSKeyId": key} if key else {})}


@contextlib.contextmanager
def open_uri(uri: str, side: AwsSide) -> Iterator[IO[bytes]]:
    """A stream of one object named by its full URI (an export's data file, wherever the export is)."""
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        with open_store(f"s3://{bucket}", side).open_read(key) as f:
            yield f
    else:
        with LocalStore(os.path.dirname(uri) or ".").open_read(os.path.basename(uri)) as f:
            yield f


# --------------------------------------------------------------------------- keys


def month_dir(month: str) -> str:
    return f"month={month}"


def export_prefix(month: str) -> str:
    return f"export/{month_dir(month)}"


def export_folder_key(month: str, export_id: str) -> str:
    return f"{export_prefix(month)}/AWSDynamoDB/{export_id}"


def transformed_prefix(month: str) -> str:
    return f"transformed/{month_dir(month)}/"


def rejected_prefix(month: str) -> str:
    return f"rejected/{month_dir(month)}/"


def transformed_key(month: str, part: int) -> str:
    return f"{transformed_prefix(month)}part-{part:05d}.parquet"


def rejected_key(month: str, part: int) -> str:
    return f"{rejected_prefix(month)}part-{part:05d}.jsonl.gz"


def load_rejected_key(month: str, part: int) -> str:
    return f"{rejected_prefix(month)}load-part-{part:05d}.jsonl.gz"


def state_key(month: str, name: str) -> str:
    return f"_state/{month_dir(month)}/{name}"


def manifest_key(month: str, stage: str) -> str:
    return state_key(month, f"{stage}.json")


def failed_key(month: str, stage: str) -> str:
    return state_key(month, f"{stage}.failed.json")


def pending_export_key(month: str) -> str:
    return state_key(month, "export.pending.json")


def scan_state_prefix(month: str) -> str:
    return state_key(month, "export-scan/")


def scan_segment_key(month: str, segment: int) -> str:
    """A scan export's checkpoint for one segment: its data files so far and the key it goes on from."""
    return f"{scan_state_prefix(month)}segment-{segment:03d}.json"


def checkpoints_prefix(month: str) -> str:
    return state_key(month, "load/")


def load_part_checkpoint_key(month: str, part: int) -> str:
    return f"{checkpoints_prefix(month)}part-{part:05d}.done"


def transformed_parts_prefix(month: str) -> str:
    return state_key(month, "transform/")


def transformed_part_key(month: str, part: int) -> str:
    """A transformed part's checkpoint: its counts, once its Parquet and quarantine files are written."""
    return f"{transformed_parts_prefix(month)}part-{part:05d}.done"


def key_fingerprints_key(month: str, part: int, scheme: str) -> str:
    """A transformed part's key fingerprints (one int64 per row, in row order), made the way `scheme` names
    (`transform.collisions`: prints of another scheme are never compared with these)."""
    return f"{transformed_parts_prefix(month)}part-{part:05d}.keys-{scheme}.npy"


def progress_prefix(month: str) -> str:
    return state_key(month, "load-progress/")


def load_progress_key(month: str, part: int) -> str:
    """A part's progress while it loads: its low-water mark (every row below it acknowledged) and the counts
    below it; deleted once the part's checkpoint is written."""
    return f"{progress_prefix(month)}part-{part:05d}.json"


def bulkput_input_prefix(month: str, run: str, operation: int) -> str:
    """One bulk put operation's input objects (its S3KeyPrefix): DynamoDB JSON lines of a load run's items."""
    return f"bulkput/{month_dir(month)}/{run}/op-{operation:03d}/"


def bulkput_object_key(month: str, run: str, operation: int, part: int, obj: int, compression: str) -> str:
    ext = {"ZSTD": "zst", "GZIP": "gz"}[compression]
    return f"{bulkput_input_prefix(month, run, operation)}part-{part:05d}-{obj:04d}.json.{ext}"


def bulkput_report_prefix(month: str, run: str, operation: int) -> str:
    """Where DynamoDB writes an operation's report of the items it could not write (outside the input prefix)."""
    return f"bulkput-reports/{month_dir(month)}/{run}/op-{operation:03d}/"


def bulkput_state_key(month: str) -> str:
    """A month's bulk put: its input run and each operation (ARN, counts), recorded before polling starts."""
    return state_key(month, "bulkput.json")


def bulkput_part_key(month: str, part: int) -> str:
    """What one part's input task wrote (objects, items, bytes, counts), once its objects are written."""
    return state_key(month, f"bulkput/part-{part:05d}.json")


def lease_key(month: str, stage: str) -> str:
    return state_key(month, f"{stage}.lease")


def destination_lease_key(table: str) -> str:
    """One loading run per destination table at a time (its budget is one)."""
    return f"_state/destination={table}/load.lease"


def collisions_key(month: str) -> str:
    return state_key(month, "transform-collisions.parquet")


def window_name(window: int) -> str:
    return f"window-{window:05d}"


def changes_source_prefix(month: str, window: int) -> str:
    """Where a catch-up window's changes are exported (AWS writes `AWSDynamoDB/` under it)."""
    return f"{export_prefix(month)}/changes/{window_name(window)}"


def changes_prefix(month: str) -> str:
    return f"changes/{month_dir(month)}/"


def changes_key(month: str, window: int) -> str:
    return f"{changes_prefix(month)}{window_name(window)}.parquet"


def changes_rejected_key(month: str, window: int) -> str:
    return f"{rejected_prefix(month)}changes-{window_name(window)}.jsonl.gz"


def catchup_prefix(month: str) -> str:
    return state_key(month, "catchup/")


def catchup_window_key(month: str, window: int) -> str:
    return f"{catchup_prefix(month)}{window_name(window)}.json"


def catchup_rows_key(month: str, window: int) -> str:
    return f"{catchup_prefix(month)}rows-{window:05d}.parquet"


def catchup_checkpoint_key(month: str, window: int) -> str:
    return f"{catchup_prefix(month)}load-{window:05d}.done"


def catchup_load_rejected_key(month: str, window: int) -> str:
    return f"{rejected_prefix(month)}load-changes-{window_name(window)}.jsonl.gz"


def catchup_progress_key(month: str, window: int) -> str:
    return f"{catchup_prefix(month)}load-{window:05d}.progress.json"


def catchup_final_key(month: str) -> str:
    return f"{catchup_prefix(month)}final.parquet"


def verify_diffs_prefix(month: str) -> str:
    return f"verify/{month_dir(month)}/"


def verify_diffs_key(month: str, bucket: int) -> str:
    """The differences `etl verify --method export` found in one key-hash bucket of a month (Hive-partitioned)."""
    return f"{verify_diffs_prefix(month)}part-{bucket:05d}.parquet"


def verify_export_prefix(stamp: str) -> str:
    """Where the destination's PITR export for a verify goes (AWS writes `AWSDynamoDB/` under it)."""
    return f"verify/export/{stamp}"


def verify_buckets_prefix(run: str) -> str:
    return f"verify/buckets/{run}/"


def verify_bucket_key(run: str, bucket: int, name: str) -> str:
    """One input's rows of one key-hash bucket (`name`: which side and which input)."""
    return f"{verify_buckets_prefix(run)}bucket={bucket:05d}/{name}.parquet"


def verify_export_state_key() -> str:
    return "_state/verify/export.json"


# --------------------------------------------------------------------------- the collisions file


def write_collisions(store: Store, month: str, losers: pa.Table) -> str:
    """The rows that lost a key collision (their `_part` and `_row`, with their keys); none: no file."""
    key = collisions_key(month)
    if losers.num_rows == 0:
        store.delete(key)
        return key
    buf = io.BytesIO()
    pq.write_table(losers, buf, compression="zstd")
    store.write(key, buf.getvalue())
    return key


def write_key_fingerprints(store: Store, month: str, part: int, scheme: str, prints: np.ndarray) -> None:
    """A part's key fingerprints, one int64 per row in row order (numpy's .npy format)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(prints, dtype=np.int64), allow_pickle=False)
    store.write(key_fingerprints_key(month, part, scheme), buf.getvalue())


def read_key_fingerprints(store: Store, month: str, part: int, scheme: str) -> np.ndarray | None:
    """A part's key fingerprints, or None when it has none of this scheme (or an unreadable file: they are made
    again)."""
    key = key_fingerprints_key(month, part, scheme)
    if not store.exists(key):
        return None
    data = store.read(key)
    try:
        prints = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError):
        return None
    return prints if prints.dtype == np.int64 and prints.ndim == 1 else None


def read_losers(store: Store, month: str) -> dict[int, np.ndarray]:
    """Part -> the row numbers (ascending) in it that lost a key collision, which the load skips."""
    key = collisions_key(month)
    if not store.exists(key):
        return {}
    t = pq.read_table(pa.BufferReader(store.read(key)), columns=["_part", "_row"])
    parts = np.asarray(t["_part"].to_numpy(), dtype=np.int64)
    rows = np.asarray(t["_row"].to_numpy(), dtype=np.int64)
    return {int(p): np.sort(rows[parts == p]) for p in np.unique(parts).tolist()}


# --------------------------------------------------------------------------- the destination a record is for


class Destination(NamedTuple):
    """Which table a checkpoint or manifest was written for. A table dropped and created again under the same
    name is another table (its items are gone), so the name is not enough: its ARN and creation time are."""

    table: str
    arn: str
    created: str  # CreationDateTime, ISO-8601 UTC

    def record(self) -> dict[str, str]:
        return {"table": self.table, "table_arn": self.arn, "table_created": self.created}

    def holds(self, record: dict[str, Any]) -> bool:
        """Was `record` (a checkpoint, a progress file, a load manifest) written for this very table?"""
        return record.get("table_arn") == self.arn and record.get("table_created") == self.created

    def describe(self) -> str:
        return f"{self.table} (created {self.created})"


def destination_of(desc: dict[str, Any]) -> Destination:
    created = desc.get("CreationDateTime")
    when = (created.astimezone(UTC).isoformat(timespec="milliseconds") if isinstance(created, datetime)
            else str(created or ""))
    return Destination(str(desc.get("TableName", "")), str(desc.get("TableArn", "")), when)


def elsewhere(record: dict[str, Any]) -> str:
    """The table a record names, for a message saying it is not the destination's."""
    when = record.get("table_created")
    return f"{record.get('table', '?')} ({f'created {when}' if when else 'no table identity recorded'})"


# --------------------------------------------------------------------------- manifests


def read_manifest(store: Store, month: str, stage: str) -> dict[str, Any] | None:
    key = manifest_key(month, stage)
    if not store.exists(key):
        return None
    return dict(store.read_json(key))


def commit_manifest(store: Store, month: str, stage: str, body: dict[str, Any]) -> dict[str, Any]:
    """Write the stage's manifest last; it is what makes the stage done. Clears an old failure."""
    manifest = {
        "stage": stage,
        "month": month,
        "status": "done",
        "run_id": uuid.uuid4().hex,  # what later stages' checkpoints and manifests refer to
        "tool_version": __version__,
        "committed_at": utcnow_iso(),
        **body,
    }
    store.write_json(manifest_key(month, stage), manifest)
    for cleared in _failures_cleared_by(stage):
        store.delete(failed_key(month, cleared))
    return manifest


def _failures_cleared_by(stage: str) -> tuple[str, ...]:
    """The failure records a commit of `stage` makes obsolete: its own, and those of every stage after it,
    whose inputs it has just replaced (a load refused for "no committed transform" is no longer failing once
    the transform commits: it is simply next)."""
    if stage not in STAGES:
        return (stage,)
    after = STAGES[STAGES.index(stage):]
    return (*after, "catchup") if "load" in after else after


FAILURE_KINDS = ("failed", "interrupted")


def record_failure(store: Store, month: str, stage: str, error: str, command: str, kind: str = "failed") -> None:
    """The stage's failure, shown by `etl status` until the stage (or one before it) commits. `kind`:
    "failed", or "interrupted" for a run stopped by Ctrl-C or SIGTERM (`errors.Interrupted`)."""
    if kind not in FAILURE_KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {FAILURE_KINDS}")
    store.write_json(
        failed_key(month, stage),
        {"stage": stage, "month": month, "status": "failed", "kind": kind, "error": error, "rerun": command,
         "failed_at": utcnow_iso(), "tool_version": __version__},
    )


def known_months(store: Store) -> list[str]:
    months = set()
    for o in store.list("_state/"):
        part = o.key.split("/")[1] if o.key.count("/") >= 2 else ""
        if part.startswith("month="):
            months.add(part[len("month=") :])
    return sorted(months)
