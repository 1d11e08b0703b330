"""duatm.export: a trained model as deployable graphs (ONNX), checked against PyTorch."""

from duatm.export.onnx_graphs import GraphCheck, check_onnx, export_onnx, matcher_path_for

__all__ = ["GraphCheck", "check_onnx", "export_onnx", "matcher_path_for"]
