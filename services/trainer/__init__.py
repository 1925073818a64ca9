"""The trainer: turns a TrainingRequest into a dataset version, a torch model
exported to ONNX, a registered (and gated) model version, and a TrainingResult."""
