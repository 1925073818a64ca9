"""What the checks of docker-compose.yml (test_compose.py) and deploy/k8s/ (test_k8s.py) share:
which Driftline service a command runs, and the settings class whose fields are that service's
DRIFTLINE_* environment."""

from __future__ import annotations

import functools
import importlib
import inspect

SERVICES = ("ingest", "feature", "trainer", "registry", "serving", "monitor")
ENV_PREFIX = "DRIFTLINE_"


def service_module(command: list[str]) -> str | None:
    """`ingest` for a command `python -m services.ingest …` (any services.<name>); None otherwise.

    >>> service_module(["python", "-m", "services.ingest"]), service_module(["python", "app.py"])
    ('ingest', None)
    """
    for i, word in enumerate(command[:-1]):
        if word == "-m" and command[i + 1].startswith("services."):
            return command[i + 1].split(".")[1]
    return None


@functools.cache
def settings_class(service: str) -> type:
    """The settings class services/<service>/settings.py defines (the CommonSettings subclass)."""
    from services.common.settings import CommonSettings

    module = importlib.import_module(f"services.{service}.settings")
    found = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, CommonSettings)
             and c is not CommonSettings and c.__module__ == module.__name__]
    assert len(found) == 1, f"services/{service}/settings.py defines {found}"
    return found[0]


def settings_env_names(service: str) -> set[str]:
    """Every environment variable the service's settings read (upper case; pydantic ignores case)."""
    return {f"{ENV_PREFIX}{name}".upper() for name in settings_class(service).model_fields}
