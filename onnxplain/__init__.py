"""onnxplain: explain image models from the exported ONNX file itself."""
from .errors import OnnxplainError, UnsupportedOpError

__all__ = ["OnnxplainError", "UnsupportedOpError"]
