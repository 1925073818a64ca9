"""services.common.objectstore against a real S3 server."""

import io
import uuid

import pytest

from services.common.objectstore import IntegrityError, MinioObjectStore, ObjectNotFound, sha256_of


@pytest.fixture
def store(s3):
    store = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, f"t-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    store.ensure_bucket()  # creating twice is fine
    return store


def test_put_and_get_verify_the_sha256(store, tmp_path):
    ref = store.put_bytes("models/m/1/model.onnx", b"weights")
    assert ref.sha256 == sha256_of(b"weights") and ref.size == 7
    assert ref.uri == f"s3://{store.bucket}/models/m/1/model.onnx"
    assert store.get_bytes(ref.key) == b"weights"
    assert store.get_bytes(ref.key, expected_sha256=ref.sha256) == b"weights"

    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00" * 1000)
    store.put_file("blobs/in.bin", source)
    assert store.get_file("blobs/in.bin", tmp_path / "out.bin").read_bytes() == b"\x00" * 1000
    assert store.list_keys("blobs/") == ["blobs/in.bin"]
    assert store.exists("blobs/in.bin") and not store.exists("blobs/other")


def test_a_listing_can_start_after_a_key(store):
    for key in ("s/p000-02", "s/p000-01", "s/p001-01", "s/p000-03", "t/p000-04"):
        store.put_bytes(key, b"")
    assert store.list_keys("s/") == ["s/p000-01", "s/p000-02", "s/p000-03", "s/p001-01"]
    assert store.list_keys("s/p000-", start_after="s/p000-01") == ["s/p000-02", "s/p000-03"]
    assert store.list_keys("s/p000-", start_after="s/p000-03") == []
    assert store.list_keys("s/", start_after="s/p000-025") == ["s/p000-03", "s/p001-01"]


def test_a_tampered_object_is_refused(store):
    ref = store.put_bytes("models/m/1/model.onnx", b"weights")
    # Rewrite the bytes behind the store's back, keeping the recorded hash.
    store.client.put_object(store.bucket, ref.key, io.BytesIO(b"evil"), 4, metadata={"sha256": ref.sha256})
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        store.get_bytes(ref.key)


def test_an_object_without_a_recorded_hash_is_refused(store):
    store.client.put_object(store.bucket, "raw", io.BytesIO(b"data"), 4)
    with pytest.raises(IntegrityError, match="no recorded sha256"):
        store.get_bytes("raw")


def test_the_registry_hash_is_checked_too(store):
    ref = store.put_bytes("a", b"data")
    with pytest.raises(IntegrityError, match="expected"):
        store.get_bytes(ref.key, expected_sha256=sha256_of(b"other"))


def test_a_missing_object_raises_a_clear_error(store):
    with pytest.raises(ObjectNotFound, match=f"no object s3://{store.bucket}/nope"):
        store.get_bytes("nope")
