"""`driftline kafka acls`: which Kafka principal may do what, the table of
services/common/kafka_acls.py that the secure local stack applies.

It is read from the code, not from a broker, so it answers before anything runs and says what a
deployment's broker must be given (`--prefix` for a loop whose topics carry a prefix).
"""

from __future__ import annotations

from typing import Annotated

import typer

from services.common.kafka_acls import PRINCIPALS, acl_table

from . import output

app = typer.Typer(help="Kafka security: the principals' ACLs.", no_args_is_help=True)


@app.command()
def acls(prefix: Annotated[str, typer.Option("--prefix", help="The loop's topic prefix (DRIFTLINE_TOPIC_PREFIX).")] = "",
         principal: Annotated[str | None, typer.Option("--principal", help=f"Only one of: {', '.join(PRINCIPALS)}.")] = None,
         json_out: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False) -> None:
    """Every ALLOW ACL each service's principal gets: resource, name, pattern, operations."""
    grants = [g for g in acl_table(prefix) if principal is None or g.principal == principal]
    if json_out:
        output.emit_json([g.as_dict() for g in grants])
        return
    output.table(["principal", "resource", "name", "pattern", "operations"],
                 [(g.principal, g.resource, g.name, g.pattern, ", ".join(g.operations)) for g in grants],
                 title="Kafka ACLs (ALLOW; anything else is denied)")
