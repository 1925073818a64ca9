"""The code version recorded with every model version."""

from __future__ import annotations

import importlib.metadata
import subprocess
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def code_version(configured: str = "") -> str:
    """DRIFTLINE_CODE_VERSION if set, else the git commit, else the package version."""
    if configured:
        return configured
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode == 0 and commit.stdout.strip():
            return commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return importlib.metadata.version("driftline")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:  # a source checkout that was never installed
        return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
