"""Fixtures of the serving tests: `stack`, a registry stand-in on the real broker and object store
(serving_stack.Stack), with `python -m services.serving` around it."""

from __future__ import annotations

import pytest

from driftline.v1 import registry_pb2_grpc
from services.common.kafka import Producer, ensure_topics
from services.common.objectstore import MinioObjectStore
from services.common.settings import Topics
from serving_stack import Registry, Stack
from support import GrpcThread

# Runs in tritonclient's own venv (test_serving_triton.py), not in this one: nothing to collect.
collect_ignore = ["triton_client_check.py"]


@pytest.fixture
def stack(kafka_bootstrap, s3, topic_prefix, bucket_name, tmp_path):
    store = MinioObjectStore(s3.endpoint, s3.access_key, s3.secret_key, bucket_name, s3.secure)
    store.ensure_bucket()
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, [topics.registry_events, topics.predictions])
    registry = GrpcThread(Registry(), registry_pb2_grpc.add_RegistryServicer_to_server)
    try:
        yield Stack(kafka_bootstrap, topics, store, registry, Producer(kafka_bootstrap), tmp_path)
    finally:
        registry.stop()
