"""NVIDIA's own client against Driftline serving: `tritonclient[grpc]` speaks OIP v2 to the real
serving process — live/ready, model metadata (-1 for the batch dimension), infer read with
`as_numpy()`, the model version in the response.

tritonclient[grpc] pins protobuf<7 and cannot share the project venv (protobuf 7), so it gets
its own small venv under the git-ignored `.cache/venvs/tritonclient`, built here on first use
(python3.11 -m venv; pip install 'tritonclient[grpc]' numpy; pip's cache makes later builds
fast), and tests/serving/triton_client_check.py runs in it as a subprocess and prints JSON. No skip: if
the venv cannot be built, the test fails with pip's error."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import ROOT
from serving_stack import MODEL
from tiny_models import expected_scores

VENV = ROOT / ".cache" / "venvs" / "tritonclient"
PYTHON = VENV / "bin" / "python"
READY = VENV / ".driftline-ready"  # written once the install and an import check succeeded
REQUIREMENTS = ["tritonclient[grpc]", "numpy"]
CHECK = ROOT / "tests" / "serving" / "triton_client_check.py"


def _python311() -> str:
    found = shutil.which("python3.11") or (sys.executable if sys.version_info[:2] == (3, 11) else None)
    if not found:
        pytest.fail("python3.11 is needed to build the tritonclient venv and was not found on PATH")
    return found


def _run(step: str, command: list[str], say) -> None:
    say(f"[tritonclient venv] {step}: {' '.join(command)}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"building the tritonclient venv failed at {step!r} (exit {done.returncode}):\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def triton_python(request) -> Path:
    """The venv's python, built on first use (progress printed), reused after."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "tritonclient.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once build it once
        if READY.exists() and PYTHON.exists():
            return PYTHON
        capture = request.config.pluginmanager.getplugin("capturemanager")
        guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with guard:
            def say(text: str) -> None:
                print(text, flush=True)

            say(f"\n[tritonclient venv] first use: building {VENV} (about a minute with a cold pip cache)")
            if VENV.exists():
                shutil.rmtree(VENV)  # a half-built one from an interrupted run
            _run("venv", [_python311(), "-m", "venv", str(VENV)], say)
            _run("pip install", [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check",
                                 "--progress-bar", "off", *REQUIREMENTS], say)
            _run("import check", [str(PYTHON), "-c", "import tritonclient.grpc, numpy"], say)
            READY.write_text(" ".join(REQUIREMENTS) + "\n")
            say("[tritonclient venv] ready")
    return PYTHON


def test_tritonclient_talks_to_driftline_serving(stack, triton_python):  # noqa: F811
    stack.publish(1)
    stack.aliases["production"] = 1
    with stack.serving() as s:
        predictor, _ = s.stubs()
        s.wait_version(predictor, 1)
        done = subprocess.run([str(triton_python), str(CHECK), "--url", s.address, "--model", MODEL],
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert done.returncode == 0, f"the tritonclient check failed:\n{done.stdout}\n{done.stderr}"
        seen = json.loads(done.stdout.strip().splitlines()[-1])

    assert (seen["live"], seen["ready"], seen["model_ready"], seen["unknown_model_ready"]) == (True, True, True, False)
    assert seen["server"]["name"] == "driftline" and seen["server"]["version"]
    meta = seen["metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == (MODEL, ["1"], "onnxruntime_onnx")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]

    infer = seen["infer"]
    assert (infer["model_version"], infer["id"], infer["dtype"], infer["shape"]) == ("1", "triton-check-1",
                                                                                   "float32", [3, 2])
    np.testing.assert_allclose(infer["probabilities"], expected_scores(1, infer["rows"]), rtol=1e-5)
    assert infer["parameters"]["variant"] == "production"
    assert infer["parameters"]["execution_provider"].endswith("ExecutionProvider")
    assert seen["errors"]["unknown_model"] == "StatusCode.NOT_FOUND"
    assert seen["errors"]["wrong_shape"] == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 4]" in seen["errors"]["wrong_shape_message"]
