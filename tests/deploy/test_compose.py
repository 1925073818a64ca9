"""docker-compose.yml, the Dockerfile, Prometheus' scrape list and the Grafana dashboards,
checked without a Docker engine; and, only where an engine answers, the stack brought up and
asked for a prediction.

`compose_problems` reads the compose file as data (PyYAML) and says, one line each, what would
keep `docker compose up` from working: an address whose host is no compose service or whose
port is not the one that service listens on, a DRIFTLINE_* variable that is no field of the
service's settings (a typo is silently ignored by pydantic), an undeclared named volume, a
service without a health check or dialing one it does not wait for, a service nothing uses, a
literal secret, anonymous admin access to Grafana, or a Kafka of another major version than the
local stack's and the testcontainers fixture's. test_the_checker_finds_what_is_broken feeds it
deliberately broken copies, so a checker that finds nothing cannot pass.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml  # PyYAML (a dev dependency): compose, Prometheus and Grafana provisioning files are YAML

from driftline_services import ENV_PREFIX, SERVICES, service_module, settings_class, settings_env_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
CONFTEST = ROOT / "tests" / "conftest.py"

# Environment variables that name another service: host:port (or scheme://host:port).
ADDRESS_VARS = re.compile(r"^DRIFTLINE_(\w+_ADDRESS|KAFKA_BOOTSTRAP|S3_ENDPOINT)$")
# Environment variables that hold a credential: only `${VAR:?message}` is allowed as their value.
SECRET_VARS = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|CREDENTIAL|MINIO_ROOT_USER|API_KEY")
REQUIRED_FROM_ENV = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")
# Services no other service dials, that people open (so "used" although nothing names them).
USER_FACING = {"grafana"}
LAG = "driftline_kafka_consumer_lag"


# -- reading the files --------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def environment(spec: dict) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def driftline_service(spec: dict) -> str | None:
    """`ingest` for a service whose command is `python -m services.ingest`; None otherwise."""
    command = spec.get("command") or []
    name = service_module(command.split() if isinstance(command, str) else [str(c) for c in command])
    return name if name in SERVICES else None


def grpc_port(service: str, env: dict[str, str]) -> int:
    """The port the service's gRPC server listens on: DRIFTLINE_GRPC_PORT, else its settings' default."""
    return int(env.get("DRIFTLINE_GRPC_PORT") or settings_class(service).model_fields["grpc_port"].default)


def metrics_port(service: str, env: dict[str, str]) -> int:
    return int(env.get("DRIFTLINE_METRICS_PORT") or settings_class(service).model_fields["metrics_port"].default)


def split_address(value: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"(?:[a-z][a-z0-9+.-]*://)?([^:/\s]+):(\d+)(?:/.*)?", value.strip())
    return (match.group(1), int(match.group(2))) if match else None


def listening_ports(spec: dict) -> set[int]:
    """Container ports an infrastructure service listens on, as far as its definition says:
    its `ports` (container side) and `expose`, Kafka's KAFKA_LISTENERS, and --address options."""
    ports: set[int] = set()
    for entry in spec.get("ports") or []:
        target = entry.get("target") if isinstance(entry, dict) else str(entry).split("/")[0].split(":")[-1]
        ports.add(int(target))
    ports |= {int(p) for p in spec.get("expose") or []}
    ports |= {int(p) for p in re.findall(r"://[^:,]*:(\d+)", environment(spec).get("KAFKA_LISTENERS", ""))}
    command = spec.get("command") or ""
    command = command if isinstance(command, str) else " ".join(map(str, command))
    ports |= {int(p) for p in re.findall(r"--(?:console-)?address[= ]\S*:(\d+)", command)}
    if "minio" in str(spec.get("image", "")) and "--address" not in command:
        ports.add(9000)  # `minio server` listens on :9000 unless told otherwise
    return ports


def named_volumes(spec: dict) -> list[str]:
    names = []
    for entry in spec.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume" and entry.get("source"):
                names.append(entry["source"])
        else:
            source = str(entry).split(":")[0]
            if ":" in str(entry) and not source.startswith((".", "/", "~", "$")):
                names.append(source)
    return names


def depends_on(spec: dict) -> dict[str, str]:
    """{service: condition}; the short list form means service_started."""
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def kafka_major(image: str) -> int | None:
    """Apache Kafka's major version in a Kafka image; Confluent Platform X.Y is Apache Kafka (X-4).Y.

    >>> kafka_major("apache/kafka:4.4.0"), kafka_major("confluentinc/cp-kafka:7.9.0"), kafka_major("redis:7")
    (4, 3, None)
    """
    match = re.fullmatch(r"(?:docker\.io/)?(apache/kafka(?:-native)?|confluentinc/cp-kafka):(\d+)\.\S*", image)
    if not match:
        return None
    major = int(match.group(2))
    return major - 4 if match.group(1) == "confluentinc/cp-kafka" else major


def devstack_kafka_version() -> str:
    from services.devstack import kafka

    return kafka.KAFKA_VERSION


def fixture_kafka_images(conftest: Path = CONFTEST) -> list[str]:
    """The Kafka images the kafka_bootstrap fixture of tests/conftest.py starts (read, not run)."""
    source = conftest.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "kafka_bootstrap":
            body = ast.get_source_segment(source, node)
            return re.findall(r"(?:apache/kafka(?:-native)?|confluentinc/cp-kafka):[\w.-]+", body)
    return []


def prometheus_config(path: Path = PROMETHEUS) -> dict:
    return yaml.safe_load(path.read_text())


def prometheus_targets(path: Path = PROMETHEUS) -> set[str]:
    config = yaml.safe_load(path.read_text())
    return {t for job in config.get("scrape_configs") or [] for sc in job.get("static_configs") or []
            for t in sc.get("targets") or []}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest)))
    return env


def healthcheck_target(spec: dict) -> list[str] | None:
    """The arguments of `python -m services.common.healthcheck …` in a service's health check."""
    test = (spec.get("healthcheck") or {}).get("test")
    words = test.split() if isinstance(test, str) else [str(w) for w in test or []]
    if "services.common.healthcheck" in words:
        return words[words.index("services.common.healthcheck") + 1:]
    return None


def mounted_secrets(spec: dict) -> dict[str, str]:
    """{secret: path in the container} of a service's `secrets:` (short or long syntax)."""
    found = {}
    for entry in spec.get("secrets") or []:
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        found[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return found


def interpolations(text: str) -> list[str]:
    """Every ${…} of a compose file's text ($$ escapes one)."""
    return re.findall(r"(?<!\$)\$\{[^}]*\}", text)


# -- the security checks ------------------------------------------------------------------------------

# What every Driftline service must be given: (setting, the value it must have or None for "a
# mounted secret file").
TLS_FILES = ("DRIFTLINE_TLS_CERT_FILE", "DRIFTLINE_TLS_KEY_FILE", "DRIFTLINE_TLS_CA_FILE",
             "DRIFTLINE_AUTH_PUBLIC_KEY_FILE")
KAFKA_LOGIN = {"DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "DRIFTLINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}


def security_problems(service: str, env: dict[str, str], mounted: dict[str, str]) -> list[str]:
    """What keeps one Driftline service of compose from being TLS, authenticated and SASL_SSL."""
    from services.common.auth import SERVICE_ROLES

    problems = []
    files = set(mounted.values())
    for key in TLS_FILES:
        if env.get(key) not in files:
            problems.append(f"{key} is not a file mounted from a secret ({env.get(key)!r})")
    if env.get("DRIFTLINE_TLS_CLIENT_AUTH", "").lower() != "true":
        problems.append("DRIFTLINE_TLS_CLIENT_AUTH is not true (mTLS between the services)")
    for key in [k for k, v in mounted.items() if v == env.get("DRIFTLINE_TLS_CERT_FILE")]:
        if key != f"{service}-cert":
            problems.append(f"its certificate is the secret {key!r}, not {service}-cert (its own)")
    calls = service in SERVICE_ROLES
    if calls and env.get("DRIFTLINE_TOKEN_FILE") != mounted.get(f"{service}-token"):
        problems.append(f"it calls other services but DRIFTLINE_TOKEN_FILE is not its own secret {service}-token")
    if not calls and ("DRIFTLINE_TOKEN_FILE" in env or "DRIFTLINE_TOKEN" in env):
        problems.append("it calls no service, so it needs no token (services/common/auth.py SERVICE_ROLES)")
    for key, value in KAFKA_LOGIN.items():
        if env.get(key) != value:
            problems.append(f"{key} is {env.get(key)!r}, not {value}")
    if env.get("DRIFTLINE_KAFKA_SSL_CA_FILE") not in files:
        problems.append("DRIFTLINE_KAFKA_SSL_CA_FILE is not a file mounted from a secret")
    if env.get("DRIFTLINE_KAFKA_SASL_USERNAME") != service:
        problems.append(f"DRIFTLINE_KAFKA_SASL_USERNAME is {env.get('DRIFTLINE_KAFKA_SASL_USERNAME')!r}, "
                        f"not its own principal {service!r} (services/common/kafka_acls.py)")
    if not REQUIRED_FROM_ENV.match(env.get("DRIFTLINE_KAFKA_SASL_PASSWORD", "")):
        problems.append("DRIFTLINE_KAFKA_SASL_PASSWORD is not ${VAR:?message}")
    if "DRIFTLINE_S3_ENDPOINT" in env:
        if env.get("DRIFTLINE_S3_SECURE", "").lower() != "true" or env.get("DRIFTLINE_S3_CA_FILE") not in files:
            problems.append("S3 without TLS (DRIFTLINE_S3_SECURE=true and DRIFTLINE_S3_CA_FILE from a secret)")
        for key in ("DRIFTLINE_S3_ACCESS_KEY", "DRIFTLINE_S3_SECRET_KEY"):
            if not REQUIRED_FROM_ENV.match(env.get(key, "")):
                problems.append(f"{key} is not ${{VAR:?message}}")
    return problems


def sharing_problems(envs: dict[str, dict[str, str]]) -> list[str]:
    """Credentials that two services share: each has its own Kafka password and S3 account."""
    problems, seen = [], {}
    for name, env in envs.items():
        for key in ("DRIFTLINE_KAFKA_SASL_PASSWORD", "DRIFTLINE_S3_ACCESS_KEY", "DRIFTLINE_S3_SECRET_KEY"):
            value = env.get(key)
            if value and (key, value) in seen:
                problems.append(f"{name}: {key} is {seen[key, value]}'s too ({value})")
            seen.setdefault((key, value), name)
    return problems


def kafka_broker_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, spec in services.items():
        if kafka_major(str(spec.get("image", ""))) is None:
            continue
        protocols = environment(spec).get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "")
        plain = [p for p in protocols.split(",") if p.split(":")[-1] in ("PLAINTEXT", "SASL_PLAINTEXT")]
        if not protocols or plain:
            problems.append(f"{name}: a listener without TLS ({plain or 'no KAFKA_LISTENER_SECURITY_PROTOCOL_MAP'})")
        if {"kafka-cert", "kafka-key", "ca"} - set(mounted_secrets(spec)):
            problems.append(f"{name}: its keystore (kafka-cert, kafka-key) and the CA are not mounted from secrets")
    return problems


def minio_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, spec in services.items():
        command = spec.get("command") or ""
        command = command if isinstance(command, str) else " ".join(map(str, command))
        if "minio" not in str(spec.get("image", "")) or not command.startswith("server"):
            continue
        certs = re.search(r"--certs-dir[= ](\S+)", command)
        paths = set(mounted_secrets(spec).values())
        if not certs or {f"{certs.group(1)}/public.crt", f"{certs.group(1)}/private.key"} - paths:
            problems.append(f"{name}: MinIO without TLS (--certs-dir with public.crt and private.key from secrets)")
    return problems


def secret_file_problems(compose: dict) -> list[str]:
    """Secrets used but not declared, and declared ones not read from an environment-named path."""
    problems = []
    declared = compose.get("secrets") or {}
    for name, spec in declared.items():
        if not re.match(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}/", str((spec or {}).get("file", ""))):
            problems.append(f"secret {name}: its file is not under ${{VAR:?message}}/ ({spec})")
    for service, spec in (compose.get("services") or {}).items():
        for secret in mounted_secrets(spec):
            if secret not in declared:
                problems.append(f"{service}: secret {secret!r} is not declared under `secrets:`")
    return problems


def interpolation_problems(text: str) -> list[str]:
    """Any ${VAR} without a :? message: a default would be a silent fallback, a bare one empty."""
    return [f"{found}: every ${{VAR}} needs a :? message (no defaults)"
            for found in interpolations(text) if not REQUIRED_FROM_ENV.match(found)]


# -- the checker --------------------------------------------------------------------------------------


def compose_problems(compose: dict, *, kafka_majors: dict[str, int | None] | None = None,
                     prometheus: set[str] | None = None, image_env: dict[str, str] | None = None,
                     prometheus_config: dict | None = None) -> list[str]:
    """Everything that keeps this compose file from working, one line each ([] when nothing)."""
    services: dict[str, dict] = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    problems: list[str] = []
    dialed: dict[str, set[str]] = {name: set() for name in services}  # service -> who dials it
    image_env = dockerfile_env() if image_env is None else image_env
    # Init steps (restart "no", waited for with service_completed_successfully): they exit when done.
    one_shot = {dep for spec in services.values() for dep, condition in depends_on(spec).items()
                if condition == "service_completed_successfully"
                and str((services.get(dep) or {}).get("restart", "")) == "no"}
    problems += secret_file_problems(compose)

    for name, spec in services.items():
        env = environment(spec)
        ours = driftline_service(spec)
        mounted = mounted_secrets(spec)

        test = (spec.get("healthcheck") or {}).get("test")
        if name in one_shot:
            if test:
                problems.append(f"{name}: a one-shot init step has no health to check")
        elif not test or spec["healthcheck"].get("disable") or (isinstance(test, list) and test[:1] == ["NONE"]):
            problems.append(f"{name}: no healthcheck")

        for volume in named_volumes(spec):
            if volume not in declared_volumes:
                problems.append(f"{name}: volume {volume!r} is not declared under `volumes:`")

        for key, value in env.items():
            if not SECRET_VARS.search(key):
                continue
            if key.endswith("_FILE"):  # a path, to a file compose mounts from a secret
                if value not in mounted.values():
                    problems.append(f"{name}: {key}={value!r} is not a secret mounted in the container "
                                    f"({sorted(mounted.values())})")
            elif not REQUIRED_FROM_ENV.match(value):
                problems.append(f"{name}: {key} must come from the environment as ${{VAR:?message}}, "
                                f"not {value!r}")
        if "grafana" in str(spec.get("image", "")):
            anonymous = env.get("GF_AUTH_ANONYMOUS_ENABLED", "false").lower() in ("true", "1", "yes")
            role = env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer")
            if anonymous and role != "Viewer":
                problems.append(f"{name}: anonymous Grafana users get role {role!r} (Viewer at most)")
            if not env.get("GF_SECURITY_ADMIN_PASSWORD"):
                problems.append(f"{name}: GF_SECURITY_ADMIN_PASSWORD is not set (Grafana's default is admin/admin)")

        for key, value in env.items():
            if not ADDRESS_VARS.match(key):
                continue
            address = split_address(value)
            if address is None:
                problems.append(f"{name}: {key}={value!r} is not host:port")
                continue
            host, port = address
            if host not in services:
                problems.append(f"{name}: {key} names host {host!r}, which is no compose service")
                continue
            dialed[host].add(name)
            target = services[host]
            target_ours = driftline_service(target)
            listens = ({grpc_port(target_ours, environment(target))} if target_ours
                       else listening_ports(target))
            if port not in listens:
                problems.append(f"{name}: {key} dials {host}:{port}, but {host} listens on "
                                f"{sorted(listens) or 'no known port'}")
            if host != name and depends_on(spec).get(host) != "service_healthy":
                problems.append(f"{name}: dials {host} but does not wait for it "
                                f"(depends_on: {host}: condition: service_healthy)")

        for dependency in depends_on(spec):
            if dependency not in services:
                problems.append(f"{name}: depends_on {dependency!r}, which is no compose service")
            else:
                dialed[dependency].add(name)

        if ours is None:
            continue
        problems += [f"{name}: {p}" for p in security_problems(ours, env, mounted)]
        known = settings_env_names(ours)
        for key in env:
            if key.upper().startswith(ENV_PREFIX) and key.upper() not in known:
                problems.append(f"{name}: {key} is no field of {settings_class(ours).__name__} (ignored if set)")
        effective = {**image_env, **env}
        for host_var in ("DRIFTLINE_GRPC_HOST", "DRIFTLINE_METRICS_HOST"):
            if effective.get(host_var) not in ("0.0.0.0", "::"):
                problems.append(f"{name}: {host_var} is {effective.get(host_var, 'loopback (the default)')!r}: "
                                "other containers cannot reach it")
        if ours == "monitor" and int(env.get("DRIFTLINE_DASHBOARD_PORT", "8055") or 0) \
                and effective.get("DRIFTLINE_DASHBOARD_HOST") not in ("0.0.0.0", "::"):
            problems.append(f"{name}: DRIFTLINE_DASHBOARD_HOST is not 0.0.0.0: the published dashboard is unreachable")
        metrics = metrics_port(ours, env)
        if not metrics:
            problems.append(f"{name}: DRIFTLINE_METRICS_PORT is 0 (no metrics endpoint to scrape)")
        elif prometheus is not None and f"{name}:{metrics}" not in prometheus:
            problems.append(f"{name}: Prometheus does not scrape {name}:{metrics} (deploy/prometheus/prometheus.yml)")
        probe = healthcheck_target(spec)
        grpc = grpc_port(ours, env)
        probed = split_address(probe[0]) if probe else None
        if probe is None:
            problems.append(f"{name}: its healthcheck is not python -m services.common.healthcheck")
        elif grpc and (probed is None or probed[1] != grpc):
            problems.append(f"{name}: its healthcheck probes {probe[:1]}, not its gRPC port {grpc}")
        elif not grpc and (probed is None or probed[1] != metrics):
            problems.append(f"{name}: no gRPC server, so its healthcheck must probe its metrics port {metrics}")

    for name, spec in services.items():
        if driftline_service(spec) is None and name not in USER_FACING and not dialed[name]:
            problems.append(f"{name}: nothing uses it (no service dials it or depends on it)")

    problems += kafka_broker_problems(services) + minio_problems(services)
    problems += sharing_problems({n: environment(s) for n, s in services.items() if driftline_service(s)})
    if prometheus_config is not None:
        scraper = next((s for s in services.values() if "prometheus" in str(s.get("image", ""))), {})
        for job in prometheus_config.get("scrape_configs") or []:
            token = (job.get("authorization") or {}).get("credentials_file")
            if token not in mounted_secrets(scraper).values():
                problems.append(f"prometheus: job {job.get('job_name')} scrapes without a token file "
                                "mounted from a secret (authorization: credentials_file)")

    majors = dict(kafka_majors or {})
    for name, spec in services.items():
        major = kafka_major(str(spec.get("image", "")))
        if major is not None:
            majors[f"compose {name} ({spec['image']})"] = major
    if len(set(majors.values())) > 1:
        problems.append(f"Kafka major versions differ: {majors}")
    return problems


def repository_kafka_majors() -> dict[str, int | None]:
    majors = {f"local stack (services/devstack/kafka.py {devstack_kafka_version()})":
              int(devstack_kafka_version().split(".")[0])}
    for image in fixture_kafka_images():
        majors[f"testcontainers fixture ({image})"] = kafka_major(image)
    return majors


# -- the compose file, statically ---------------------------------------------------------------------


def test_the_compose_file_has_no_problems():
    compose = load_compose()
    problems = compose_problems(compose, kafka_majors=repository_kafka_majors(),
                                prometheus=prometheus_targets(), prometheus_config=prometheus_config())
    assert problems == [], "\n".join(problems)
    ours = {driftline_service(spec) for spec in compose["services"].values()} - {None}
    assert ours == set(SERVICES), f"compose runs {sorted(ours)}"


def test_one_kafka_major_version_everywhere():
    images = fixture_kafka_images()
    assert images, "tests/conftest.py's kafka_bootstrap starts no Kafka image this test recognises"
    compose_images = [s["image"] for s in load_compose()["services"].values() if kafka_major(str(s.get("image", "")))]
    assert compose_images == [f"apache/kafka:{devstack_kafka_version()}"], compose_images
    majors = repository_kafka_majors()
    assert len(set(majors.values())) == 1 and None not in majors.values(), majors


def test_no_secret_has_a_value_in_the_file():
    """The devstack's well-known defaults and the old literals appear nowhere in the file."""
    from services.devstack import config

    text = COMPOSE.read_text()
    for literal in {config.DEFAULT_S3_SECRET_KEY, "driftline-secret", "POSTGRES_PASSWORD", "admin123"}:
        assert literal not in text, literal
    assert "ALLOW_INSECURE" not in text
    assert interpolation_problems(text) == []
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    from services.common.kafka_acls import PRINCIPALS

    accounts = {name for name, spec in load_compose()["services"].items() if "DRIFTLINE_S3_ENDPOINT" in environment(spec)}
    assert accounts == set(SERVICES) - {"ingest"}, accounts
    expected = ({f"DRIFTLINE_KAFKA_{p.upper()}_PASSWORD" for p in ("admin", *PRINCIPALS)}
                | {f"DRIFTLINE_S3_{s.upper()}_{k}" for s in accounts for k in ("ACCESS_KEY", "SECRET_KEY")}
                | {"DRIFTLINE_CERTS_DIR", "DRIFTLINE_AUTH_DIR", "DRIFTLINE_TOKENS_DIR", "DRIFTLINE_MINIO_ROOT_USER",
                   "DRIFTLINE_MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD"})
    assert required == expected, (sorted(required - expected), sorted(expected - required))


def test_interpolations_without_a_message_are_found():
    assert interpolation_problems("a: ${X:?set X}\nb: $${NOT_ONE}\n") == []
    assert len(interpolation_problems("a: ${X:-default}\nb: ${Y}\nc: ${Z?}\n")) == 3


def test_the_image_runs_as_a_user_with_writable_volumes_and_wildcard_binds():
    instructions = dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    env = dockerfile_env()
    for var in ("DRIFTLINE_GRPC_HOST", "DRIFTLINE_METRICS_HOST", "DRIFTLINE_DASHBOARD_HOST"):
        assert env.get(var) == "0.0.0.0", var
    for var in env:  # the image sets only real settings (of some service)
        if var.startswith(ENV_PREFIX):
            assert any(var in settings_env_names(s) for s in SERVICES), var
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    # Every path the services mount a volume at exists in the image and is chowned to its user,
    # so a fresh named volume starts writable for it (Docker copies the mount point's owner).
    for name, spec in load_compose()["services"].items():
        if driftline_service(spec) is None:
            continue
        for entry in spec.get("volumes") or []:
            path = str(entry).split(":")[1]
            assert path.startswith("/var/lib/driftline/") and path in runs, (name, path)
    assert "chown -R driftline:driftline /var/lib/driftline" in runs
    assert env.get("DRIFTLINE_REGISTRY_DB", "").startswith("/var/lib/driftline/registry/")


@pytest.mark.parametrize("break_it, complaint", [
    (lambda c: c["services"]["serving"]["environment"].update(DRIFTLINE_REGISTRY_ADDRESS="registy:50053"),
     "serving: DRIFTLINE_REGISTRY_ADDRESS names host 'registy', which is no compose service"),
    (lambda c: c["services"]["monitor"]["environment"].update(DRIFTLINE_REGISTRY_ADDRESS="registry:50099"),
     "monitor: DRIFTLINE_REGISTRY_ADDRESS dials registry:50099, but registry listens on [50053]"),
    (lambda c: c["services"]["trainer"]["environment"].update(DRIFTLINE_KAFKA_BOOTSTRAP="kafka:9999"),
     "trainer: DRIFTLINE_KAFKA_BOOTSTRAP dials kafka:9999"),
    (lambda c: c["services"]["ingest"]["environment"].update(DRIFTLINE_INGEST_GROUPID="x"),
     "ingest: DRIFTLINE_INGEST_GROUPID is no field of IngestSettings"),
    (lambda c: c["services"]["feature"].pop("healthcheck"), "feature: no healthcheck"),
    (lambda c: c["services"]["registry"]["volumes"].append("registry-backup:/backup"),
     "registry: volume 'registry-backup' is not declared"),
    (lambda c: c["services"]["minio"]["environment"].update(MINIO_ROOT_PASSWORD="hunter2hunter2"),
     "minio: MINIO_ROOT_PASSWORD must come from the environment"),
    (lambda c: c["services"]["registry"]["environment"].update(
        DRIFTLINE_S3_SECRET_KEY="${DRIFTLINE_S3_SECRET_KEY:-driftline-secret}"),
     "registry: DRIFTLINE_S3_SECRET_KEY must come from the environment"),
    (lambda c: c["services"]["grafana"]["environment"].update(
        GF_AUTH_ANONYMOUS_ENABLED="true", GF_AUTH_ANONYMOUS_ORG_ROLE="Admin"),
     "grafana: anonymous Grafana users get role 'Admin'"),
    (lambda c: c["services"]["kafka"].update(image="apache/kafka:3.9.1"), "Kafka major versions differ"),
    (lambda c: c["services"].update(postgres={"image": "postgres:17", "healthcheck": {"test": ["CMD", "true"]}}),
     "postgres: nothing uses it"),
    (lambda c: c["services"]["serving"].update(depends_on={"kafka": {"condition": "service_healthy"},
                                                           "minio": {"condition": "service_healthy"}}),
     "serving: dials registry but does not wait for it"),
    (lambda c: c["services"]["serving"]["environment"].update(DRIFTLINE_METRICS_PORT="9200"),
     "serving: Prometheus does not scrape serving:9200"),
    (lambda c: c["services"]["serving"]["healthcheck"].update(
        test=["CMD", "python", "-m", "services.common.healthcheck", "127.0.0.1:50053"]),
     "serving: its healthcheck probes ['127.0.0.1:50053'], not its gRPC port 50054"),
    (lambda c: c["services"]["ingest"]["environment"].update(DRIFTLINE_GRPC_HOST="127.0.0.1"),
     "ingest: DRIFTLINE_GRPC_HOST is '127.0.0.1'"),
    # Security: TLS, tokens, Kafka SASL_SSL, S3 accounts, all from secrets.
    (lambda c: c["services"]["registry"]["environment"].pop("DRIFTLINE_TLS_CERT_FILE"),
     "registry: DRIFTLINE_TLS_CERT_FILE is not a file mounted from a secret"),
    (lambda c: c["services"]["serving"]["environment"].update(DRIFTLINE_TLS_CLIENT_AUTH="false"),
     "serving: DRIFTLINE_TLS_CLIENT_AUTH is not true"),
    (lambda c: c["services"]["feature"]["secrets"].__setitem__(1, {"source": "ingest-cert", "target": "tls.pem"}),
     "feature: its certificate is the secret 'ingest-cert'"),
    (lambda c: c["services"]["monitor"]["secrets"].pop(),
     "monitor: DRIFTLINE_TOKEN_FILE='/run/secrets/token' is not a secret mounted in the container"),
    (lambda c: c["services"]["trainer"]["environment"].pop("DRIFTLINE_TOKEN_FILE"),
     "trainer: it calls other services but DRIFTLINE_TOKEN_FILE is not its own secret trainer-token"),
    (lambda c: c["services"]["ingest"]["environment"].update(DRIFTLINE_TOKEN_FILE="/run/secrets/token"),
     "ingest: it calls no service, so it needs no token"),
    (lambda c: c["services"]["registry"]["secrets"].pop(3),
     "registry: DRIFTLINE_AUTH_PUBLIC_KEY_FILE is not a file mounted from a secret"),
    (lambda c: c["services"]["ingest"]["environment"].update(DRIFTLINE_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"),
     "ingest: DRIFTLINE_KAFKA_SECURITY_PROTOCOL is 'PLAINTEXT', not SASL_SSL"),
    (lambda c: c["services"]["feature"]["environment"].update(DRIFTLINE_KAFKA_SASL_USERNAME="admin"),
     "feature: DRIFTLINE_KAFKA_SASL_USERNAME is 'admin', not its own principal 'feature'"),
    (lambda c: c["services"]["monitor"]["environment"].update(DRIFTLINE_KAFKA_SASL_PASSWORD="hunter2"),
     "monitor: DRIFTLINE_KAFKA_SASL_PASSWORD must come from the environment"),
    (lambda c: c["services"]["serving"]["environment"].update(
        DRIFTLINE_S3_ACCESS_KEY=c["services"]["trainer"]["environment"]["DRIFTLINE_S3_ACCESS_KEY"]),
     "DRIFTLINE_S3_ACCESS_KEY is trainer's too"),
    (lambda c: c["services"]["registry"]["environment"].update(DRIFTLINE_S3_SECURE="false"),
     "registry: S3 without TLS"),
    (lambda c: c["services"]["kafka"]["environment"].update(
        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="SASL_SSL:SASL_SSL,CONTROLLER:SSL,HOST:PLAINTEXT"),
     "kafka: a listener without TLS (['HOST:PLAINTEXT'])"),
    (lambda c: c["services"]["minio"].update(command="server /data --console-address :9001"),
     "minio: MinIO without TLS"),
    (lambda c: c["secrets"]["ca"].update(file="./certs/ca.pem"), "secret ca: its file is not under ${VAR:?message}/"),
    (lambda c: c["secrets"].pop("serving-token"), "serving: secret 'serving-token' is not declared"),
    (lambda c: c["services"]["kafka-init"].update(healthcheck={"test": ["CMD", "true"]}),
     "kafka-init: a one-shot init step has no health to check"),
])
def test_the_checker_finds_what_is_broken(break_it, complaint):
    compose = copy.deepcopy(load_compose())
    kwargs = dict(kafka_majors=repository_kafka_majors(), prometheus=prometheus_targets(),
                  prometheus_config=prometheus_config())
    assert compose_problems(copy.deepcopy(compose), **kwargs) == []
    break_it(compose)
    problems = compose_problems(compose, **kwargs)
    assert any(complaint in p for p in problems), problems


def test_prometheus_without_its_token_is_found():
    config = prometheus_config()
    config["scrape_configs"][0].pop("authorization")
    problems = compose_problems(load_compose(), prometheus=prometheus_targets(), prometheus_config=config)
    assert problems == ["prometheus: job ingest scrapes without a token file mounted from a secret "
                        "(authorization: credentials_file)"], problems


def test_a_broken_fixture_kafka_is_found(tmp_path):
    conftest = tmp_path / "conftest.py"
    conftest.write_text('def kafka_bootstrap(request):\n    KafkaContainer("confluentinc/cp-kafka:7.9.0")\n')
    majors = {f"fixture {i}": kafka_major(i) for i in fixture_kafka_images(conftest)}
    assert majors == {"fixture confluentinc/cp-kafka:7.9.0": 3}
    assert "Kafka major versions differ" in " ".join(compose_problems(load_compose(), kafka_majors=majors))


# -- Prometheus and Grafana ---------------------------------------------------------------------------


def load_generator():
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache  # two tests read it; parsing every module of services/ once is enough
def exported_metrics() -> dict[str, tuple[str, list[str]]]:
    """Every series name services/ exports: each Counter/Gauge/Histogram/Summary constructed with
    a literal name (read from the source, so no service is imported), with its type and labels."""
    kinds = {"Counter", "Gauge", "Histogram", "Summary"}
    found: dict[str, tuple[str, list[str]]] = {}
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func not in kinds or not isinstance(node.args[0].value, str):
                continue
            labels_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), None)
            labels = ([e.value for e in labels_node.elts if isinstance(e, ast.Constant)]
                      if isinstance(labels_node, (ast.List, ast.Tuple)) else [])
            name = node.args[0].value
            if func == "Counter":
                base = name.removesuffix("_total")
                series = [f"{base}_total", f"{base}_created"]
            elif func in ("Histogram", "Summary"):
                series = [name, f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"]
            else:
                series = [name]
            for s in series:
                found[s] = (func, labels)
    return found


def test_prometheus_scrapes_every_service_by_its_name():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]}
    compose = load_compose()["services"]
    for service in SERVICES:
        port = metrics_port(service, environment(compose[service]))
        assert jobs.get(service) == [f"{service}:{port}"], (service, jobs)


def test_the_grafana_dashboards_are_what_the_generator_writes():
    generator = load_generator()
    assert set(generator.DASHBOARDS) == {"driftline-platform.json", "driftline-monitor.json"}
    for name, builder in generator.DASHBOARDS.items():
        committed = (GRAFANA / name).read_text()
        assert committed == generator.render(builder), f"run python deploy/grafana/build_dashboard.py ({name})"
        assert json.loads(committed)["uid"]


def test_the_grafana_platform_dashboard_reads_only_exported_metrics_and_covers_the_platform():
    dashboard = load_generator().build_platform()
    text = json.dumps(dashboard)
    used = set(re.findall(r"driftline_[a-z0-9_]+", text)) - {"driftline-prometheus"}
    exported = set(exported_metrics())
    missing = used - exported - {LAG}
    assert not missing, f"the dashboard reads metrics no service exports: {sorted(missing)}"
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for service in SERVICES:  # every service's own metrics appear
        assert f"driftline_{service}_" in exprs, service
    for needle in ("driftline_serving_request_duration_seconds_bucket", "histogram_quantile(0.99",
                   "driftline_serving_batch_size_rows", "driftline_serving_model_version", "provider",
                   "driftline_monitor_feature_ks", "driftline_monitor_error_cusum", LAG,
                   "driftline_grpc_requests_total"):
        assert needle in exprs, needle
    provisioning = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "driftline.yml").read_text())
    grafana = load_compose()["services"]["grafana"]
    mounted = {str(v).split(":")[1] for v in grafana["volumes"] if str(v).startswith("./deploy/grafana:")}
    assert {p["options"]["path"] for p in provisioning["providers"]} <= mounted, (provisioning, mounted)
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = datasource["datasources"][0]["url"]
    host, port = split_address(url)
    assert host == "prometheus" and port in listening_ports(load_compose()["services"]["prometheus"]), url


def test_the_consumer_lag_panel_reads_the_gauge_services_common_exports():
    """The lag panels read driftline_kafka_consumer_lag{group, topic, partition}, which
    services/common exports from librdkafka's statistics (tests/common/test_kafka.py checks its value)."""
    exported = exported_metrics()
    assert LAG in exported, f"services/common does not export {LAG}: the dashboard's lag panels stay empty"
    kind, labels = exported[LAG]
    assert kind == "Gauge" and set(labels) == {"group", "topic", "partition"}, (kind, labels)


# -- the health probe ---------------------------------------------------------------------------------


@pytest.fixture
def health_server():
    """A real gRPC server with grpc.health.v1, in this process: (address, its HealthServicer)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("driftline.v1.Predictor", health_pb2.HealthCheckResponse.NOT_SERVING)
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def test_the_health_probe_passes_only_on_serving(health_server, capsys):
    from grpc_health.v1 import health_pb2

    from services.common import healthcheck

    address, servicer = health_server
    assert healthcheck.main([address]) == 0
    assert healthcheck.main([address, "driftline.v1.Predictor"]) == 1
    assert capsys.readouterr().err == f"unhealthy: {address} 'driftline.v1.Predictor': NOT_SERVING\n"
    servicer.set("driftline.v1.Predictor", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address, "driftline.v1.Predictor", "--timeout", "2"]) == 0
    assert healthcheck.main([address, "driftline.v1.Nothing"]) == 1
    assert "no health status for this service" in capsys.readouterr().err
    servicer.enter_graceful_shutdown()  # what a stopping service reports
    assert healthcheck.main([address]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NOT_SERVING" in err


def test_the_health_probe_command_and_its_http_form(health_server):
    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{http.server_address[1]}"
        probe = [sys.executable, "-m", "services.common.healthcheck"]
        run = lambda *args: subprocess.run([*probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        address, _ = health_server
        ok, metrics, missing = run(address), run(f"{base}/metrics"), run(f"{base}/nothing", "--timeout", "2")
        assert (ok.returncode, ok.stderr) == (0, "")
        assert (metrics.returncode, metrics.stderr) == (0, "")
        assert missing.returncode == 1 and missing.stderr == f"unhealthy: {base}/nothing: HTTP 404\n"
    finally:
        http.shutdown()
        http.server_close()


# -- with a Docker engine: the stack itself -----------------------------------------------------------


def _engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def compose_secrets(folder: Path) -> dict[str, str]:
    """What docker-compose.yml reads, made the way README.md (Deploying) says: certificates of one
    CA (the services, the CLI, kafka, minio), the token issuer's key pair, the callers' and
    Prometheus' tokens and an admin token for the test, and a generated password per account.
    Each file is made readable by the containers' users (compose bind-mounts it as it is)."""
    import secrets as random

    from services.cli.certs import SERVICES as CERTIFIED, init_certs
    from services.common import auth
    from services.common.kafka_acls import PRINCIPALS

    init_certs(folder / "certs", services=(*CERTIFIED, "kafka", "minio"))
    keys = folder / "auth"
    auth.write_keypair(keys / "private.pem", keys / "public.pem")
    (keys / "revoked").write_text("")
    tokens = folder / "tokens"
    tokens.mkdir()
    private = auth.load_private_key(keys / "private.pem")
    for subject, roles in {**auth.SERVICE_ROLES, "prometheus": ("read",)}.items():
        (tokens / f"{subject}.token").write_text(auth.issue(private, subject, roles)[0])
    (folder / "admin.token").write_text(auth.issue(private, "compose-test", ["admin"])[0])
    for path in [*(folder / "certs").iterdir(), *tokens.iterdir(), keys / "public.pem", keys / "revoked"]:
        path.chmod(0o644)  # a test's throw-away files; README.md grants each container user its own
    for directory in (folder / "certs", tokens, keys):
        directory.chmod(0o755)
    found = {"DRIFTLINE_CERTS_DIR": str(folder / "certs"), "DRIFTLINE_AUTH_DIR": str(keys),
             "DRIFTLINE_TOKENS_DIR": str(tokens), "DRIFTLINE_MINIO_ROOT_USER": f"root-{random.token_hex(4)}",
             "DRIFTLINE_MINIO_ROOT_PASSWORD": random.token_hex(16), "GRAFANA_ADMIN_USER": "admin",
             "GRAFANA_ADMIN_PASSWORD": random.token_hex(16)}
    found |= {f"DRIFTLINE_KAFKA_{p.upper()}_PASSWORD": random.token_hex(16) for p in ("admin", *PRINCIPALS)}
    for service in ("feature", "trainer", "monitor", "registry", "serving"):
        found[f"DRIFTLINE_S3_{service.upper()}_ACCESS_KEY"] = f"{service}-{random.token_hex(4)}"
        found[f"DRIFTLINE_S3_{service.upper()}_SECRET_KEY"] = random.token_hex(16)
    return found


def test_the_compose_secrets_are_every_one_the_file_reads(tmp_path):
    """The engine test's secrets (as README.md makes them) are exactly what compose requires,
    and every secret file the compose file names exists among them."""
    made = compose_secrets(tmp_path)
    text = COMPOSE.read_text()
    assert set(made) == set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    for name, spec in load_compose()["secrets"].items():
        var, rest = re.fullmatch(r"\$\{([A-Za-z_0-9]+):\?[^}]+\}(/.+)", spec["file"]).groups()
        assert Path(made[var] + rest).is_file(), (name, made[var] + rest)


@pytest.mark.skipif(not _engine_answers(), reason="no Docker engine answers (docker.from_env().ping()): "
                    "the stack is not brought up; the static checks above still ran")
def test_the_stack_comes_up_and_serves_a_prediction(tmp_path):
    """Runs only where a Docker engine answers (`docker.from_env().ping()`); elsewhere it is
    reported as skipped, and the static tests above are what checks the file. It builds the image,
    runs `docker compose up --wait` (every health check passing), publishes a tiny ONNX model the
    way the trainer does (artifact in MinIO, version in the registry, alias `production`), waits
    for serving's driftline.v1.Predictor to turn SERVING and makes one prediction through the
    published port, over mTLS with an admin token, as the CLI would. Needs the host's loopback ports of docker-compose.yml free (9000, 50053, 50054, …)
    and the `docker compose` plugin (a missing plugin fails the test: the engine is there)."""
    import numpy as np
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from driftline.v1 import registry_pb2, registry_pb2_grpc, serving_pb2, serving_pb2_grpc
    from services.common import channels
    from services.common.objectstore import MinioObjectStore
    from services.common.settings import CommonSettings
    from support import wait_for
    from tiny_models import FEATURES, WEIGHTS, expected_scores, tiny_model

    docker = shutil.which("docker")
    assert docker, "a Docker engine answers but there is no docker CLI for `docker compose`"
    project = f"driftline-test-{uuid.uuid4().hex[:8]}"
    secrets = compose_secrets(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}, **secrets}
    compose = [docker, "compose", "--project-name", project, "--file", str(COMPOSE)]

    def run(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    up = run("up", "--detach", "--build", "--wait", "--wait-timeout", "600")
    try:
        assert up.returncode == 0, f"docker compose up failed:\n{up.stderr[-4000:]}\n{run('logs', '--tail', '40').stdout[-8000:]}"
        # What the services run with: the settings' defaults (compose sets neither).
        model, bucket = (CommonSettings.model_fields[f].default for f in ("model_name", "bucket"))
        # The trainer's S3 account may write models; the CLI's certificate and an admin token reach the registry.
        store = MinioObjectStore("127.0.0.1:9000", secrets["DRIFTLINE_S3_TRAINER_ACCESS_KEY"],
                                 secrets["DRIFTLINE_S3_TRAINER_SECRET_KEY"], bucket, secure=True,
                                 ca_file=str(tmp_path / "certs" / "ca.pem"))
        ref = store.put_bytes(f"models/{model}/compose-test/model.onnx", tiny_model(WEIGHTS[1]))
        certs = tmp_path / "certs"
        client = CommonSettings(tls_ca_file=str(certs / "ca.pem"), tls_cert_file=str(certs / "cli.pem"),
                                tls_key_file=str(certs / "cli.key"), token_file=str(tmp_path / "admin.token"))
        with channels.channel("127.0.0.1:50053", client) as channel:
            registry = registry_pb2_grpc.RegistryStub(channel)
            version = registry.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
                model_version=registry_pb2.ModelVersion(name=model, artifact_uri=ref.uri, artifact_sha256=ref.sha256,
                                                        feature_names=FEATURES)), timeout=30).version
            registry.SetAlias(registry_pb2.SetAliasRequest(name=model, alias="production", version=version,
                                                           reason="compose test"), timeout=30)
        with channels.channel("127.0.0.1:50054", client) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(service="driftline.v1.Predictor"),
                                          timeout=5).status == health_pb2.HealthCheckResponse.SERVING,
                     180, "serving to load the promoted model", every=1)
        rows = [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]]
        with channels.channel("127.0.0.1:50054", client) as channel:
            answer = serving_pb2_grpc.PredictorStub(channel).Predict(serving_pb2.PredictRequest(
                model_name=model, rows=[serving_pb2.Row(values=r) for r in rows]), timeout=30)
        assert answer.model_version == version
        scores = np.asarray([list(p.scores) for p in answer.predictions])
        np.testing.assert_allclose(scores, expected_scores(1, rows), rtol=1e-4, atol=1e-5)
    finally:
        run("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
