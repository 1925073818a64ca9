"""Reads the objects a ModelVersion points at (`s3://bucket/key`), verified by sha256.

A version may live in any bucket of the configured S3 server, so one client
per bucket is kept; the object store checks the recorded sha256 on every read
and, when given, the sha256 the registry holds.
"""

from __future__ import annotations

import threading

from services.common.objectstore import MinioObjectStore, ObjectStore, split_uri
from services.common.settings import CommonSettings


class ArtifactReader:
    def __init__(self, settings: CommonSettings) -> None:
        self._settings = settings
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def read(self, uri: str, expected_sha256: str | None = None) -> bytes:
        """Raises ValueError for a malformed URI, ObjectNotFound, or IntegrityError."""
        bucket, key = split_uri(uri)
        return self._store(bucket).get_bytes(key, expected_sha256 or None)

    def _store(self, bucket: str) -> ObjectStore:
        with self._lock:
            if bucket not in self._stores:
                s = self._settings
                self._stores[bucket] = MinioObjectStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key,
                                                        bucket, s.s3_secure)
            return self._stores[bucket]
