"""Inference with exported models: ONNX Runtime / OpenVINO sessions, heatmaps, the refinement input,
segmentation of slides and cohorts, int8 quantisation.

No PyTorch import anywhere below this package (a test imports it with torch blocked)."""
