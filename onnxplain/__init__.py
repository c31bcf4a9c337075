"""onnxplain: explain image models from the exported ONNX file itself.

    m = onnxplain.load("models/mobilenet_v2.onnx")
    e = onnxplain.explain(m, ["models/images/chelsea.png"], method="gradcam")
    e.maps  # N×H×W at input resolution
    e.save("out")  # overlays on the photos (PNG, with title, colorbar and metadata) and the maps (.npy)
"""
from . import targets
from .audit import audit
from .errors import OnnxplainError, UnsupportedOpError
from .explain import Explanation, explain, explain_images, prepare_images
from .methods import METHODS
from .metrics import evaluate
from .model import Model, load

__all__ = ["METHODS", "Explanation", "Model", "OnnxplainError", "UnsupportedOpError", "audit", "evaluate", "explain",
           "explain_images", "load", "prepare_images", "targets"]
