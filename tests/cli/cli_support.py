"""Running `driftline` as a user does: the console script in a subprocess, with a DRIFTLINE_HOME,
a topic prefix and a bucket of its own; and two streams besides the default one, each with its
own field names and its own model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DRIFTLINE = Path(sys.executable).parent / "driftline"


def _numbers(names: str, high: float) -> list[dict]:
    return [{"name": name, "type": "number", "required": True, "min": 0, "max": high} for name in names.split()]


LABEL = {"type": "integer", "required": False, "min": 0, "max": 1}
# river's synth.SEA (x1..x3 in [0, 10], label x1 + x2 <= θ), its model named after the stream; and a
# synth.Hyperplane-like stream (a..e in [0, 1]) that names its model.
SEA = {"stream": "sea", "fields": _numbers("x1 x2 x3", 10), "label": LABEL}
HYPERPLANE = {"stream": "hyperplane", "model": "hyperplane-model", "fields": _numbers("a b c d e", 1), "label": LABEL}


@dataclass
class Cli:
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return Path(self.env["DRIFTLINE_HOME"])

    def run(self, *args: str, timeout: float = 120.0, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(DRIFTLINE), *map(str, args)], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def ok(self, *args: str, timeout: float = 120.0) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"driftline {' '.join(map(str, args))} exited {done.returncode}:\n" \
                                     f"{done.stdout}\n{done.stderr}\n{self.logs_hint()}"
        return done.stdout

    def json(self, *args: str, timeout: float = 120.0):
        return json.loads(self.ok(*args, "--json", timeout=timeout))

    def logs_hint(self) -> str:
        log = self.home / "supervisor.log"
        return f"--- {log} ---\n{log.read_text()[-3000:]}" if log.exists() else ""


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_") or k.startswith(
        ("DRIFTLINE_KAFKA_", "DRIFTLINE_S3_", "DRIFTLINE_CACHE_DIR", "DRIFTLINE_STATE_DIR"))}
    env.update(DRIFTLINE_HOME=str(tmp / "home"), DRIFTLINE_TOPIC_PREFIX=f"cli{tag}.", DRIFTLINE_BUCKET=f"cli-{tag}",
               DRIFTLINE_LOG_JSON="false", COLUMNS="200", **extra)
    return env


def platform_processes(env: dict[str, str]) -> list[str]:
    """Processes whose environment carries this platform's topic prefix (its supervisor and services)."""
    marker = f"DRIFTLINE_TOPIC_PREFIX={env['DRIFTLINE_TOPIC_PREFIX']}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{proc.name}: {command}")
        except OSError:
            continue
    return found


@contextmanager
def one_byte_changed(client, bucket: str, key: str, at: float = 0.5):
    """The object at `key` with one byte flipped but its recorded sha256 kept, as a disk or a
    person could leave it; put back as it was afterwards."""
    response = client.get_object(bucket, key)
    original, sha = response.read(), response.headers["x-amz-meta-sha256"]
    response.close()
    changed = bytearray(original)
    changed[int(len(changed) * at)] ^= 0x01
    client.put_object(bucket, key, io.BytesIO(bytes(changed)), len(changed), metadata={"sha256": sha})
    try:
        yield
    finally:
        client.put_object(bucket, key, io.BytesIO(original), len(original), metadata={"sha256": sha})
