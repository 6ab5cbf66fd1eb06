"""Library side of export.py: graphs (head export mode, decoded model, in-graph NMS), metadata, the ONNX and
TorchScript writers, the runtime converters (OpenVINO, ncnn, MNN) with their export-time verification, and INT8.

export.py is the script (run() and its CLI); everything a test or another tool reuses lives here.
"""
from utils.export.common import ExportError, atomic_path, head_of, load_model, quiet_warnings
from utils.export.graphs import DecodedModel, NMSModel, export_mode, graph_module, output_names
from utils.export.int8 import (
                               DEFAULT_CALIB_IMAGES,
                               calibration_files,
                               head_nodes,
                               int8_activation_note,
                               letterbox_rgb,
                               quantize_int8,
)
from utils.export.metadata import GRAPH_FORMATS, NMS_COLUMNS, export_metadata, model_names
from utils.export.onnx import export_onnx, require_onnx, simplify_onnx
from utils.export.torchscript import export_torchscript

__all__ = ["DEFAULT_CALIB_IMAGES", "GRAPH_FORMATS", "NMS_COLUMNS", "DecodedModel", "ExportError", "NMSModel",
           "atomic_path", "calibration_files", "export_metadata", "export_mode", "export_onnx", "export_torchscript",
           "graph_module", "head_nodes", "head_of", "int8_activation_note", "letterbox_rgb", "load_model",
           "model_names", "output_names", "quantize_int8", "quiet_warnings", "require_onnx", "simplify_onnx"]
