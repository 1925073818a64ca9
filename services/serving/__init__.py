"""Serving: ONNX models behind gRPC `driftline.v1.Predictor`, hot-swapped when the
registry moves the `production` alias, every answer logged to `driftline.predictions`."""
