"""Talks to a running Driftline serving with NVIDIA's real `tritonclient.grpc` and prints what it
saw as one JSON object (tests/serving/test_serving_triton.py asserts on it).

Runs in its own venv (tritonclient[grpc] pins protobuf<7; the project runs protobuf 7), so it
imports nothing from this repository:

    .cache/venvs/tritonclient/bin/python tests/serving/triton_client_check.py --url 127.0.0.1:50054 --model m
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", type=int, default=3)
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(url=args.url)
    out: dict = {"tritonclient": getattr(grpcclient, "__version__", None)}
    out["live"] = client.is_server_live()
    out["ready"] = client.is_server_ready()
    out["model_ready"] = client.is_model_ready(args.model)
    out["unknown_model_ready"] = client.is_model_ready("no-such-model")
    server = client.get_server_metadata(as_json=True)
    out["server"] = {"name": server.get("name"), "version": server.get("version")}
    meta = client.get_model_metadata(args.model, as_json=True)
    out["metadata"] = {
        "name": meta.get("name"), "versions": meta.get("versions"), "platform": meta.get("platform"),
        "inputs": [{"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
                   for t in meta.get("inputs", [])],
        "outputs": [{"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
                    for t in meta.get("outputs", [])],
    }

    rows = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.25, -0.5, 2.0]], np.float32)[:, :args.features]
    features = grpcclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows)  # sent as raw_input_contents
    result = client.infer(args.model, [features], outputs=[grpcclient.InferRequestedOutput("probabilities")],
                          request_id="triton-check-1")
    response = result.get_response(as_json=True)
    probabilities = result.as_numpy("probabilities")
    out["infer"] = {
        "rows": rows.tolist(),
        "probabilities": probabilities.tolist(),
        "dtype": str(probabilities.dtype),
        "shape": list(probabilities.shape),
        "model_version": response.get("model_version"),
        "id": response.get("id"),
        "parameters": {k: next(iter(v.values())) for k, v in response.get("parameters", {}).items()},
    }

    errors = {}
    try:
        client.infer("no-such-model", [features])
    except InferenceServerException as exc:
        errors["unknown_model"] = exc.status()
    wrong = grpcclient.InferInput("features", [1, args.features + 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, args.features + 1), np.float32))
    try:
        client.infer(args.model, [wrong])
    except InferenceServerException as exc:
        errors["wrong_shape"] = exc.status()
        errors["wrong_shape_message"] = exc.message()
    out["errors"] = errors
    client.close()
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
