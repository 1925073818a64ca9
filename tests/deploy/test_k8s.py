"""deploy/k8s/: every overlay, rendered by the real kustomize and checked offline.

Each built-in object is validated against the OpenAPI schema of Kubernetes KUBERNETES_VERSION
(kubernetes-validate's bundled schemas, strict: an unknown field is an error). KEDA's
ScaledObject and TriggerAuthentication are CRDs those schemas do not know, so they are checked
structurally here. Then what a schema cannot see: probes, resources and securityContext of every
pod; no literal secret; Service, PDB and autoscaler targets that exist; env names that are real
settings fields (and values those settings accept); the stream schemas mounted where
DRIFTLINE_STREAMS_DIR points; the NetworkPolicies' flows; the GPU Job.

kustomize is built by `python -m services.devstack install` (services/devstack/tools.py);
`make test` runs that before pytest.

Every check returns a list of problems, so that the last tests can prove each one fails for a
manifest that is wrong.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kv

from driftline_services import SERVICES, service_module, settings_class, settings_env_names
from services.devstack import tools

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
STREAMS = ROOT / "config" / "streams"

# The newest Kubernetes release kubernetes-validate ships schemas for; deploy/k8s/README.md names it.
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = ("dev", "production", "gpu-training")

KEDA_API = "keda.sh/v1alpha1"
CRD_KINDS = {(KEDA_API, "ScaledObject"), (KEDA_API, "TriggerAuthentication")}
SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
                      "triggers"}
KAFKA_TRIGGER_REQUIRED = ("bootstrapServers", "consumerGroup", "topic", "lagThreshold")

# `python -m services.<name>` → the settings class whose fields are that process's DRIFTLINE_* env.
SETTINGS = {service: settings_class(service) for service in SERVICES}
# Env that is no Driftline setting, allowed by name (torch wants a writable home).
PLAIN_ENV = {"HOME"}


def _consumes(service: str, s) -> tuple[str, set[str]] | None:
    """The consumer group a service's main consumer joins and the topics it reads (server.py)."""
    t = s.topics
    return {
        "ingest": lambda: (s.group_id, {t.events_raw}),
        "feature": lambda: (s.app_id, {t.events}),  # its app id is its group
        "trainer": lambda: (f"{s.topic_prefix}{s.consumer_group}", {t.training_requests}),
        "monitor": lambda: (f"{s.topic_prefix}{s.consumer_group}",
                            {t.features, t.labels, t.predictions, t.training_results, t.registry_events}),
    }.get(service, lambda: None)()


HEALTH_PROBE = ["python", "-m", "services.common.healthcheck"]
# Those that read or write the object store: each with its own account (ingest never touches it).
S3_USERS = set(SERVICES) - {"ingest"}
# Those that dial the registry (services/*/server.py: settings.registry_address).
REGISTRY_CLIENTS = {"serving", "trainer", "monitor"}
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL)", re.I)
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


# -- rendering ----------------------------------------------------------------------------------

def kustomize_binary() -> Path:
    binary = tools.kustomize()
    if binary is None:
        pytest.fail(f"kustomize is not built at {tools.kustomize_path()}: run `python -m services.devstack install`"
                    " (make test does)")
    return binary


def render(path: Path) -> list[dict]:
    # The stream schemas are generated from config/streams/, outside deploy/k8s: hence the flag.
    done = subprocess.run([str(kustomize_binary()), "build", "--load-restrictor", "LoadRestrictionsNone", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kustomize build {path} failed:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(render(K8S / "overlays" / overlay))


@pytest.fixture(params=OVERLAYS)
def objects(request) -> list[dict]:
    return copy.deepcopy(list(_rendered(request.param)))


# -- helpers ------------------------------------------------------------------------------------

def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def name(obj) -> str:
    return obj["metadata"]["name"]


def workloads(objs) -> list[dict]:
    return [o for o in objs if o["kind"] in ("Deployment", "Job")]


def pod_spec(workload) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def service_of(container) -> str | None:
    """`python -m services.<name>` → name."""
    return service_module([*container.get("command", []), *container.get("args", [])])


def config_maps(objs) -> dict[str, dict]:
    return {name(o): o.get("data", {}) for o in of_kind(objs, "ConfigMap")}


def env_of(container, objs) -> dict[str, dict]:
    """Every variable the container gets: {name: {"value": ...} | {"valueFrom": ...}}, envFrom first."""
    out: dict[str, dict] = {}
    maps = config_maps(objs)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            for key, value in maps.get(source["configMapRef"]["name"], {}).items():
                out[key] = {"value": value, "from": "configMap"}
    for var in container.get("env", []):
        out[var["name"]] = {k: v for k, v in var.items() if k != "name"}
    return out


def literal_env(container, objs) -> dict[str, str]:
    return {k: v["value"] for k, v in env_of(container, objs).items() if "value" in v}


def isolated_settings(cls, env: dict[str, str]):
    """`cls` from exactly these DRIFTLINE_* values: not this process's environment, no .env file."""

    class Isolated(cls):
        @classmethod
        def settings_customise_sources(cls_, settings_cls, init_settings, **others):
            return (init_settings,)

    fields = {k[len("DRIFTLINE_"):].lower(): v for k, v in env.items() if k.startswith("DRIFTLINE_")}
    # The settings check that their files exist, which they do only in the pod (mounted Secrets):
    # parse with a file that exists here; security_problems checks where the paths point.
    fields = {k: __file__ if k.endswith("_file") and v else v for k, v in fields.items()}
    return Isolated(**fields)


def settings_of(workload, objs):
    container = pod_spec(workload)["containers"][0]
    service = service_of(container)
    return service, isolated_settings(SETTINGS[service], literal_env(container, objs))


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against a label set; {} selects everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ports_of(workload) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod_spec(workload)["containers"]
            for p in c.get("ports", []) if "name" in p}


# -- the checks -----------------------------------------------------------------------------------

def openapi_problems(objs) -> list[str]:
    problems = []
    for obj in objs:
        if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
            continue  # keda_problems
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{where}: {e.message}")
    return problems


def keda_problems(objs) -> list[str]:
    problems = []
    deployments = {name(d): d for d in of_kind(objs, "Deployment")}
    auths = set()
    for ta in of_kind(objs, "TriggerAuthentication"):
        where = f"TriggerAuthentication/{name(ta)}"
        if ta["apiVersion"] != KEDA_API:
            problems.append(f"{where}: apiVersion {ta['apiVersion']}, not {KEDA_API}")
        refs = (ta.get("spec") or {}).get("secretTargetRef")
        if not refs or set(ta["spec"]) != {"secretTargetRef"}:
            problems.append(f"{where}: spec must be secretTargetRef only (credentials from a Secret)")
        for ref in refs or []:
            if not all(ref.get(k) for k in ("parameter", "name", "key")):
                problems.append(f"{where}: secretTargetRef {ref} needs parameter, name and key")
        auths.add(name(ta))
    scaled = {}
    for so in of_kind(objs, "ScaledObject"):
        where = f"ScaledObject/{name(so)}"
        spec = so.get("spec") or {}
        if so["apiVersion"] != KEDA_API:
            problems.append(f"{where}: apiVersion {so['apiVersion']}, not {KEDA_API}")
        if unknown := set(spec) - SCALED_OBJECT_SPEC:
            problems.append(f"{where}: unknown spec fields {sorted(unknown)}")
        ref = spec.get("scaleTargetRef") or {}
        target = deployments.get(ref.get("name"))
        if target is None or ref.get("kind", "Deployment") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
            problems.append(f"{where}: scaleTargetRef {ref} names no Deployment of this render")
            continue
        scaled[name(target)] = where
        service, s = settings_of(target, objs)
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
            problems.append(f"{where}: minReplicaCount {low} / maxReplicaCount {high}")
        elif high > s.topic_partitions:
            problems.append(f"{where}: maxReplicaCount {high} > {s.topic_partitions} partitions (idle consumers)")
        consumes = _consumes(service, s)
        if consumes is None:
            problems.append(f"{where}: {service} consumes no Kafka topic to scale on")
            continue
        group, topics = consumes
        triggers = spec.get("triggers") or []
        if not triggers:
            problems.append(f"{where}: no triggers")
        for i, trigger in enumerate(triggers):
            meta = trigger.get("metadata") or {}
            at = f"{where} trigger {i}"
            if trigger.get("type") != "kafka":
                problems.append(f"{at}: type {trigger.get('type')!r}, not kafka")
            if missing := [k for k in KAFKA_TRIGGER_REQUIRED if not meta.get(k)]:
                problems.append(f"{at}: missing {missing}")
                continue
            if not all(isinstance(v, str) for v in meta.values()):
                problems.append(f"{at}: metadata values must be strings")
            if meta["bootstrapServers"] != s.kafka_bootstrap:
                problems.append(f"{at}: bootstrapServers {meta['bootstrapServers']} but the service "
                                f"connects to {s.kafka_bootstrap}")
            if meta["consumerGroup"] != group:
                problems.append(f"{at}: consumerGroup {meta['consumerGroup']} but {service}'s is {group}")
            if meta["topic"] not in topics:
                problems.append(f"{at}: topic {meta['topic']} is not one {service} reads ({sorted(topics)})")
            if not str(meta["lagThreshold"]).isdigit() or int(meta["lagThreshold"]) < 1:
                problems.append(f"{at}: lagThreshold {meta['lagThreshold']!r}")
            if (trigger.get("authenticationRef") or {}).get("name") not in auths:
                problems.append(f"{at}: authenticationRef names no TriggerAuthentication of this render")
    for d in deployments.values():
        service, s = settings_of(d, objs)
        if _consumes(service, s) and name(d) not in scaled:
            problems.append(f"Deployment/{name(d)}: a Kafka consumer without a ScaledObject")
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] in scaled:
            problems.append(f"HorizontalPodAutoscaler/{name(hpa)}: its target is KEDA's already")
    return problems


def workload_problems(objs) -> list[str]:
    problems = []
    for w in workloads(objs):
        where = f"{w['kind']}/{name(w)}"
        spec = pod_spec(w)
        if w["kind"] == "Deployment" and not selects(w["spec"]["selector"], pod_labels(w)):
            problems.append(f"{where}: its selector does not select its own pods")
        pod_sc = spec.get("securityContext") or {}
        if pod_sc.get("runAsNonRoot") is not True or not pod_sc.get("runAsUser"):
            problems.append(f"{where}: pod securityContext needs runAsNonRoot and a non-zero runAsUser")
        if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile RuntimeDefault")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            at = f"{where} container {c['name']}"
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe") if w["kind"] == "Deployment" else ("livenessProbe",):
                p = c.get(probe)
                if not p:
                    problems.append(f"{at}: no {probe}")
                elif "grpc" in ports:
                    # Native grpc probes speak no TLS: the image's probe, in the pod, with its certificate.
                    command = (p.get("exec") or {}).get("command") or []
                    if command[:4] != [*HEALTH_PROBE, f"127.0.0.1:{ports['grpc']}"]:
                        problems.append(f"{at}: {probe} must be `python -m services.common.healthcheck "
                                        f"127.0.0.1:{ports['grpc']}` (the gRPC port, over the pod's TLS)")
                elif not (p.get("httpGet") and p["httpGet"].get("port") in (*ports, *ports.values())):
                    problems.append(f"{at}: {probe} probes no port the container declares")
            if "grpc" in ports:
                declared = literal_env(c, objs).get("DRIFTLINE_GRPC_PORT")
                if declared is None or int(declared) != ports["grpc"]:
                    problems.append(f"{at}: DRIFTLINE_GRPC_PORT {declared} is not the grpc port {ports['grpc']}")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                if not all(k in (res.get(part) or {}) for k in ("cpu", "memory")):
                    problems.append(f"{at}: resources.{part} needs cpu and memory")
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: allowPrivilegeEscalation false and readOnlyRootFilesystem true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{at}: capabilities must drop ALL")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            read_only = {m["mountPath"]: bool(m.get("readOnly")) for m in c.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                problems.append(f"{at}: a read-only root needs a writable /tmp")
            for path, vol in mounts.items():
                if vol not in volumes:
                    problems.append(f"{at}: mount {path} names no volume")
                elif not (read_only[path] or {"emptyDir", "persistentVolumeClaim"} & set(volumes[vol])):
                    problems.append(f"{at}: {path} is writable but not an emptyDir or a volume claim")
    return problems


def is_path_setting(key: str, value) -> bool:
    """A *_FILE setting holds a path (security_problems checks it is a mounted Secret), not a secret."""
    return key.endswith("_FILE") and str(value or "").startswith("/")


def secret_mounts(workload, container) -> dict[str, str]:
    """{mountPath: Secret name} of the container's read-only mounts of Secret volumes."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]]["secret"]["secretName"] for m in container.get("volumeMounts", [])
            if m.get("readOnly") and "secret" in volumes.get(m["name"], {})}


def mounted_from(path: str, mounts: dict[str, str]) -> str | None:
    """The Secret a file path lies in, or None."""
    return next((secret for mount, secret in mounts.items() if path.startswith(mount.rstrip("/") + "/")), None)


def security_problems(objs) -> list[str]:
    """mTLS with the pod's own certificate, the issuer's public key, a token for a caller, Kafka
    SASL_SSL as its own principal and its own S3 account: each from a Secret, for every pod."""
    from services.common.auth import SERVICE_ROLES

    problems = []
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            at = f"{w['kind']}/{name(w)} container {c['name']}"
            service = service_of(c)
            env, literal, mounts = env_of(c, objs), literal_env(c, objs), secret_mounts(w, c)
            expected = {"DRIFTLINE_TLS_CERT_FILE": f"driftline-{service}-tls",
                        "DRIFTLINE_TLS_KEY_FILE": f"driftline-{service}-tls", "DRIFTLINE_TLS_CA_FILE": "driftline-ca",
                        "DRIFTLINE_AUTH_PUBLIC_KEY_FILE": "driftline-auth", "DRIFTLINE_KAFKA_SSL_CA_FILE": "driftline-ca"}
            if service in SERVICE_ROLES:
                expected["DRIFTLINE_TOKEN_FILE"] = f"driftline-{service}-token"
            elif "DRIFTLINE_TOKEN_FILE" in env or "DRIFTLINE_TOKEN" in env:
                problems.append(f"{at}: {service} calls no service, so it needs no token")
            if service in S3_USERS:
                expected["DRIFTLINE_S3_CA_FILE"] = "driftline-ca"
            for var, secret in expected.items():
                found = mounted_from(literal.get(var, ""), mounts)
                if found != secret:
                    problems.append(f"{at}: {var}={literal.get(var)!r} is not in a read-only mount of "
                                    f"Secret {secret} ({found or 'no Secret'})")
            for var, value in {"DRIFTLINE_TLS_CLIENT_AUTH": "true", "DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "DRIFTLINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                               **({"DRIFTLINE_S3_SECURE": "true"} if service in S3_USERS else {})}.items():
                if literal.get(var, "").lower() != value.lower():
                    problems.append(f"{at}: {var} is {literal.get(var)!r}, not {value}")
            logins = {"DRIFTLINE_KAFKA_SASL_USERNAME": f"driftline-{service}-kafka",
                      "DRIFTLINE_KAFKA_SASL_PASSWORD": f"driftline-{service}-kafka"}
            if service in S3_USERS:
                logins |= {"DRIFTLINE_S3_ACCESS_KEY": f"driftline-{service}-s3",
                           "DRIFTLINE_S3_SECRET_KEY": f"driftline-{service}-s3"}
            for var, secret in logins.items():
                ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                if ref.get("name") != secret:
                    problems.append(f"{at}: {var} is not from its own Secret {secret} ({ref.get('name')})")
    return problems


def secret_problems(objs) -> list[str]:
    problems = []
    for obj in objs:
        if obj["kind"] == "Secret":
            problems.append(f"Secret/{name(obj)}: Secrets are created out of band, never rendered")
    for cm in of_kind(objs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if key.startswith("DRIFTLINE_") and SECRET_NAME.search(key) and not is_path_setting(key, value):
                problems.append(f"ConfigMap/{name(cm)}: {key} looks like a credential")
            if URL_WITH_CREDENTIALS.search(str(value)):
                problems.append(f"ConfigMap/{name(cm)}: {key} holds a URL with credentials")
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            at = f"{w['kind']}/{name(w)} container {c['name']}"
            for var, source in env_of(c, objs).items():
                from_secret = "secretKeyRef" in (source.get("valueFrom") or {})
                if SECRET_NAME.search(var) and not from_secret and not is_path_setting(var, source.get("value")):
                    problems.append(f"{at}: {var} must come from a secretKeyRef")
                if "value" in source and URL_WITH_CREDENTIALS.search(str(source["value"])):
                    problems.append(f"{at}: {var} is a literal URL with credentials")
                if var == "DRIFTLINE_REGISTRY_DB" and not from_secret and "://" in str(source.get("value", "")):
                    problems.append(f"{at}: a database URL must come from a secretKeyRef")
    return problems


def reference_problems(objs) -> list[str]:
    """Service selectors and ports, PDBs and HPAs: each names something this render has."""
    problems = []
    deployments = of_kind(objs, "Deployment")
    for svc in of_kind(objs, "Service"):
        where = f"Service/{name(svc)}"
        selector = svc["spec"].get("selector") or {}
        matched = [d for d in deployments if selector and selects({"matchLabels": selector}, pod_labels(d))]
        if not matched:
            problems.append(f"{where}: selector {selector} matches no Deployment's pods")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for d in matched:
                if target not in (*ports_of(d), *ports_of(d).values()):
                    problems.append(f"{where}: targetPort {target} is no port of Deployment/{name(d)}")
    budgets = of_kind(objs, "PodDisruptionBudget")
    for pdb in budgets:
        if not any(selects(pdb["spec"]["selector"], pod_labels(d)) for d in deployments):
            problems.append(f"PodDisruptionBudget/{name(pdb)}: selects no Deployment's pods")
    for d in deployments:
        if not any(selects(pdb["spec"]["selector"], pod_labels(d)) for pdb in budgets):
            problems.append(f"Deployment/{name(d)}: no PodDisruptionBudget")
    names = {name(d) for d in deployments}
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in names:
            problems.append(f"HorizontalPodAutoscaler/{name(hpa)}: target {ref} is not in this render")
    maps = set(config_maps(objs))
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            for source in c.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in maps:
                    problems.append(f"{w['kind']}/{name(w)}: envFrom names no ConfigMap of this render")
        for vol in pod_spec(w).get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in maps:
                problems.append(f"{w['kind']}/{name(w)}: volume {vol['name']} names no ConfigMap of this render")
    return problems


def env_problems(objs) -> list[str]:
    problems = []
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            at = f"{w['kind']}/{name(w)} container {c['name']}"
            service = service_of(c)
            if service not in SETTINGS:
                problems.append(f"{at}: runs no Driftline service (python -m services.<name>)")
                continue
            for var in env_of(c, objs):
                if var.startswith("DRIFTLINE_"):
                    if var.upper() not in settings_env_names(service):
                        problems.append(f"{at}: {var} is no field of {SETTINGS[service].__name__}")
                elif var not in PLAIN_ENV:
                    problems.append(f"{at}: {var} is neither a DRIFTLINE_ setting nor allowed ({sorted(PLAIN_ENV)})")
            try:
                isolated_settings(SETTINGS[service], literal_env(c, objs))
            except ValueError as e:  # pydantic's ValidationError
                problems.append(f"{at}: {SETTINGS[service].__name__} rejects the values: {e}")
    return problems


# The services that read the stream catalogue (services/common/streams.py).
STREAM_READERS = ("ingest", "feature", "monitor")


def schema_problems(objs) -> list[str]:
    problems = []
    expected = {p.name: json.loads(p.read_text()) for p in sorted(STREAMS.glob("*.json"))}
    streams = {n: d for n, d in config_maps(objs).items() if n.startswith("driftline-streams")}
    if len(streams) != 1:
        return [f"one driftline-streams ConfigMap expected, found {sorted(streams)}"]
    (cm_name, data), = streams.items()
    if set(data) != set(expected):
        problems.append(f"ConfigMap/{cm_name}: keys {sorted(data)}, but config/streams has {sorted(expected)}")
    for key, text in data.items():
        if key in expected and json.loads(text) != expected[key]:
            problems.append(f"ConfigMap/{cm_name}: {key} differs from config/streams/{key}")
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            if service_of(c) not in STREAM_READERS:
                continue
            at = f"{w['kind']}/{name(w)} container {c['name']}"
            folder = literal_env(c, objs).get("DRIFTLINE_STREAMS_DIR")
            if not folder:
                problems.append(f"{at}: no DRIFTLINE_STREAMS_DIR")
                continue
            volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
            mounted = [volumes.get(m["name"], {}) for m in c.get("volumeMounts", []) if m["mountPath"] == folder]
            if not mounted or (mounted[0].get("configMap") or {}).get("name") != cm_name:
                problems.append(f"{at}: {folder} is not where ConfigMap/{cm_name} is mounted")
    return problems


def network_problems(objs) -> list[str]:
    problems = []
    policies = of_kind(objs, "NetworkPolicy")
    if not any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", [])
               and not p["spec"].get("ingress") for p in policies):
        problems.append("no default-deny ingress NetworkPolicy (podSelector {}, policyTypes [Ingress], no rules)")

    def allowed(w, port_name: str, source) -> bool:
        """Whether some policy lets `source` (a predicate over a `from` peer) reach w's port."""
        for p in policies:
            if not selects(p["spec"]["podSelector"], pod_labels(w)):
                continue
            for rule in p["spec"].get("ingress", []):
                if any(port.get("port") == port_name for port in rule.get("ports", [])) and \
                        any(source(peer) for peer in rule.get("from", [])):
                    return True
        return False

    def prometheus(peer) -> bool:
        ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {})
        pods = (peer.get("podSelector") or {}).get("matchLabels", {})
        return bool(ns) and pods.get("app.kubernetes.io/name") == "prometheus"

    ws = workloads(objs)
    for w in ws:
        if "metrics" in ports_of(w) and not allowed(w, "metrics", prometheus):
            problems.append(f"{w['kind']}/{name(w)}: Prometheus may not scrape its metrics port")
    registries = [d for d in of_kind(objs, "Deployment") if name(d) == "driftline-registry"]
    for w in ws:
        service = service_of(pod_spec(w)["containers"][0])
        same_namespace_pod = lambda peer, w=w: "namespaceSelector" not in peer and \
            peer.get("podSelector") is not None and selects(peer["podSelector"], pod_labels(w))
        for registry in registries:
            reaches = allowed(registry, "grpc", same_namespace_pod)
            if service in REGISTRY_CLIENTS and not reaches:
                problems.append(f"{w['kind']}/{name(w)} dials the registry but may not reach it")
            if service not in REGISTRY_CLIENTS and reaches:
                problems.append(f"{w['kind']}/{name(w)} may reach the registry, which it never calls")
    for p in policies:
        selected = [w for w in ws if selects(p["spec"]["podSelector"], pod_labels(w))]
        for rule in p["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                for w in selected:
                    if port["port"] not in (*ports_of(w), *ports_of(w).values()):
                        problems.append(f"NetworkPolicy/{name(p)}: port {port['port']} is no port of {name(w)}")
    return problems


def gpu_problems(objs, expect_job: bool) -> list[str]:
    problems = []
    gpu = [w for w in workloads(objs) if any("nvidia.com/gpu" in (c.get("resources") or {}).get("limits", {})
                                             for c in pod_spec(w)["containers"])]
    if not expect_job:
        return [f"{w['kind']}/{name(w)}: a GPU outside the gpu-training component" for w in gpu]
    jobs = [w for w in gpu if w["kind"] == "Job" and service_of(pod_spec(w)["containers"][0]) == "trainer"]
    if not jobs:
        return ["no trainer Job with resources.limits nvidia.com/gpu"]
    for job in jobs:
        spec = pod_spec(job)
        if not spec.get("nodeSelector") or not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            problems.append(f"Job/{name(job)}: needs a GPU nodeSelector and the nvidia.com/gpu toleration")
        for c in spec["containers"]:
            if int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0)) < 1:
                problems.append(f"Job/{name(job)}: container {c['name']} requests no GPU")
    return problems


# -- the tests ------------------------------------------------------------------------------------

def test_kustomize_is_the_pinned_build():
    version = subprocess.run([str(kustomize_binary()), "version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == tools.KUSTOMIZE_VERSION


def test_every_overlay_renders_the_whole_platform(objects):
    kinds = {(o["kind"], name(o)) for o in objects}
    for service in SETTINGS:
        assert ("Deployment", f"driftline-{service}") in kinds
        assert ("Service", f"driftline-{service}") in kinds
    assert ("HorizontalPodAutoscaler", "driftline-serving") in kinds
    assert len({o.get("metadata", {}).get("namespace") for o in objects if o["kind"] != "Namespace"}) == 1


def test_builtin_objects_validate_against_kubernetes_openapi(objects):
    assert not openapi_problems(objects), "\n".join(openapi_problems(objects))


def test_keda_objects_are_structurally_sound(objects):
    assert of_kind(objects, "ScaledObject") and of_kind(objects, "TriggerAuthentication")
    assert not (problems := keda_problems(objects)), "\n".join(problems)


def test_every_pod_is_probed_limited_and_unprivileged(objects):
    assert not (problems := workload_problems(objects)), "\n".join(problems)


def test_no_literal_secrets(objects):
    assert not (problems := secret_problems(objects)), "\n".join(problems)


def test_every_pod_is_mtls_authenticated_and_logs_in_as_itself(objects):
    assert not (problems := security_problems(objects)), "\n".join(problems)


def test_no_secret_in_any_file():
    for path in sorted(K8S.rglob("*")):
        if path.is_file():
            text = path.read_text()
            if path.suffix in (".yaml", ".yml"):  # the README may name the setting it never uses
                assert "ALLOW_INSECURE" not in text, f"{path}: DRIFTLINE_ALLOW_INSECURE"
            assert not re.search(r"^\s*kind:\s*Secret\s*$", text, re.M), f"{path}: a Secret object"
            assert "secretGenerator" not in text, f"{path}: a secretGenerator"
            assert not URL_WITH_CREDENTIALS.search(text), f"{path}: a URL with credentials"


def test_services_budgets_and_autoscalers_reference_what_exists(objects):
    assert not (problems := reference_problems(objects)), "\n".join(problems)


def test_env_names_are_settings_fields(objects):
    assert not (problems := env_problems(objects)), "\n".join(problems)


def test_stream_schemas_are_mounted_where_the_streams_folder_points(objects):
    assert not (problems := schema_problems(objects)), "\n".join(problems)


def test_network_policies_allow_exactly_the_flows(objects):
    assert not (problems := network_problems(objects)), "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_only_in_gpu_training(overlay):
    objs = list(_rendered(overlay))
    assert not (problems := gpu_problems(objs, overlay == "gpu-training")), "\n".join(problems)


def test_production_registry_database_comes_from_a_secret():
    registry = next(d for d in _rendered("production") if d["kind"] == "Deployment" and name(d) == "driftline-registry")
    env = {v["name"]: v for v in pod_spec(registry)["containers"][0]["env"]}
    assert env["DRIFTLINE_REGISTRY_DB"]["valueFrom"]["secretKeyRef"] == {"name": "driftline-registry-db", "key": "url"}


# -- the checks fail for a manifest that is wrong ----------------------------------------------------

def _find(objs, kind, obj_name):
    return next(o for o in objs if o["kind"] == kind and name(o) == obj_name)


def _container(objs, deployment):
    return pod_spec(_find(objs, "Deployment", deployment))["containers"][0]


def _unknown_field(objs):
    serving = _find(objs, "Deployment", "driftline-serving")
    pod_spec(serving)["containers"][0]["readinessprobe"] = {"grpc": {"port": 50054}}  # a typo
    return serving


def _wrong_type(objs):
    registry = _find(objs, "Deployment", "driftline-registry")
    registry["spec"]["replicas"] = "one"
    return registry


def _missing_required(objs):
    ingest = _find(objs, "Deployment", "driftline-ingest")
    del pod_spec(ingest)["containers"][0]["name"]
    return ingest


@pytest.mark.parametrize("breaks", [_unknown_field, _wrong_type, _missing_required])
def test_openapi_validation_rejects_a_broken_object(breaks):
    objs = copy.deepcopy(list(_rendered("dev")))
    broken = breaks(objs)
    intact = _find(_rendered("dev"), broken["kind"], name(broken))
    assert kv.validate(copy.deepcopy(intact), KUBERNETES_VERSION, strict=True)  # the break is what fails
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, KUBERNETES_VERSION, strict=True)
    assert openapi_problems([broken])


def _set(path, value):
    def apply(objs):
        kind, obj_name, *keys = path
        target = _find(objs, kind, obj_name)
        for key in keys[:-1]:
            target = target[key]
        if value is None:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return apply


BROKEN = [
    (keda_problems, "wrong consumer group",
     lambda objs: _find(objs, "ScaledObject", "driftline-ingest")["spec"]["triggers"][0]["metadata"].update(
         consumerGroup="driftline-ingester")),
    (keda_problems, "a topic the service does not read",
     lambda objs: _find(objs, "ScaledObject", "driftline-trainer")["spec"]["triggers"][0]["metadata"].update(
         topic="driftline.events")),
    (keda_problems, "a target that does not exist",
     _set(("ScaledObject", "driftline-feature", "spec", "scaleTargetRef", "name"), "driftline-features")),
    (keda_problems, "no lagThreshold",
     lambda objs: _find(objs, "ScaledObject", "driftline-monitor")["spec"]["triggers"][0]["metadata"].pop("lagThreshold")),
    (workload_problems, "no liveness probe", lambda objs: _container(objs, "driftline-feature").pop("livenessProbe")),
    (workload_problems, "an HTTP probe on a gRPC service",
     lambda objs: _container(objs, "driftline-registry").update(readinessProbe={"httpGet": {"port": 9100, "path": "/"}})),
    (workload_problems, "a native grpc probe, which speaks no TLS",
     lambda objs: _container(objs, "driftline-ingest").update(livenessProbe={"grpc": {"port": 50051}})),
    (security_problems, "plaintext Kafka",
     lambda objs: next(cm for cm in of_kind(objs, "ConfigMap") if name(cm).startswith("driftline-config"))[
         "data"].update(DRIFTLINE_KAFKA_SECURITY_PROTOCOL="PLAINTEXT")),
    (security_problems, "another service's certificate",
     lambda objs: next(v for v in pod_spec(_find(objs, "Deployment", "driftline-feature"))["volumes"]
                       if v["name"] == "tls")["secret"].update(secretName="driftline-ingest-tls")),
    (security_problems, "the certificate not mounted",
     lambda objs: _container(objs, "driftline-registry")["volumeMounts"].pop(0)),
    (security_problems, "a caller without its token",
     lambda objs: _container(objs, "driftline-trainer")["env"].remove(
         next(e for e in _container(objs, "driftline-trainer")["env"] if e["name"] == "DRIFTLINE_TOKEN_FILE"))),
    (security_problems, "a token where nothing is called",
     lambda objs: _container(objs, "driftline-ingest")["env"].append(
         {"name": "DRIFTLINE_TOKEN_FILE", "value": "/etc/driftline/auth/public.pem"})),
    (security_problems, "another service's Kafka login",
     lambda objs: next(e for e in _container(objs, "driftline-monitor")["env"]
                       if e["name"] == "DRIFTLINE_KAFKA_SASL_PASSWORD")["valueFrom"]["secretKeyRef"].update(
         name="driftline-ingest-kafka")),
    (security_problems, "a shared S3 account",
     lambda objs: next(e for e in _container(objs, "driftline-serving")["env"]
                       if e["name"] == "DRIFTLINE_S3_SECRET_KEY")["valueFrom"]["secretKeyRef"].update(name="driftline-s3")),
    (security_problems, "mTLS off",
     lambda objs: _container(objs, "driftline-serving")["env"].append({"name": "DRIFTLINE_TLS_CLIENT_AUTH", "value": "false"})),
    (workload_problems, "no limits", lambda objs: _container(objs, "driftline-monitor")["resources"].pop("limits")),
    (workload_problems, "root",
     _set(("Deployment", "driftline-serving", "spec", "template", "spec", "securityContext", "runAsNonRoot"), None)),
    (secret_problems, "a literal secret",
     lambda objs: _container(objs, "driftline-trainer")["env"].append(
         {"name": "DRIFTLINE_S3_SECRET_KEY", "value": "hunter2"})),
    (secret_problems, "a database URL with its password",
     lambda objs: _container(objs, "driftline-registry")["env"].append(
         {"name": "DRIFTLINE_REGISTRY_DB", "value": "postgresql://driftline:hunter2@db/registry"})),
    (env_problems, "a setting that does not exist",
     lambda objs: _container(objs, "driftline-ingest")["env"].append({"name": "DRIFTLINE_INGEST_GROUP", "value": "x"})),
    (env_problems, "another service's setting",
     lambda objs: _container(objs, "driftline-ingest")["env"].append({"name": "DRIFTLINE_ALIAS", "value": "canary"})),
    (env_problems, "a value the setting rejects",
     lambda objs: _container(objs, "driftline-serving")["env"].append(
         {"name": "DRIFTLINE_MAX_BATCH_ROWS", "value": "many"})),
    (reference_problems, "a Service selecting nothing",
     _set(("Service", "driftline-serving", "spec", "selector"), {"app.kubernetes.io/name": "driftline-serve"})),
    (reference_problems, "an HPA target that does not exist",
     _set(("HorizontalPodAutoscaler", "driftline-serving", "spec", "scaleTargetRef", "name"), "serving")),
    (schema_problems, "the streams folder outside the mount",
     lambda objs: next(e for e in _container(objs, "driftline-feature")["env"]
                       if e["name"] == "DRIFTLINE_STREAMS_DIR").update(value="/etc/driftline")),
    (schema_problems, "a stream reader without the streams",
     lambda objs: _container(objs, "driftline-monitor")["env"].remove(
         next(e for e in _container(objs, "driftline-monitor")["env"] if e["name"] == "DRIFTLINE_STREAMS_DIR"))),
    (network_problems, "no default deny", lambda objs: objs.remove(_find(objs, "NetworkPolicy", "default-deny-ingress"))),
    (network_problems, "a registry caller cut off",
     _set(("NetworkPolicy", "driftline-registry-grpc", "spec", "ingress", 0, "from", 0, "podSelector",
           "matchExpressions", 0, "values"), ["driftline-serving", "driftline-monitor"])),
]


@pytest.mark.parametrize("check,what,breaks", BROKEN, ids=[what for _, what, _ in BROKEN])
def test_checks_catch_a_broken_manifest(check, what, breaks):
    objs = copy.deepcopy(list(_rendered("dev")))
    assert not check(objs), f"the dev render already fails {check.__name__}"
    breaks(objs)
    assert check(objs), f"{check.__name__} missed: {what}"
