"""Who may touch which Kafka resource: one principal per service, and the ACLs it holds.

With `DRIFTLINE_KAFKA_SECURITY_PROTOCOL=SASL_SSL` each service logs in as its own SCRAM user
(the principal named after the service) and the broker's authorizer lets it read, write and create
only its own topics, join only its own consumer groups and use only its own transactional ids, so
a compromised or buggy service cannot write another's topic. The table is derived from the names
the services use (`Topics`, the group and transactional-id rules of each service's settings;
tests/security checks them against those settings) and is the one source for the secure local
stack (`services/devstack/kafka.py`) and `driftline kafka acls`. Group and transactional-id
names carry an instance id or a random suffix, so they are granted by prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .settings import Topics

# The operator: the CLI and the demo (produce, train, status, the demo's watcher).
PRINCIPALS = ("ingest", "feature", "trainer", "registry", "serving", "monitor", "operator")

Resource = Literal["topic", "group", "transactional_id"]
Pattern = Literal["literal", "prefixed"]


@dataclass(frozen=True, slots=True)
class Grant:
    """Operations of `principal` on one resource name (or every name that starts with it)."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operations: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"principal": self.principal, "resource": self.resource, "name": self.name,
                "pattern": self.pattern, "operations": list(self.operations)}


# A topic a service reads or writes it may also create: every service creates its topics at start
# (`ensure_topics`), so a fresh deployment needs no admin step.
_READ = ("READ", "CREATE")
_WRITE = ("WRITE", "CREATE")
_READ_WRITE = ("READ", "WRITE", "CREATE")


def _topics(principal: str, reads: list[str], writes: list[str]) -> list[Grant]:
    both = [t for t in reads if t in writes]
    return ([Grant(principal, "topic", t, "literal", _READ_WRITE) for t in both]
            + [Grant(principal, "topic", t, "literal", _READ) for t in reads if t not in both]
            + [Grant(principal, "topic", t, "literal", _WRITE) for t in writes if t not in both])


def _groups(principal: str, *prefixes: str) -> list[Grant]:
    return [Grant(principal, "group", p, "prefixed", ("READ",)) for p in prefixes]


def _transactions(principal: str, prefix: str) -> list[Grant]:
    return [Grant(principal, "transactional_id", prefix, "prefixed", ("WRITE",))]


def acl_table(prefix: str = "") -> list[Grant]:
    """Every grant of every principal for the loop whose topics carry `prefix`.

    >>> [g.name for g in acl_table("t.") if g.principal == "registry"]
    ['t.driftline.registry.events']
    >>> sorted({g.principal for g in acl_table()}) == sorted(PRINCIPALS)
    True
    """
    t = Topics(prefix)
    ids_topic = f"{prefix}driftline.events.ids"  # ingest's settings.ids_topic
    feature_app = f"{prefix}driftline-feature"  # feature's settings.app_id
    changelog = f"{feature_app}-entity_state-changelog"
    return [
        *_topics("ingest", [t.events_raw, ids_topic], [t.events, t.events_dlq, ids_topic]),
        *_groups("ingest", f"{prefix}driftline-ingest"),
        *_transactions("ingest", f"{prefix}driftline-ingest"),

        *_topics("feature", [t.events, t.labels, t.features, changelog],
                 [t.features, t.dead_letters("feature"), changelog]),
        *_groups("feature", feature_app),
        *_transactions("feature", feature_app),

        *_topics("trainer", [t.training_requests, t.features], [t.training_results, t.dead_letters("trainer")]),
        *_groups("trainer", f"{prefix}driftline-trainer"),

        *_topics("registry", [], [t.registry_events]),

        *_topics("serving", [t.registry_events], [t.predictions, t.dead_letters("serving")]),
        *_groups("serving", f"{prefix}driftline-serving"),

        *_topics("monitor", [t.features, t.labels, t.predictions, t.training_results, t.registry_events],
                 [t.monitor_stats, t.training_requests, t.dead_letters("monitor")]),
        *_groups("monitor", f"{prefix}driftline-monitor"),

        # Reads every topic of the loop (status, the demo's watcher), writes what a person sends.
        Grant("operator", "topic", f"{prefix}driftline.", "prefixed", ("READ", "CREATE")),
        *_topics("operator", [], [t.events_raw, t.labels, t.training_requests]),
        *_groups("operator", f"{prefix}driftline-cli", f"{prefix}driftline-demo"),
        # `driftline status` reads every group's committed offsets (lag).
        Grant("operator", "group", "*", "literal", ("DESCRIBE",)),
    ]
