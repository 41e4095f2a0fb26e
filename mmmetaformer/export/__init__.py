"""ONNX export: backbones (``export_onnx``) and whole detectors and
segmentors (``export_model``, ``tools/export_onnx.py``), and running the
exported files in onnxruntime (``runtime``)."""

from .backbone import OPSET, export_onnx
from .preprocess import UnsupportedModel

__all__ = ['OPSET', 'UnsupportedModel', 'export_onnx']
