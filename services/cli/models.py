"""`driftline models …`: the registry's model versions, their lineage, aliases and gate, and the
audit log of who moved an alias or asked the gate, when and why (`models audit`).

Rollback moves an alias back to where it pointed before its last move. That history is the
registry's outbox topic (ALIAS_MOVED events carry the previous version); when the topic has
nothing for the alias, the promoted gate decisions are used instead:

>>> from driftline.v1 import registry_pb2 as r
>>> moved = lambda v, prev: r.RegistryEvent(kind=r.RegistryEvent.ALIAS_MOVED, model_name="m", alias="production",
...                                         model_version=r.ModelVersion(name="m", version=v), previous_version=prev)
>>> previous_version([moved(1, 0), moved(2, 1), moved(3, 2)], [], "m", "production", current=3)
2
>>> previous_version([], [r.GateDecision(alias="production", candidate_version=v, promoted=True) for v in (1, 4)],
...                  "m", "production", current=4)
1
"""

from __future__ import annotations

from typing import Annotated

import typer

from driftline.v1 import registry_pb2

from . import output
from .clients import ALIASES, Rpc, registry_events, s3_client
from .errors import CliError, Unreachable
from .state import Platform
from .streams import platform_models

app = typer.Typer(help="Model versions, lineage, aliases and the promotion gate (the registry).",
                  no_args_is_help=True)
JsonOut = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
AliasOpt = Annotated[str, typer.Option("--alias", help="The alias (production, canary, shadow, …).")]
Name = Annotated[str, typer.Argument(help="The model's name.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why, for the audit log (required with --force).")]
R = registry_pb2.RegistryEvent


def _versions(registry: Rpc, name: str) -> list[registry_pb2.ModelVersion]:
    return list(registry.call("ListModelVersions", registry_pb2.ListModelVersionsRequest(name=name)).model_versions)


def aliases_of(registry: Rpc, name: str) -> dict[str, int | None]:
    found = {}
    for alias in ALIASES:
        try:
            found[alias] = registry.call("GetAlias", registry_pb2.GetAliasRequest(name=name, alias=alias)).version
        except Unreachable:
            raise
        except CliError:
            found[alias] = None
    return found


def _version(registry: Rpc, name: str, version: int | None) -> registry_pb2.ModelVersion:
    """A version; without one, what production points at, else the newest."""
    if version:
        return registry.call("GetModelVersion", registry_pb2.GetModelVersionRequest(name=name, version=version))
    try:
        return registry.call("GetAlias", registry_pb2.GetAliasRequest(name=name, alias="production"))
    except Unreachable:
        raise
    except CliError:
        pass  # production points nowhere
    versions = _versions(registry, name)
    if not versions:
        raise CliError(f"registry: model {name!r} has no versions")
    return max(versions, key=lambda v: v.version)


@app.command("list")
def list_models(name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
                json_out: JsonOut = False) -> None:
    """Every model (from the registry's announcements) with its versions and aliases."""
    platform = Platform.load()
    rows = []
    with Rpc.of(platform, "registry") as registry:

        def add(model: str) -> None:
            try:
                versions = _versions(registry, model)
            except Unreachable:
                raise
            except CliError:
                if name:
                    raise
                return  # the platform's model before its first version
            rows.append({"model": model, "versions": [v.version for v in versions], "aliases": aliases_of(registry, model)})

        ours = [name] if name else platform_models(platform)
        add(ours[0])  # the registry answers before Kafka is read
        if not name:
            announced = sorted({e.model_name for e in registry_events(platform) if e.model_name} - set(ours))
            for model in ours[1:] + announced:
                add(model)
    if json_out:
        return output.emit_json(rows)
    output.table(["model", "versions", "latest", *ALIASES],
                 [(r["model"], len(r["versions"]), f"v{max(r['versions'])}" if r["versions"] else "-",
                   *(f"v{v}" if v else "-" for v in r["aliases"].values())) for r in rows])


@app.command("show")
def show(name: Name, version: Annotated[int | None, typer.Argument(help="Default: production's, else the newest.")] = None,
         json_out: JsonOut = False) -> None:
    """One model version: artifact, dataset, metrics, parameters, aliases."""
    platform = Platform.load()
    with Rpc.of(platform, "registry") as registry:
        mv = _version(registry, name, version)
        aliases = [a for a, v in aliases_of(registry, name).items() if v == mv.version]
    info = {**output.plain(mv), "aliases": aliases}
    if json_out:
        return output.emit_json(info)
    output.pairs([("model", f"{mv.name} v{mv.version}"), ("aliases", ", ".join(aliases) or "-"),
                  ("created", output.iso(mv.created_at)), ("artifact", mv.artifact_uri),
                  ("sha256", mv.artifact_sha256), ("dataset", mv.dataset_id), ("code", mv.code_version),
                  ("features", ", ".join(mv.feature_names))])
    output.table(["metric", "value"], [(k, f"{v:.6g}") for k, v in sorted(mv.metrics.items())])
    output.table(["param", "value"], sorted(mv.params.items()))


@app.command("lineage")
def lineage(name: Name, version: Annotated[int, typer.Argument(help="The version.")], json_out: JsonOut = False) -> None:
    """Where a version came from: request, dataset (window, segments), code, and the gate's decisions on it."""
    platform = Platform.load()
    with Rpc.of(platform, "registry") as registry:
        mv = _version(registry, name, version)
        decisions = [d for d in registry.call("GetGateDecisions", registry_pb2.GetGateDecisionsRequest(name=name)).decisions
                     if d.candidate_version == mv.version]
    stream = mv.params.get("stream", platform.settings.stream)
    manifest, manifest_error = None, None
    if mv.dataset_id:
        from .datasets import read_manifest

        try:
            client, bucket = s3_client(platform)
            manifest = read_manifest(client, bucket, stream, mv.dataset_id)
        except CliError as exc:
            manifest_error = str(exc)
    info = {"model": mv.name, "version": mv.version, "created_at": output.iso(mv.created_at),
            "request_id": mv.params.get("request_id", ""), "reason": mv.params.get("reason", ""),
            "code_version": mv.code_version, "artifact_uri": mv.artifact_uri, "artifact_sha256": mv.artifact_sha256,
            "dataset": {"id": mv.dataset_id, "stream": stream, "manifest": manifest, "error": manifest_error},
            "gate_decisions": [output.plain(d) for d in decisions]}
    if json_out:
        return output.emit_json(info)
    from rich.tree import Tree

    tree = Tree(f"{mv.name} v{mv.version}  (created {info['created_at']}, code {mv.code_version or '?'})")
    tree.add(f"request {info['request_id'] or '?'}: {info['reason'] or '?'}")
    data = tree.add(f"dataset {mv.dataset_id or '?'} (stream {stream})")
    if manifest:
        data.add(f"window {output.iso(manifest['window_start_ms']) or 'start'} → {output.iso(manifest['window_end_ms'])}, "
                 f"{manifest['rows']} rows, {len(manifest['segments'])} segments")
        for segment in manifest["segments"]:
            data.add(f"{segment['key']}  {segment['rows']} rows  sha256 {segment['sha256'][:16]}…")
    elif manifest_error:
        data.add(f"manifest not readable: {manifest_error}")
    tree.add(f"artifact {mv.artifact_uri} (sha256 {mv.artifact_sha256[:16]}…)")
    gate = tree.add("gate")
    for d in decisions:
        gate.add(f"{output.iso(d.decided_at)} {d.alias}: {'promoted' if d.promoted else 'refused'} "
                 f"({d.candidate_accuracy:.4f} vs v{d.baseline_version} {d.baseline_accuracy:.4f} on {d.eval_rows} rows) "
                 f"{d.reason}")
    if not decisions:
        gate.add("no decision")
    output.out.print(tree)


def _decision_rows(decisions) -> list[tuple]:
    return [(output.iso(d.decided_at), d.alias, f"v{d.candidate_version}",
             f"v{d.baseline_version}" if d.baseline_version else "-", f"{d.candidate_accuracy:.4f}",
             f"{d.baseline_accuracy:.4f}" if d.baseline_version else "-", d.eval_rows,
             "promoted" if d.promoted else "refused", d.reason) for d in decisions]


DECISION_COLUMNS = ["decided", "alias", "candidate", "baseline", "cand. acc", "base acc", "eval rows", "outcome", "reason"]


@app.command("promote")
def promote(name: Name, version: Annotated[int, typer.Argument(help="The version to promote.")],
            alias: AliasOpt = "production",
            force: Annotated[bool, typer.Option(help="Move the alias without the gate (SetAlias; an admin token).")] = False,
            reason: ReasonOpt = "", json_out: JsonOut = False) -> None:
    """Promote a version through the gate (it must beat what the alias points at); exit 1 if refused."""
    if force and not reason.strip():
        raise CliError("--force moves the alias past the gate: say why with --reason (kept in the audit log)")
    platform = Platform.load()
    with Rpc.of(platform, "registry") as registry:
        if force:
            mv = registry.call("SetAlias", registry_pb2.SetAliasRequest(name=name, alias=alias, version=version,
                                                                        reason=reason))
            info = {"model": name, "alias": alias, "version": mv.version, "gated": False, "promoted": True}
            return output.emit_json(info) if json_out else output.say(f"{name} {alias} → v{mv.version} (no gate)")
        decision = registry.call("Promote", registry_pb2.PromoteRequest(name=name, version=version, alias=alias,
                                                                        reason=reason),
                                 timeout=30.0)  # the gate scores both models on the eval rows
    if json_out:
        output.emit_json(output.plain(decision))
    else:
        output.table(DECISION_COLUMNS, _decision_rows([decision]))
    if not decision.promoted:
        raise CliError(f"the gate refused v{version} for {alias}: {decision.reason}")


def previous_version(events, decisions, name: str, alias: str, current: int) -> int | None:
    """Where `alias` pointed before it moved to `current` (see the module's docstring)."""
    moves = [e for e in events if e.kind == R.ALIAS_MOVED and e.model_name == name and e.alias == alias]
    for event in reversed(moves):
        if event.model_version.version == current:
            return event.previous_version or None
    promoted = [d.candidate_version for d in decisions if d.alias == alias and d.promoted]
    earlier = [v for v in promoted if v != current]
    return earlier[-1] if earlier else None


@app.command("rollback")
def rollback(name: Name, alias: AliasOpt = "production", reason: ReasonOpt = "", json_out: JsonOut = False) -> None:
    """Move an alias back to the version it pointed at before its last move (no gate; an admin token)."""
    platform = Platform.load()
    with Rpc.of(platform, "registry") as registry:
        current = registry.call("GetAlias", registry_pb2.GetAliasRequest(name=name, alias=alias)).version
        decisions = registry.call("GetGateDecisions", registry_pb2.GetGateDecisionsRequest(name=name)).decisions
        target = previous_version(registry_events(platform), decisions, name, alias, current)
        if not target:
            raise CliError(f"{alias} of {name} has pointed at nothing before v{current}: nothing to roll back to")
        why = f"rollback from v{current}" + (f": {reason.strip()}" if reason.strip() else "")
        registry.call("SetAlias", registry_pb2.SetAliasRequest(name=name, alias=alias, version=target, reason=why))
    if json_out:
        return output.emit_json({"model": name, "alias": alias, "from": current, "to": target})
    output.say(f"{name} {alias}: v{current} → v{target}")


@app.command("gate-log")
def gate_log(name: Name, json_out: JsonOut = False) -> None:
    """Every decision the promotion gate took for a model."""
    platform = Platform.load()
    with Rpc.of(platform, "registry") as registry:
        decisions = registry.call("GetGateDecisions", registry_pb2.GetGateDecisionsRequest(name=name)).decisions
    if json_out:
        return output.emit_json([output.plain(d) for d in decisions])
    output.table(DECISION_COLUMNS, _decision_rows(decisions))


@app.command("audit")
def audit(name: Name, json_out: JsonOut = False) -> None:
    """Who moved an alias of a model or asked the gate, when and why (oldest first)."""
    platform = Platform.load()
    with Rpc.of(platform, "registry") as registry:
        records = registry.call("GetAuditLog", registry_pb2.GetAuditLogRequest(name=name)).records
    if json_out:
        return output.emit_json([output.plain(r) for r in records])
    output.table(["when", "subject", "action", "alias", "version", "from", "outcome", "reason", "gate"],
                 [(output.iso(r.at), r.subject, "set-alias" if r.action == registry_pb2.AuditRecord.SET_ALIAS
                   else "promote", r.alias, f"v{r.version}", f"v{r.previous_version}" if r.previous_version else "-",
                   _outcome(r), r.reason or "-", r.gate_reason or "-") for r in records])


def _outcome(record: registry_pb2.AuditRecord) -> str:
    if record.action == registry_pb2.AuditRecord.PROMOTE and not record.promoted:
        return "refused"
    return "moved" if record.moved else "unchanged"
