"""The servers of the serving benchmark, each started as its own process on 127.0.0.1.

* Driftline: `python -m services.serving` (one process per model, as deployed), loading the
  `production` alias from a `python -m services.registry` started for the run; the artifacts
  go to the local MinIO through services.common.objectstore and are registered + aliased over
  the Registry gRPC API. A unique topic prefix and bucket keep the run apart from anything else
  on the shared local stack (Kafka 127.0.0.1:9092, MinIO 127.0.0.1:9000).
* MLServer 1.7.1 with bench/peers/mlserver_runtime.py, in .cache/bench-venvs/mlserver.
* KServe 0.21.0 with bench/peers/kserve_server.py, in .cache/bench-venvs/kserve.

The peer venvs are created on first use (python3.11 -m venv + pip, PyPI) and kept.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / ".cache" / "bench-venvs"
PEERS = Path(__file__).resolve().parent / "peers"

# What each peer venv gets; the marker file remembers it, so a change rebuilds the venv.
PEER_REQUIREMENTS = {
    # MLServer 1.7.1's worker fails to load models with a newer uvloop.
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime==1.32.0", "numpy"],
    "kserve": ["kserve==0.21.0", "onnxruntime==1.32.0", "numpy"],
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- process accounting (/proc; psutil is not in the venv) ------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its descendants (VmRSS), MB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


# -- peer venvs --------------------------------------------------------------------------------

def ensure_venv(name: str) -> Path:
    """.cache/bench-venvs/<name>/bin/python, created and pip-installed on first use."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-requirements"
    wanted = "\n".join(PEER_REQUIREMENTS[name])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    base = shutil.which("python3.11") or sys.executable
    say(f"[venv] creating {venv} with {base} (once; cached afterwards)")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    say(f"[venv] pip install {' '.join(PEER_REQUIREMENTS[name])} (a few minutes)")
    process = subprocess.Popen([str(python), "-m", "pip", "install", "--progress-bar", "off",
                                *PEER_REQUIREMENTS[name]],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in process.stdout:
        tail = (tail + [line.rstrip()])[-30:]
        if line.startswith(("Collecting", "Successfully")):
            say(f"[venv:{name}] {line.rstrip()[:120]}")
    if process.wait() != 0:
        raise RuntimeError(f"pip install into {venv} failed:\n" + "\n".join(tail))
    marker.write_text(wanted)
    return python


# -- one server process ------------------------------------------------------------------------

@dataclass
class Running:
    """A started server: where to call it and the process to measure."""
    name: str
    model: str
    address: str
    process: subprocess.Popen
    log_path: Path
    extra: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}); log {self.log_path}:\n"
                               + self.log_path.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is None:
        # The peers start their own children (MLServer workers); stop the whole group.
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spawn(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


# -- Driftline ---------------------------------------------------------------------------------

class DriftlineStack:
    """A registry for the run (own SQLite, bucket and topic prefix) holding the bench models."""

    def __init__(self, workdir: Path, model_paths: dict[str, Path]) -> None:
        self.workdir = workdir
        self.model_paths = model_paths
        self.run_id = uuid.uuid4().hex[:8]
        self.prefix = f"bench{self.run_id}."
        self.bucket = f"bench-serving-{self.run_id}"
        self.registry_address = f"127.0.0.1:{free_port()}"
        self.registry: subprocess.Popen | None = None
        self.versions: dict[str, int] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DRIFTLINE_TOPIC_PREFIX": self.prefix,
               "DRIFTLINE_BUCKET": self.bucket, "DRIFTLINE_REGISTRY_ADDRESS": self.registry_address,
               "DRIFTLINE_LOG_JSON": "false", "DRIFTLINE_LOG_LEVEL": "WARNING", "DRIFTLINE_METRICS_PORT": "0"}
        env.update(extra)
        return env

    def start(self) -> None:
        import grpc

        from driftline.v1 import registry_pb2, registry_pb2_grpc
        from services.common.channels import channel as open_channel
        from services.common.objectstore import MinioObjectStore
        from services.common.settings import CommonSettings

        port = self.registry_address.rsplit(":", 1)[1]
        self.registry = spawn(
            [sys.executable, "-m", "services.registry"],
            self.env(DRIFTLINE_GRPC_PORT=port, DRIFTLINE_REGISTRY_DB=str(self.workdir / "registry.db")),
            self.workdir / "registry.log")
        store = MinioObjectStore.from_settings(CommonSettings(bucket=self.bucket))
        with open_channel(self.registry_address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            registry = registry_pb2_grpc.RegistryStub(channel)
            for name, path in self.model_paths.items():
                ref = store.put_bytes(f"models/{name}/candidates/bench/model.onnx", path.read_bytes())
                version = self._call(lambda: registry.RegisterModelVersion(registry_pb2.RegisterModelVersionRequest(
                    model_version=registry_pb2.ModelVersion(
                        name=name, artifact_uri=ref.uri, artifact_sha256=ref.sha256,
                        feature_names=[f"f{i}" for i in range(16)], code_version="bench",
                        params={"bench": "serving"})), timeout=10))
                self._call(lambda: registry.SetAlias(registry_pb2.SetAliasRequest(
                    name=name, alias="production", version=version.version), timeout=10))
                self.versions[name] = version.version
        say(f"[driftline] registry {self.registry_address}, bucket {self.bucket}, topics {self.prefix}*: "
            f"{self.versions}")

    def _call(self, fn, tries: int = 60):
        import grpc

        for attempt in range(tries):
            try:
                return fn()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == tries - 1:
                    raise
                self._registry_alive()
                time.sleep(0.5)

    def _registry_alive(self) -> None:
        if self.registry is not None and self.registry.poll() is not None:
            raise RuntimeError("the registry exited:\n" + (self.workdir / "registry.log").read_text()[-3000:])

    def serve(self, name: str, model: str, settings: dict[str, str]) -> Running:
        port = free_port()
        log_path = self.workdir / f"{name}-{model}.log"
        # A diagnostic patch (bench/peers/driftline_patched.py) runs the same service with one part off.
        argv = [sys.executable, str(PEERS / "driftline_patched.py")] if "BENCH_DRIFTLINE_PATCH" in settings \
            else [sys.executable, "-m", "services.serving"]
        process = spawn(argv, self.env(DRIFTLINE_GRPC_PORT=str(port), DRIFTLINE_MODEL_NAME=model, **settings),
                        log_path)
        return Running(name, model, f"127.0.0.1:{port}", process, log_path)

    def stop(self) -> None:
        if self.registry is not None:
            stop_process(self.registry)
        remove_bucket(self.bucket)


def remove_bucket(bucket: str) -> None:
    """Deletes the run's bucket from the shared MinIO (best effort; the models are cached locally)."""
    try:
        from services.common.channels import channel as open_channel
        from services.common.objectstore import MinioObjectStore
        from services.common.settings import CommonSettings

        settings = CommonSettings(bucket=bucket)
        client = MinioObjectStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                                  bucket, settings.s3_secure).client
        for item in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, item.object_name)
        client.remove_bucket(bucket)
    except Exception as exc:  # a leftover bucket is harmless
        say(f"[driftline] could not remove bucket {bucket}: {exc}")


# -- peers -------------------------------------------------------------------------------------

def start_mlserver(name: str, model: str, path: Path, workdir: Path, batching: dict | None) -> Running:
    python = ensure_venv("mlserver")
    repo = workdir / f"{name}-{model}"
    (repo / model).mkdir(parents=True, exist_ok=True)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    # Documented production settings: no debug access logs, inference in the main process
    # (parallel_workers 0 was the fastest here), loopback only.
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "debug": False}))
    model_settings = {"name": model, "implementation": "mlserver_runtime.OnnxRuntimeModel",
                      "parameters": {"uri": str(path)}}
    model_settings.update(batching or {})
    (repo / model / "model-settings.json").write_text(json.dumps(model_settings))
    env = {**os.environ, "PYTHONPATH": str(PEERS)}
    log_path = workdir / f"{name}-{model}.log"
    mlserver = python.parent / "mlserver"
    process = spawn([str(mlserver), "start", str(repo)], env, log_path, cwd=repo)
    return Running(name, model, f"127.0.0.1:{grpc_port}", process, log_path)


def start_kserve(name: str, model: str, path: Path, workdir: Path) -> Running:
    python = ensure_venv("kserve")
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "KSERVE_LOGLEVEL": "WARNING"}
    env.pop("PYTHONPATH", None)
    log_path = workdir / f"{name}-{model}.log"
    process = spawn([str(python), str(PEERS / "kserve_server.py"), "--http_port", str(http_port),
                     "--grpc_port", str(grpc_port), "--enable_latency_logging", "False",
                     "--bench_model", f"{model}={path}"], env, log_path)
    return Running(name, model, f"127.0.0.1:{grpc_port}", process, log_path)


def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    return path


def start_floor(name: str, model: str, path: Path, workdir: Path, mode: str, extra: tuple[str, ...] = ()) -> Running:
    """bench/peers/floor_server.py: the grpc.aio floor (no model: `echo`; inline session: `ort`)."""
    port = free_port()
    log_path = workdir / f"{name}-{model}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = spawn([sys.executable, str(PEERS / "floor_server.py"), "--port", str(port), "--model", model,
                     "--onnx", str(path), "--mode", mode, *extra],
                    env, log_path)
    return Running(name, model, f"127.0.0.1:{port}", process, log_path)
