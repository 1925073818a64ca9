"""Event → feature vector: the one definition of the features, shared by the
stream processor (online) and by any code that rebuilds features from stored
events (offline), so training and serving never disagree.

Pure: the per-entity state goes in and the next state comes out; nothing is
read from or written to anywhere else. The state is a small JSON-able value
the feature service keeps in memory, backed by a compacted changelog topic.

The vector is the schema's numeric fields in schema order, then the entity
features (see `StreamSchema.feature_names`). An entity feature of kind
`ewm_mean` is the exponentially weighted mean of its source field over the
entity's events so far, *including* the current one:

    mean_1 = x_1,   mean_n = mean_{n-1} + alpha * (x_n - mean_{n-1})

>>> from services.common.schema import StreamSchema
>>> schema = StreamSchema.from_dict({
...     "stream": "demo",
...     "fields": [{"name": "salary", "type": "number"}, {"name": "age", "type": "integer"}],
...     "entity_features": [{"name": "salary_entity_mean", "source": "salary", "alpha": 0.5}]})
>>> schema.feature_names
['salary', 'age', 'salary_entity_mean']
>>> values, state = compute_features(schema, {"salary": 100.0, "age": 30})
>>> values
[100.0, 30.0, 100.0]
>>> values, state = compute_features(schema, {"salary": 200.0, "age": 31}, state)
>>> values
[200.0, 31.0, 150.0]
>>> state
EntityState(count=2, means={'salary_entity_mean': 150.0})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from services.common.schema import StreamSchema, Value, as_float


@dataclass(frozen=True)
class EntityState:
    """What the features remember about one entity between its events."""

    count: int = 0
    means: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "means": dict(self.means)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, object] | None) -> "EntityState":
        if not doc:
            return cls()
        return cls(count=int(doc.get("count", 0)), means=dict(doc.get("means", {})))  # type: ignore[arg-type]


def compute_features(schema: StreamSchema, values: Mapping[str, Value],
                     state: EntityState | None = None) -> tuple[list[float], EntityState]:
    """The feature vector of one event and the entity's state after it.

    A missing optional field is NaN in the vector and leaves its entity
    means unchanged (a mean never seen stays NaN).
    """
    state = state or EntityState()
    means = dict(state.means)
    for feature in schema.entity_features:
        x = as_float(values.get(feature.source))
        if math.isnan(x):
            continue
        previous = means.get(feature.name)
        means[feature.name] = x if previous is None else previous + feature.alpha * (x - previous)
    vector = [as_float(values.get(spec.name)) for spec in schema.feature_fields]
    vector += [means.get(feature.name, math.nan) for feature in schema.entity_features]
    return vector, EntityState(count=state.count + 1, means=means)


def compute_features_offline(schema: StreamSchema, events: Iterable[tuple[str, Mapping[str, Value]]]
                             ) -> Iterator[list[float]]:
    """Replays (entity_id, values) pairs in event order, keeping each entity's state as the agent does."""
    states: dict[str, EntityState] = {}
    for entity_id, values in events:
        vector, states[entity_id] = compute_features(schema, values, states.get(entity_id))
        yield vector
