"""Developer tools the tests need, built from source through the Go module proxy (no release
binaries are downloaded), cached like MinIO's build: `<cache dir>/<tool>-<version>/<tool>`.

kustomize renders deploy/k8s/ (tests/deploy/test_k8s.py). v5.8.2 is the newest kustomize/v5 whose
module graph builds with go1.26 (it needs sigs.k8s.io/kustomize/api v0.21.2; v5.8.3 needs go1.27).

    from services.devstack import tools
    tools.kustomize()          # the binary's path, or None when it has not been built
    tools.install_kustomize()  # build it if missing (`python -m services.devstack install` does)

DRIFTLINE_KUSTOMIZE overrides the binary used (for a machine that has one already).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import config
from .process import Say, go_install

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
KUSTOMIZE_VERSION = "v5.8.2"


def kustomize_path() -> Path:
    """Where the build lands (it may not exist yet)."""
    override = os.environ.get("DRIFTLINE_KUSTOMIZE")
    if override:
        return Path(override).expanduser()
    return config.cache_dir() / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"


def kustomize() -> Path | None:
    """The kustomize binary, or None when `python -m services.devstack install` has not built it."""
    path = kustomize_path()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def install_kustomize(say: Say) -> Path:
    return go_install(KUSTOMIZE_MODULE, KUSTOMIZE_VERSION, kustomize_path(), say,
                      what="kustomize (for the Kubernetes manifests' test)", took="a minute on 2 cores")


def install(say: Say) -> None:
    install_kustomize(say)
