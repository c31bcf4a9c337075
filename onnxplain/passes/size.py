"""Input sizes that the preprocessing asks for and the declared input does not give:
- a fully convolutional model whose outputs are class scores only at one input size (MTCNN's P-Net: N×H'×W'×2
  face/non-face scores over a free-size image, 1×1 at its 12×12 training size) gets its height and width fixed to
  the preprocessing's size, where its N×C×1×1-like heads are flattened to N×classes (passes/head.py);
- a model that declares a fixed height and width but is asked for another size (CenterFace's export declares
  10×3×32×32 and runs at any multiple of 32) gets them made symbolic, with the output dims that change with the
  size, where it runs at the size asked for.

Not in PASSES: they need the preprocessing's size, so load calls them once the preprocessing is known."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxplainError
from ..rewrite.graph import dynamic_batch, infer_shapes
from ..rewrite.shapes import sized
from . import probe
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


def free_size(model: onnx.ModelProto, input_name: str, axes: tuple[int, int], size: tuple[int, int] | None
              ) -> tuple[onnx.ModelProto, str | None]:
    """`model` with its input's fixed `axes` made symbolic when `size` differs from them, and each output dim that
    differs between the declared shape and a run at `size` (batch 1) made symbolic too; `model` unchanged and no
    note when the sizes agree or the axes are free. Raises one line when the model does not run at `size`."""
    inp = next(i for i in model.graph.input if i.name == input_name)
    dims = inp.type.tensor_type.shape.dim
    declared = tuple(dims[axis].dim_value if dims[axis].HasField("dim_value") else None for axis in axes)
    if size is None or None in declared or declared == tuple(size):
        return model, None
    freed = onnx.ModelProto.FromString(model.SerializeToString())
    dims = next(i for i in freed.graph.input if i.name == input_name).type.tensor_type.shape.dim
    for axis, side in zip(axes, ("height", "width")):
        dims[axis].dim_param = side
    del freed.graph.value_info[:]
    shapes = [onnx.TensorShapeProto.FromString(o.type.tensor_type.shape.SerializeToString()).dim
              for o in freed.graph.output]
    for o in freed.graph.output:
        o.type.tensor_type.ClearField("shape")
    run = dynamic_batch(freed, input_name)
    shape = [1 if i == 0 else d.dim_value for i, d in enumerate(dims)]
    for axis, s in zip(axes, size):
        shape[axis] = int(s)
    dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    try:
        computed = [v.shape for v in probe.run(run, {input_name: np.zeros(shape, dtype)})]
    except RuntimeError as exc:
        raise OnnxplainError(f"input '{input_name}' is declared {declared[0]}x{declared[1]} and the model does not "
                             f"run at {size[0]}x{size[1]}: {exc}") from None
    for out, old, new in zip(freed.graph.output, shapes, computed):
        for i, d in enumerate(old if len(old) == len(new) else ()):
            entry = out.type.tensor_type.shape.dim.add()
            if i == 0 or d.HasField("dim_value") and d.dim_value == new[i]:  # the batch: dynamic_batch's
                entry.CopyFrom(d)
            else:
                entry.dim_param = f"{out.name}_d{i}"
    return freed, (f"input '{input_name}' declared {declared[0]}x{declared[1]}, made free: the model runs at the "
                   f"{size[0]}x{size[1]} asked for")
