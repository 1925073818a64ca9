"""Where the platform is: its home directory, the state file `driftline up` writes, and the
settings every verb resolves from the environment first, then that file, then the defaults.

    $DRIFTLINE_HOME/            (default <repo>/.devstack/platform, or $DRIFTLINE_STATE_DIR/platform)
      platform.json             written by `up`: addresses, environment, log paths, what it started
      supervisor.json           written by the supervisor: pid, state and restarts per process
      supervisor.log            what the supervisor did (starts, exits, restarts, reloads)
      logs/<service>.log        each service's output; logs/serving-<model>.log for serving
      data/                     the registry's database, the feature service's files
      streams/<name>.json       the platform's streams (DRIFTLINE_STREAMS_DIR), with `streams add`

Ingest, feature, registry, monitor and the trainer run one process each, serving every stream;
serving runs one process per model, as in KServe (`serving:<model>` in supervisor.json, under
"serving" by model in platform.json, with its own gRPC and metrics port).

>>> process_name("serving", "sea"), process_name("registry"), split_process("serving:sea")
('serving:sea', 'registry', ('serving', 'sea'))
>>> log_name("serving", "a/b c")
'serving-a_b_c.log'
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import CommonSettings, Topics
from services.devstack import config as devstack_config
from services.devstack.supervisor import SERVICES, WITH_GRPC, alive

from .errors import CliError

__all__ = ["DEFAULT_PORTS", "SERVICES", "SERVING", "WITH_GRPC", "Platform", "home", "log_name", "process_name",
           "read_json", "split_process", "write_json"]

# The port each service listens on by default (its settings' grpc_port); `up` takes these when free.
DEFAULT_PORTS = {"ingest": 50051, "feature": 50052, "registry": 50053, "serving": 50054, "monitor": 50055}
DEFAULT_DASHBOARD_PORT = 8055
# The variable that overrides where a service is; the last two are read by the command only.
ADDRESS_ENV = {"registry": "DRIFTLINE_REGISTRY_ADDRESS", "feature": "DRIFTLINE_FEATURE_ADDRESS",
               "serving": "DRIFTLINE_SERVING_ADDRESS", "ingest": "DRIFTLINE_INGEST_ADDRESS",
               "monitor": "DRIFTLINE_MONITOR_ADDRESS"}
SERVING = "serving"  # the one service that runs one process per model


def process_name(service: str, model: str | None = None) -> str:
    """The name the supervisor knows a process by: the service, or serving:<model>."""
    return f"{service}:{model}" if model else service


def split_process(name: str) -> tuple[str, str | None]:
    service, _, model = name.partition(":")
    return service, model or None


def log_name(service: str, model: str | None = None) -> str:
    return f"{service}-{re.sub(r'[^A-Za-z0-9._-]', '_', model)}.log" if model else f"{service}.log"


def home() -> Path:
    explicit = os.environ.get("DRIFTLINE_HOME")
    return Path(explicit).expanduser().resolve() if explicit else devstack_config.state_dir() / "platform"


def read_json(path: Path) -> dict:
    """The object in a JSON file, or {} when there is none (or it is being replaced)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path: Path, value: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(value, tmp, indent=2, sort_keys=True)
    os.replace(tmp.name, path)


@dataclass
class Platform:
    """The platform as the verbs see it: `doc` is platform.json ({} before the first `up`)."""

    home: Path
    doc: dict

    @classmethod
    def load(cls) -> "Platform":
        root = home()
        return cls(root, read_json(root / "platform.json"))

    # -- files ------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.home / "platform.json"

    @property
    def supervisor_file(self) -> Path:
        return self.home / "supervisor.json"

    @property
    def supervisor_log(self) -> Path:
        return self.home / "supervisor.log"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def streams_dir(self) -> Path:
        return self.home / "streams"

    def save(self) -> None:
        write_json(self.state_file, self.doc)

    def supervision(self) -> dict:
        """{service: {pid, state, restarts, last_exit, started_at, log}} from the supervisor."""
        return read_json(self.supervisor_file)

    @property
    def supervisor_pid(self) -> int | None:
        return self.doc.get("supervisor", {}).get("pid")

    def running(self) -> bool:
        """Whether a supervisor started by `up` is alive."""
        return alive(self.supervisor_pid)

    # -- settings ---------------------------------------------------------------------------

    @property
    def settings(self) -> CommonSettings:
        """DRIFTLINE_* from the environment, else from platform.json's (on a secure platform the
        operator's certificate, token and Kafka login over the shared ones), else the defaults."""
        described = {**self.doc.get("env", {}), **self.doc.get("secure", {}).get("client_env", {})}
        from_file = {key[len("DRIFTLINE_"):].lower(): value for key, value in described.items()
                     if key.startswith("DRIFTLINE_") and key not in os.environ}
        known = CommonSettings.model_fields
        return CommonSettings(**{k: v for k, v in from_file.items() if k in known})

    @property
    def secure_summary(self) -> str | None:
        """What protects this platform ("TLS, tokens, SASL_SSL" after `up --secure`), None when nothing."""
        return self.doc.get("secure", {}).get("summary")

    def secure_env(self, service: str) -> dict[str, str]:
        """A service's own secure variables (its certificate, token, Kafka login); {} on a plain platform."""
        return dict(self.doc.get("secure", {}).get("services", {}).get(service, {}))

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)

    # -- processes ----------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        """The model of the default stream (DRIFTLINE_STREAM's)."""
        return self.doc.get("model_name") or self.settings.model_name

    @property
    def serving(self) -> dict[str, dict]:
        """model -> {stream, address, log, metrics, env} of each serving process `up` started."""
        return self.doc.get("serving") or {}

    def serving_models(self) -> list[str]:
        """The models with a serving process, the default stream's first; before any `up` the default's."""
        models = list(self.serving) or [self.default_model]
        return sorted(models, key=lambda model: model != self.default_model)

    def processes(self) -> list[tuple[str, str, str | None]]:
        """(name, service, model) of every process, in start order; serving's one per model."""
        found = []
        for service in SERVICES:
            models = self.serving_models() if service == SERVING else [None]
            found += [(process_name(service, model), service, model) for model in models]
        return found

    def address(self, service: str, model: str | None = None) -> str:
        """host:port of a service's gRPC server (serving: the one of `model`, the default model's without)."""
        override = os.environ.get(ADDRESS_ENV.get(service, ""), "")
        if override:
            return override
        if service == SERVING:
            return self.serving_address(model or self.default_model)
        known = self.doc.get("services", {}).get(service, {}).get("address")
        return known or f"127.0.0.1:{DEFAULT_PORTS[service]}"

    def serving_address(self, model: str) -> str:
        """Where `model` is served; CliError naming it when this platform has no serving process for it."""
        override = os.environ.get(ADDRESS_ENV[SERVING], "")
        if override:
            return override
        if not self.serving:  # a platform not started here (or before its first up): the default address
            return f"127.0.0.1:{DEFAULT_PORTS[SERVING]}"
        if model not in self.serving:
            raise CliError(f"unknown model {model!r}: no serving process for it (this platform serves "
                           f"{', '.join(self.serving_models())}; a stream names its model: driftline streams list)")
        return self.serving[model]["address"]

    @property
    def dashboard_url(self) -> str:
        return self.doc.get("dashboard_url") or f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}/"

    def log_path(self, service: str, model: str | None = None) -> Path:
        if service == SERVING:
            model = model or self.default_model
            known = self.serving.get(model, {}).get("log")
        else:
            known = self.doc.get("services", {}).get(service, {}).get("log")
        return Path(known) if known else self.log_dir / log_name(service, model)
