"""Inference: NMS, the Python API (predictor: load() -> Predictor -> Detections) and detect.py's input sources.
The per-format backends are utils/backends.py and utils/runtimes.py."""
