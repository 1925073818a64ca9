"""faust's aiokafka transport, reading committed records only.

faust reads `read_committed` only when it runs its own transactions
(processing_guarantee="exactly_once"), which this service does not need. But
`driftline.events` is written transactionally by ingest, and a
read_uncommitted reader would also see the records of aborted ingest
transactions — events that, as far as the loop is concerned, never happened.
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):  # type: ignore[no-untyped-def]
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the setting as given and hands it to its fetcher at start().
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer
