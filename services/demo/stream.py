"""A labelled event stream with one abrupt concept drift at a known position.

river's Agrawal generator labels loan applicants by one of ten functions; the
stream switches function at `drift_at`. The features keep their distribution,
only the concept changes, so only a detector on the error stream can see it.
(`ConceptDriftStream` is avoided for abrupt drift far into a stream: its
sigmoid overflows when position/width is large — see FIELD-NOTES.)

>>> stream = DriftingStream(drift_at=3, seed=7)
>>> [e["event_id"] for e in stream.take(4)]
['ev-000000000', 'ev-000000001', 'ev-000000002', 'ev-000000003']
>>> stream.concept_of(2), stream.concept_of(3)
(0, 1)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

os.environ.setdefault("RIVER_DATA", os.path.join(os.path.expanduser("~"), ".cache", "driftline", "river"))

from river.datasets import synth  # noqa: E402


class DriftingStream:
    def __init__(self, drift_at: int, seed: int = 42, concept_before: int = 0, concept_after: int = 1,
                 entities: int = 200) -> None:
        self.drift_at = drift_at
        self.seed = seed
        self.concepts = (concept_before, concept_after)
        self.entities = entities

    def concept_of(self, index: int) -> int:
        return self.concepts[index >= self.drift_at]

    def _samples(self) -> Iterator[tuple[dict, int]]:
        before = synth.Agrawal(classification_function=self.concepts[0], seed=self.seed)
        # A different seed after the drift, so the rows themselves do not repeat.
        after = synth.Agrawal(classification_function=self.concepts[1], seed=self.seed + 1)
        return itertools.chain(before.take(self.drift_at), iter(after))

    def take(self, n: int | None = None) -> Iterator[dict]:
        """Yields flat JSON-ready events; `event_time` is left to the producer."""
        for i, (x, y) in enumerate(itertools.islice(self._samples(), n)):
            yield {"event_id": f"ev-{i:09d}", "entity_id": f"customer-{(i * 7919) % self.entities}",
                   **x, "label": int(y)}


def index_of(event_id: str) -> int:
    """The stream position of an event id made by `DriftingStream`."""
    return int(event_id.rsplit("-", 1)[1])
