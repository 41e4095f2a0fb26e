"""Backbone ONNX export; kept importable here, the code lives in
``mmmetaformer.export.backbone`` (whole detectors and segmentors:
``mmmetaformer.export``)."""
from ..export.backbone import OPSET, export_onnx  # noqa: F401
