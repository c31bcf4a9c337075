"""Image inputs of integer type (uint8 pixels, as many TF exports take them) or float64 become float32, so that the
gradient reaches the pixels and the pipeline feeds float32.

Such models cast the pixels to float first. The input is declared float32: a Cast to a float type now casts float
to float (a differentiable identity), and any other consumer reads the input cast back to its own type, so the
model computes what it did on integer-valued pixels. The black-box path feeds it such values: it rounds and clips
its perturbed images to the input's type (`Model.deployed`).
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..protos import FLOATS, graph_inputs
from . import register, writable

PIXELS = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8", TensorProto.UINT16: "uint16",
          TensorProto.INT16: "int16", TensorProto.INT32: "int32", TensorProto.INT64: "int64",
          TensorProto.DOUBLE: "float64"}  # input types fed as float32


def pixel_images(model: onnx.ModelProto) -> dict[str, str]:
    """Name → type of the rank-4 inputs of integer or float64 type (initializers listed as inputs excepted)."""
    return {i.name: PIXELS[i.type.tensor_type.elem_type] for i in graph_inputs(model.graph)
            if i.type.tensor_type.elem_type in PIXELS and len(i.type.tensor_type.shape.dim) == 4}


@register("input")
def float_pixels(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass: integer and float64 image inputs declared float32, noted as "'x' uint8 pixels fed as float32"."""
    found = pixel_images(model)
    if not found:
        return model, None
    model = writable(model)
    for inp in model.graph.input:
        if inp.name in found:
            _as_float(model.graph, inp)
    return model, "; ".join(f"'{name}' {kind} pixels fed as float32 through its Cast, so the gradient reaches them"
                            + ("; black-box inputs are rounded to the type" if kind != "float64" else "")
                            for name, kind in found.items())


def _as_float(graph: onnx.GraphProto, inp) -> None:
    code = inp.type.tensor_type.elem_type
    inp.type.tensor_type.elem_type = TensorProto.FLOAT
    integer = f"{inp.name}__{PIXELS[code]}"
    readers = [n for n in graph.node if inp.name in n.input and not _casts_to_float(n)]
    for node in readers:
        node.input[:] = [integer if i == inp.name else i for i in node.input]
    if readers:
        graph.node.insert(0, helper.make_node("Cast", [inp.name], [integer], to=code, name=f"{integer}/cast"))


def _casts_to_float(node) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i in FLOATS for a in node.attribute)
