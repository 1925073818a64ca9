"""Fixtures of the serving tests: `stack`, a registry stand-in on the real broker and object store
(serving_stack.Stack), with `python -m services.serving` around it."""

from __future__ import annotations

import pytest

from driftline.v1 import registry_pb2_grpc
from services.common.kafka import Producer
from serving_stack import Registry, Stack, store_and_topics
from support import GrpcThread

# Runs in tritonclient's own venv (test_serving_triton.py), not in this one: nothing to collect.
collect_ignore = ["triton_client_check.py"]


@pytest.fixture
def stack(kafka_bootstrap, s3, topic_prefix, bucket_name, tmp_path):
    store, topics = store_and_topics(kafka_bootstrap, s3, topic_prefix, bucket_name)
    registry = GrpcThread(Registry(), registry_pb2_grpc.add_RegistryServicer_to_server)
    try:
        yield Stack(kafka_bootstrap, topics, store, registry, Producer(kafka_bootstrap), tmp_path)
    finally:
        registry.stop()
