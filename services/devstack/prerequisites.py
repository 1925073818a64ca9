"""What a machine needs before `make demo` or `make test` can run, and how to install what is missing.

`python -m services.devstack doctor` checks every tool the local stack and the tests call and
prints, for each one missing, the command that installs it (Debian's package names: the
development machines and CI are Debian), then exits non-zero, before any test has started.
A tool an environment variable replaces (an existing Kafka or S3) is not asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Missing:
    tool: str
    why: str
    package: str  # the Debian package that provides it


def _java_major() -> int | None:
    java = shutil.which("java")
    if java is None:
        return None
    try:
        text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)', text)
    return int(found.group(1)) if found else None


def missing_prerequisites(environ: os._Environ | dict = os.environ, *, for_tests: bool = True) -> list[Missing]:
    """Every tool this machine lacks for the local stack (and, `for_tests`, for the test suite)."""
    missing = []
    if not environ.get("DRIFTLINE_KAFKA_BOOTSTRAP"):
        major = _java_major()
        if major is None or major < 17:
            missing.append(Missing("java", "the local Kafka broker runs on a JDK 17 or newer"
                                   + ("" if major is None else f" (found {major})"), "openjdk-17-jre-headless"))
        if shutil.which("mvn") is None:
            missing.append(Missing("mvn", "fetches Kafka's jars from Maven Central", "maven"))
    if shutil.which("go") is None:
        why = "builds kustomize for the Kubernetes manifests' test"
        if not environ.get("DRIFTLINE_S3_ENDPOINT"):
            why = "builds the local S3 server (MinIO) and kustomize"
        if for_tests or not environ.get("DRIFTLINE_S3_ENDPOINT"):
            missing.append(Missing("go", why, "golang-go"))
    if for_tests and not os.path.exists("/usr/bin/chromium") and shutil.which("chromium") is None:
        missing.append(Missing("chromium", "the monitor dashboard's browser test drives it", "chromium"))
    if for_tests and shutil.which("kcat") is None:
        missing.append(Missing("kcat", "the dead-letter test reads the topic as a user would", "kcat"))
    return missing


def report(missing: list[Missing]) -> str:
    """What to tell a person, one line per tool and the one command that installs them all.

    >>> print(report([Missing("chromium", "the dashboard test drives it", "chromium")]))
    missing: chromium (the dashboard test drives it)
    install: sudo apt-get update && sudo apt-get install -y chromium
    """
    lines = [f"missing: {m.tool} ({m.why})" for m in missing]
    packages = " ".join(dict.fromkeys(m.package for m in missing))
    lines.append(f"install: sudo apt-get update && sudo apt-get install -y {packages}")
    return "\n".join(lines)


def check(for_tests: bool = True) -> int:
    missing = missing_prerequisites(for_tests=for_tests)
    if not missing:
        print("prerequisites: all present")
        return 0
    print(report(missing), file=sys.stderr)
    return 2
