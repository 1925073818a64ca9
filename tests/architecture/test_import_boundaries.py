"""Services couple only through contracts: a service imports services/common, the generated
contracts (driftline.v1, inference) and itself, never another service. common imports no
service, and the tools around the services (cli, demo, devstack) start services as processes
and talk to them over gRPC and Kafka, so they import no service's internals either."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "feature", "trainer", "registry", "serving", "monitor")
# Tools may import these packages of services/ besides themselves and common.
TOOLS = {"cli": {"devstack"}, "demo": {"devstack"}, "devstack": set()}


def imported_modules(path: Path, services_dir: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the module at `path`."""
    package = list(path.relative_to(services_dir.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
            if module == "services" or node.module is None:
                # `from services import devstack`, `from .. import serving`: the names are modules
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def boundary_violations(services_dir: Path) -> list[str]:
    """Every import that crosses a boundary, as 'file:line imports module'."""
    violations = []
    for package_dir in sorted(p for p in services_dir.iterdir() if p.is_dir() and p.name != "__pycache__"):
        name = package_dir.name
        if name == "common":
            allowed = {"common"}
        elif name in TOOLS:
            allowed = {name, "common", *TOOLS[name]}
        else:  # a service, or a new package that has not said what it is: held to the service rule
            allowed = {name, "common"}
        for path in sorted(package_dir.rglob("*.py")):
            for line, module in imported_modules(path, services_dir):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] not in allowed:
                    violations.append(f"{path.relative_to(services_dir.parent)}:{line} imports {module}")
    return violations


def test_services_import_only_common_the_contracts_and_themselves():
    assert boundary_violations(ROOT / "services") == []


def test_every_service_and_tool_is_known():
    packages = {p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()}
    assert packages <= {*SERVICES, "common", *TOOLS}, "say whether a new package is a service or a tool"


@pytest.mark.parametrize("source, crossing", [
    ("from services.monitor.categorical import is_categorical\n", "services.monitor.categorical"),
    ("import services.serving.models\n", "services.serving.models"),
    ("from services import registry\n", "services.registry"),
])
def test_a_cross_service_import_is_found(tmp_path, source, crossing):
    for name in ("trainer", "common", "monitor", "serving", "registry"):
        (tmp_path / "services" / name).mkdir(parents=True)
        (tmp_path / "services" / name / "__init__.py").write_text("")
    (tmp_path / "services" / "trainer" / "reference.py").write_text(
        "from services.common.settings import Topics\nfrom .settings import TrainerSettings\n" + source)
    assert boundary_violations(tmp_path / "services") == [f"services/trainer/reference.py:3 imports {crossing}"]


def test_common_importing_a_service_is_found(tmp_path):
    (tmp_path / "services" / "common").mkdir(parents=True)
    (tmp_path / "services" / "common" / "kafka.py").write_text("from ..serving import batcher\n")
    assert boundary_violations(tmp_path / "services") == ["services/common/kafka.py:1 imports services.serving"]
