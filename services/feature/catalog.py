"""What the feature process knows of the deployment's streams: the schema of a
stream by name, and where a (stream, entity) keeps its row in the table.

The catalogue (services/common/streams.py) re-reads its folder at most once a
second. Another service may have seen a new stream a moment earlier: ingest
validates an event of a stream added half a second ago and the agent gets it
at once. So a name the catalogue does not know makes it look at its folder
again before the name counts as unknown (a stat of a few files; unknown names
are a bug upstream, not the common case).

Table rows are keyed by stream and entity, so two streams' entities never
share state. Rows written before the feature service served several streams
were keyed by the bare entity id; the default stream still reads such a row
(and moves it under its new key on the entity's next event), so an upgrade
keeps the entities' state.

>>> table_key("sea", "c-1")
'sea\\x1fc-1'
>>> table = {"c-1": {"values": [1.0]}, "sea\\x1fc-2": {"values": [2.0]}}
>>> load_row(table, "sea", "c-2", default_stream="default")
({'values': [2.0]}, None)
>>> load_row(table, "default", "c-1", default_stream="default")
({'values': [1.0]}, 'c-1')
>>> load_row(table, "sea", "c-1", default_stream="default")
(None, None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.schema import StreamSchema
from services.common.streams import StreamCatalog

KEY_SEPARATOR = "\x1f"  # ASCII unit separator: in no stream name and no sane entity id


def table_key(stream: str, entity_id: str) -> str:
    return f"{stream}{KEY_SEPARATOR}{entity_id}"


def load_row(table: Mapping[str, Any], stream: str, entity_id: str, default_stream: str
             ) -> tuple[dict[str, Any] | None, str | None]:
    """(the entity's row or None, the legacy key it was found under or None)."""
    row = table.get(table_key(stream, entity_id))
    if row is None and stream == default_stream and KEY_SEPARATOR not in entity_id:
        legacy = table.get(entity_id)
        if legacy is not None:
            return legacy, entity_id
    return row, None


def current_schema(catalog: StreamCatalog, stream: str | None) -> StreamSchema | None:
    """The schema of `stream` (the default stream when empty), looking at the folder again
    before saying None."""
    schema = catalog.get(stream)
    if schema is None and catalog.refresh(force=True):
        schema = catalog.get(stream)
    return schema
