"""Does serving's GPU path work, and what does it buy? The heavy bench model on CUDA EP and on CPU.

    .venv/bin/python bench/gpu_check.py [--repeats 30] [--tensorrt] [--threads N]

Builds the heavy bench model here with onnx.helper (16 → 2048 → 2048 → 2048 → 2, ReLU, softmax;
the same shape as bench/models.py's `heavy`, fixed seed), opens it the way serving does
(services.serving.onnx_model: the provider list, session options, warm-up), and times
`session.run` at batch 1, 64 and 512 on CUDAExecutionProvider and on CPUExecutionProvider
(and TensorrtExecutionProvider with --tensorrt, when offered). Prints one JSON line per
measurement, then a table, then the CUDA/CPU speed-up per batch.

Timings include the host↔device copies of inputs and outputs, as serving pays them (numpy
in, numpy out). Median of `--repeats` calls after warm-up.

Where onnxruntime offers no CUDA provider (the CPU-only `onnxruntime` wheel, or no GPU), it
says so plainly and exits 0. If CUDA is offered but the session silently falls back to CPU
(missing CUDA/cuDNN libraries), that is a failure: exit 1 with onnxruntime's reason.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402

from services.serving.onnx_model import (  # noqa: E402
    CPU, CUDA, TENSORRT, SessionConfig, load_model,
)

FEATURES, HIDDEN, CLASSES, SEED = 16, (2048, 2048, 2048), 2, 2
BATCHES = (1, 64, 512)


def heavy_model() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    widths = (FEATURES, *HIDDEN, CLASSES)
    nodes, weights = [], []
    current = "features"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = np.zeros(fan_out, np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}" if i < len(widths) - 2 else "logits"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        current = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "heavy", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure(artifact: bytes, providers: list[str], repeats: int, threads: int) -> list[dict]:
    config = SessionConfig(providers=tuple(providers), intra_op_threads=threads)
    model = load_model(artifact, name="heavy", version=1, sha256="-", config=config, warmup_rows=BATCHES)
    wanted = providers[0]
    if model.provider != wanted:
        raise RuntimeError(f"asked for {wanted} but the session runs on {model.provider} "
                           f"(session providers {list(model.providers)}); onnxruntime fell back — "
                           "check the CUDA/cuDNN libraries onnxruntime-gpu needs")
    rng = np.random.default_rng(0)
    results = []
    for batch in BATCHES:
        rows = rng.standard_normal((batch, FEATURES)).astype(np.float32)
        for _ in range(3):
            model.predict(rows)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.predict(rows)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        results.append({"provider": model.provider, "batch": batch, "repeats": repeats,
                        "median_ms": round(median * 1e3, 4), "p90_ms": round(sorted(times)[int(0.9 * len(times))] * 1e3, 4),
                        "rows_per_s": round(batch / median, 1)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--tensorrt", action="store_true", help="also time TensorrtExecutionProvider when offered")
    args = parser.parse_args()

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, device {ort.get_device()}, providers offered: {available}")
    if CUDA not in available:
        print(f"No CUDA here: this onnxruntime build offers no {CUDA} (offered: {', '.join(available)}). "
              "Install onnxruntime-gpu on a machine with an NVIDIA GPU to run this check. Nothing to compare; "
              "exiting 0.")
        return 0

    artifact = heavy_model()
    print(f"heavy model: {FEATURES} → {' → '.join(map(str, HIDDEN))} → {CLASSES}, {len(artifact) / 1e6:.1f} MB")
    runs = [[CUDA, CPU], [CPU]]
    if args.tensorrt and TENSORRT in available:
        runs.insert(0, [TENSORRT, CUDA, CPU])
    results = []
    for providers in runs:
        try:
            measured = measure(artifact, providers, args.repeats, args.threads if providers == [CPU] else 0)
        except Exception as exc:
            print(f"FAILED on {providers[0]}: {exc}")
            return 1
        for line in measured:
            print(json.dumps({"bench": "gpu_check", **line}))
        results += measured

    print(f"\n{'provider':<28}{'batch':>6}{'median ms':>12}{'rows/s':>14}")
    for r in results:
        print(f"{r['provider']:<28}{r['batch']:>6}{r['median_ms']:>12.3f}{r['rows_per_s']:>14,.0f}")
    by = {(r["provider"], r["batch"]): r for r in results}
    for batch in BATCHES:
        speedup = by[(CPU, batch)]["median_ms"] / by[(CUDA, batch)]["median_ms"]
        print(f"batch {batch:>4}: CUDA EP is {speedup:.1f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
