"""Half-precision models are explained in float32: every float16 and bfloat16 tensor of the graph is promoted.

Promotion is exact for the weights (float32 holds every half value), so the promoted model is the deployed function
computed without half-precision rounding between ops: the usual way to explain a half model (a half-precision
gradient loses most of its digits, and onnxruntime's CPU has few half kernels). Casts to half become casts to float32.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from . import register, writable

HALF = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
PROMOTED = ", explained in float32"  # ends the pass's note, after the half types it found
TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")  # Cast, EyeLike and the Random* ops, Quantize/DequantizeLinear


@register("precision")
def promote_half(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass: `model` in float32, noted as "float16, explained in float32" where it had half types."""
    promoted, half = to_float32(model)
    return promoted, half and half + PROMOTED


def to_float32(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`model` with every half tensor, type and cast in float32, and the half types it had ("float16", ...), or
    None when it had none: the model is then returned as it is, uncopied (a copy costs half of a load)."""
    found = {HALF[_code(p)] for p in _places(model.graph) if _code(p) in HALF}
    if not found:
        return model, None
    promoted = writable(model)
    for place in _places(promoted.graph):
        if _code(place) in HALF:
            _promote(place)
    return promoted, ", ".join(sorted(found))


def _places(graph: onnx.GraphProto):
    """Everything in `graph` and its subgraphs that holds an element type: tensors, tensor types (of inputs, outputs
    and value_info, also inside sequences and optionals) and the type attributes of standard ops."""
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for v in (*graph.input, *graph.output, *graph.value_info):
        yield from _tensor_types(v.type)
    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR:
                yield a.t
            elif a.type == AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == AttributeProto.GRAPH:
                yield from _places(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _places(g)
            elif a.type == AttributeProto.INT and a.name in TYPE_ATTRIBUTES and node.domain in ("", "ai.onnx"):
                yield a


def _tensor_types(t: onnx.TypeProto):
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        yield t.tensor_type
    elif kind in ("sequence_type", "optional_type"):
        yield from _tensor_types(getattr(t, kind).elem_type)


def _code(place) -> int:
    """The element type a place holds."""
    if isinstance(place, TensorProto):
        return place.data_type
    return place.i if isinstance(place, AttributeProto) else place.elem_type


def _promote(place) -> None:
    if isinstance(place, TensorProto):
        place.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(place).astype(np.float32), place.name))
    elif isinstance(place, AttributeProto):
        place.i = TensorProto.FLOAT
    else:
        place.elem_type = TensorProto.FLOAT
