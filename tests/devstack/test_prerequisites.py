"""`python -m services.devstack doctor` (the first step of `make test` and `make demo`) names every
missing tool and the command that installs it, and asks only for what no configured address replaces."""

import os
import subprocess
import sys
from pathlib import Path

from services.devstack.prerequisites import missing_prerequisites

ROOT = Path(__file__).resolve().parents[2]


def doctor(path: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    return subprocess.run([sys.executable, "-m", "services.devstack", "doctor"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**environment, "PATH": path, **env})


def test_on_this_machine_nothing_is_missing():
    done = doctor(os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    assert "all present" in done.stdout


def test_a_machine_without_tools_is_told_exactly_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java, mvn or go
    names = {m.tool for m in missing_prerequisites({})}
    assert {"java", "mvn", "go"} <= names
    done = doctor(str(tmp_path))
    assert done.returncode == 2
    assert "missing: java" in done.stderr and "missing: go" in done.stderr
    assert "apt-get install -y openjdk-17-jre-headless maven golang-go" in done.stderr


def test_a_configured_kafka_needs_no_jdk(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    names = {m.tool for m in missing_prerequisites({"DRIFTLINE_KAFKA_BOOTSTRAP": "broker:9092"})}
    assert "java" not in names and "mvn" not in names and "go" in names
