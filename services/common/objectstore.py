"""The object store behind one interface, with integrity built in.

Every object is written with its sha256 in its metadata and checked on every
read, so a dataset or a model artifact that changed after it was written is
refused instead of silently used. `MinioObjectStore` speaks to any
S3-compatible server; the interface is the seam for another backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

SHA256_META = "sha256"


class ObjectNotFound(KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class IntegrityError(ValueError):
    """The object's bytes do not hash to the sha256 it was recorded with."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    bucket: str
    key: str
    sha256: str
    size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(ABC):
    bucket: str

    @abstractmethod
    def ensure_bucket(self) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        """Stores `data` under `key` with its sha256; returns the reference."""

    @abstractmethod
    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        """Returns the verified bytes; raises ObjectNotFound or IntegrityError."""

    @abstractmethod
    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        """The keys under `prefix` in order, those after `start_after` only when it is given (a
        reader of keys that only grow lists what is new, not everything again)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> ObjectRef:
        return self.put_bytes(key, Path(path).read_bytes(), content_type)

    def get_file(self, key: str, path: Path, expected_sha256: str | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get_bytes(key, expected_sha256))
        return path

    def put_json(self, key: str, value: object) -> ObjectRef:
        data = json.dumps(value, sort_keys=True, indent=2).encode()
        return self.put_bytes(key, data, "application/json")

    def get_json(self, key: str, expected_sha256: str | None = None) -> object:
        return json.loads(self.get_bytes(key, expected_sha256))


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key)."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def https_client(ca_file: str) -> urllib3.PoolManager:
    """minio's default HTTP client (its timeouts and retries), verifying servers with a private CA."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=urllib3.Timeout.DEFAULT_TIMEOUT, read=300), maxsize=10,
        cert_reqs="CERT_REQUIRED", ca_certs=ca_file,
        retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))


class MinioObjectStore(ObjectStore):
    """`secure`: https; `ca_file`: the PEM bundle that verifies the server (a private CA), else
    the system's CAs."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 secure: bool = False, ca_file: str = "") -> None:
        http = https_client(ca_file) if secure and ca_file else None
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings) -> "MinioObjectStore":
        store = cls(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                    settings.bucket, settings.s3_secure, settings.s3_ca_file)
        store.ensure_bucket()
        return store

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # another service created it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        digest = sha256_of(data)
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                               content_type=content_type, metadata={SHA256_META: digest})
        return ObjectRef(self.bucket, key, digest, len(data))

    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectNotFound(f"no object s3://{self.bucket}/{key}") from exc
            raise
        try:
            data = response.read()
            recorded = response.headers.get(f"x-amz-meta-{SHA256_META}")
        finally:
            response.close()
            response.release_conn()
        actual = sha256_of(data)
        if recorded is None:
            raise IntegrityError(f"s3://{self.bucket}/{key} has no recorded sha256; refusing to trust it")
        for label, wanted in (("recorded", recorded), ("expected", expected_sha256)):
            if wanted is not None and wanted != actual:
                raise IntegrityError(
                    f"s3://{self.bucket}/{key}: sha256 {actual} does not match the {label} {wanted}")
        return data

    def list_keys(self, prefix: str, start_after: str = "") -> list[str]:
        return sorted(o.object_name for o in self.client.list_objects(self.bucket, prefix, recursive=True,
                                                                      start_after=start_after or None))

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return False
            raise


class ObjectStores:
    """One `MinioObjectStore` per bucket of the configured S3 server, made on first use.

    A ModelVersion's URIs (`s3://bucket/key`) may name any bucket, so the services that
    follow them (registry, serving, monitor) read through this instead of one store.

    >>> stores = ObjectStores(endpoint="127.0.0.1:9", access_key="a", secret_key="b")
    >>> stores.for_bucket("models") is stores.for_bucket("models")
    True
    """

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool = False,
                 ca_file: str = "") -> None:
        self._credentials = (endpoint, access_key, secret_key)
        self._secure = secure
        self._ca_file = ca_file
        self._stores: dict[str, MinioObjectStore] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "ObjectStores":
        return cls(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_secure,
                   settings.s3_ca_file)

    def for_bucket(self, bucket: str) -> "MinioObjectStore":
        with self._lock:
            store = self._stores.get(bucket)
            if store is None:
                store = self._stores[bucket] = MinioObjectStore(*self._credentials, bucket, self._secure, self._ca_file)
            return store

    def read_bytes(self, uri: str, expected_sha256: str | None = None) -> bytes:
        """The verified bytes at `s3://bucket/key`; raises ValueError for a malformed URI,
        ObjectNotFound or IntegrityError."""
        bucket, key = split_uri(uri)
        return self.for_bucket(bucket).get_bytes(key, expected_sha256 or None)

    def read_json(self, uri: str, expected_sha256: str | None = None) -> object:
        return json.loads(self.read_bytes(uri, expected_sha256))
