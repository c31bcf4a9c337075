"""A fully convolutional model whose outputs are class scores only at one input size (MTCNN's P-Net: N×H'×W'×2
face/non-face scores over a free-size image, 1×1 at its 12×12 training size) gets its height and width fixed to the
preprocessing's size, where its N×C×1×1-like heads are flattened to N×classes (passes/head.py).

Not in PASSES: it needs the preprocessing's size, so load calls it once the preprocessing is known."""
from __future__ import annotations

import onnx

from ..rewrite.graph import infer_shapes
from ..rewrite.shapes import sized
from .head import flatten_heads


def classifier_at_size(model: onnx.ModelProto, input_name: str, axes: tuple[int, int], size: tuple[int, int] | None
                       ) -> tuple[onnx.ModelProto, str | None]:
    """`model` with its input's free `axes` fixed to `size` and its heads flattened, when that gives an N×classes
    output it has at no other size; else `model` unchanged and no note."""
    if size is None or any(len(o.type.tensor_type.shape.dim) == 2 for o in model.graph.output):
        return model, None
    dims = next(i for i in model.graph.input if i.name == input_name).type.tensor_type.shape.dim
    if all(dims[axis].HasField("dim_value") and dims[axis].dim_value > 0 for axis in axes):
        return model, None
    fixed, note = flatten_heads(infer_shapes(sized(model, input_name, axes, size)))
    if note is None:
        return model, None
    return fixed, (f"height and width fixed to {size[0]}x{size[1]}, the preprocessing's size: a fully convolutional "
                   f"model whose outputs are class scores only there ({note})")
