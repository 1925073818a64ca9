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
import shutil
from pathlib import Path

from . import config
from .process import DevstackError, Say, run_streaming

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
    target = kustomize_path()
    if target.exists():  # go install renames the finished binary into place: no partial files
        return target
    go = shutil.which("go")
    if not go:
        raise DevstackError("kustomize (for the Kubernetes manifests' test) is built with Go: install `go`")
    say(f"tools: building kustomize {KUSTOMIZE_VERSION} with `go install` into {target.parent} "
        "(first run only; a few minutes on 2 cores)")
    target.parent.mkdir(parents=True, exist_ok=True)
    run_streaming(
        [go, "install", "-v", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
        "go", say,
        # Its go.mod asks for go1.26.0; never let a missing toolchain trigger a download.
        env={"GOBIN": str(target.parent), "GOTOOLCHAIN": "local"},
        show=lambda line: " " in line and not line.startswith("go: downloading"),  # errors
        progress=lambda lines: (
            f"{sum(line.startswith('go: downloading') for line in lines)} modules downloaded, "
            f"{sum(not ln.startswith('go:') and ' ' not in ln for ln in lines)} packages compiled"
        ),
        heartbeat=15.0,
    )
    if not target.exists():
        raise DevstackError(f"go install finished but {target} is missing")
    return target


def install(say: Say) -> None:
    install_kustomize(say)
