"""Wires the trainer process: its two lanes (request consumer and pipeline each), registry client,
result producer."""

from __future__ import annotations

import threading

from services.common.kafka import Consumer, Producer, ensure_topics, position_at_end
from services.common.objectstore import MinioObjectStore
from services.common.registry_client import RegistryClient
from services.common.runtime import ConsumerWorker, ServiceProcess

from .lineage import code_version
from .pipeline import TrainingPipeline
from .recent import RecentRows
from .settings import TrainerSettings
from .worker import Regimes, RequestDeadLetters, TrainerWorker, TrainingRequestHandler

# Headroom past the longest wait for rows: a request being trained must not get the
# consumer evicted from its group (the broker's max.poll.interval.ms).
TRAINING_HEADROOM_S = 600


def build(settings: TrainerSettings) -> ServiceProcess:
    topics = settings.topics
    dead_letter_topic = topics.dead_letters("trainer")
    ensure_topics(settings.kafka_bootstrap,
                  [topics.training_requests, topics.training_results, dead_letter_topic, topics.features],
                  partitions=settings.topic_partitions, replication=settings.topic_replication,
                  client_config=settings.kafka_client_config())
    registry = RegistryClient(settings.registry_address, settings.registry_timeout_s, settings)
    cancelled = threading.Event()
    producer = Producer(settings.kafka_bootstrap, config=settings.kafka_client_config())
    dead_letters = RequestDeadLetters(producer, dead_letter_topic, topics.training_results, settings.model_name)
    regimes = Regimes()
    workers, recent = [], None
    if settings.recent_rows > 0:
        recent = RecentRows(settings.recent_rows)
        workers.append(recent_rows_worker(settings, recent))
    for refreshes, lane in ((False, ""), (True, "-refreshes")):  # worker.py: the two lanes
        store = MinioObjectStore.from_settings(settings)
        pipeline = TrainingPipeline(settings, store, registry.stub, code_version(settings.code_version), cancelled,
                                    recent)
        handler = TrainingRequestHandler(store, pipeline, producer, topics.training_results, settings.model_name,
                                         dead_letters, regimes, refreshes=refreshes)
        consumer = Consumer(
            settings.kafka_bootstrap, f"{settings.topic_prefix}{settings.consumer_group}{lane}",
            [topics.training_requests], instance_id=settings.instance_id and f"{settings.instance_id}{lane}",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            config={**settings.kafka_client_config(),
                    "max.poll.interval.ms": int((settings.wait_timeout_s + TRAINING_HEADROOM_S) * 1000)})
        workers.append(TrainerWorker(consumer, handler, cancelled, max_attempts=settings.max_attempts))
    return ServiceProcess("trainer", settings, workers=workers, on_stop=[producer.close, registry.close])


def recent_rows_worker(settings: TrainerSettings, recent: RecentRows) -> ConsumerWorker:
    """Follows the features topic from its end, committed records only (the feature service's
    transactions), in every partition: each trainer holds every stream's latest rows. It commits
    nothing, so its group never shows on the broker (nor a lag that grows): a restarted trainer
    starts from the end again, and what it held before is in segments."""
    consumer = Consumer(settings.kafka_bootstrap, f"{settings.topic_prefix}{settings.consumer_group}-recent",
                        [], read_committed=True, config=settings.kafka_client_config())
    position_at_end(consumer, settings.topics.features, commit=False)
    return ConsumerWorker("trainer-recent", consumer, recent.add, commits_offsets=True)
