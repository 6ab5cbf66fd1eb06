"""Block families, one module each; models/common.py re-exports them for YOLOv5-style imports."""
