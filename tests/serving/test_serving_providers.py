"""Execution providers and session settings: TensorRT, then CUDA, then CPU, whichever onnxruntime
offers, overridable; thread settings reach the session; bench/gpu_check.py says plainly when
there is no CUDA. No infrastructure needed."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from services.serving.onnx_model import (
    CPU, CUDA, TENSORRT, InvalidModel, SessionConfig, execution_providers, load_model,
)
from services.serving.server import session_config, warmup_rows
from services.serving.settings import ServingSettings
from support import ROOT
from tiny_models import FEATURES, WEIGHTS, tiny_model

ALL = [TENSORRT, CUDA, CPU]


def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    assert execution_providers("auto", ALL) == [TENSORRT, CUDA, CPU]
    assert execution_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert execution_providers("auto", ["AzureExecutionProvider", CPU]) == [CPU]
    assert execution_providers("auto", ort.get_available_providers())[-1] == CPU


def test_settings_override_the_choice():
    assert execution_providers("cpu", ALL) == [CPU]
    assert execution_providers("cuda", ALL) == [CUDA, CPU]
    assert execution_providers("tensorrt", ALL) == [TENSORRT, CUDA, CPU]
    assert execution_providers("TensorrtExecutionProvider,CPUExecutionProvider", ALL) == [TENSORRT, CPU]
    with pytest.raises(ValueError, match="TensorrtExecutionProvider was asked for"):
        execution_providers("tensorrt", [CUDA, CPU])
    with pytest.raises(ValueError, match="must be auto, tensorrt, cuda, cpu"):
        execution_providers("gpu", ALL)


def test_thread_settings_reach_the_session_and_the_provider_is_reported():
    config = SessionConfig(providers=(CPU,), intra_op_threads=1, inter_op_threads=1)
    model = load_model(tiny_model(WEIGHTS[1]), name="m", version=1, sha256="-", feature_names=FEATURES,
                       config=config, warmup_rows=(1, 64))
    options = model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert model.provider == CPU and model.class_count == 2

    settings = ServingSettings(execution_provider="cpu", intra_op_threads=2, max_batch_rows=32, warmup_rows="1,8")
    config = session_config(settings)
    assert (config.providers, config.intra_op_threads) == ((CPU,), 2)
    assert warmup_rows(settings) == (1, 8, 32)


def test_idle_onnxruntime_threads_spin_unless_told_not_to():
    spinning = "session.intra_op.allow_spinning"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's default: spin
        session_config(ServingSettings()).session_options().get_session_config_entry(spinning)
    quiet = session_config(ServingSettings(ort_spin_threads=False))
    model = load_model(tiny_model(WEIGHTS[1]), name="m", version=1, sha256="-", feature_names=FEATURES,
                       config=quiet, warmup_rows=(1,))
    options = model.session.get_session_options()
    assert options.get_session_config_entry(spinning) == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_an_artifact_that_is_no_model_is_refused_not_raised_raw():
    # Refused by the artifact check (services/common/onnx_safety.py) before onnxruntime sees it.
    with pytest.raises(InvalidModel, match="is not an ONNX model"):
        load_model(b"\x08\x09not onnx", name="m", version=3, sha256="-")


def test_gpu_check_runs_or_says_plainly_there_is_no_cuda():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--repeats", "3"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    if CUDA in ort.get_available_providers():
        assert "CUDA EP is" in done.stdout and '"provider": "CUDAExecutionProvider"' in done.stdout
    else:
        assert "No CUDA here" in done.stdout and "exiting 0" in done.stdout
