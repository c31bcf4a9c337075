"""Half-precision models are explained in float32: every float16 and bfloat16 tensor of the graph is promoted.

Promotion is exact for the weights (float32 holds every half value), so the promoted model is the deployed function
computed without half-precision rounding between ops: the usual way to explain a half model (a half-precision
gradient loses most of its digits, and onnxruntime's CPU has few half kernels). Casts to half become casts to float32.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

HALF = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")  # Cast, EyeLike and the Random* ops, Quantize/DequantizeLinear


def to_float32(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """`model` with every half tensor, type and cast in float32, and the half types it had ("float16", ...), or
    None when it had none (the model is then returned as it is)."""
    found: set[str] = set()
    promoted = onnx.ModelProto.FromString(model.SerializeToString())
    _graph(promoted.graph, found)
    return (promoted, ", ".join(sorted(found))) if found else (model, None)


def _graph(graph: onnx.GraphProto, found: set) -> None:
    for t in graph.initializer:
        _tensor(t, found)
    for s in graph.sparse_initializer:
        _tensor(s.values, found)
    for v in (*graph.input, *graph.output, *graph.value_info):
        _type(v.type, found)
    for node in graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR:
                _tensor(a.t, found)
            elif a.type == AttributeProto.TENSORS:
                for t in a.tensors:
                    _tensor(t, found)
            elif a.type == AttributeProto.GRAPH:
                _graph(a.g, found)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    _graph(g, found)
            elif a.type == AttributeProto.INT and a.name in TYPE_ATTRIBUTES and node.domain in ("", "ai.onnx"):
                a.i = _elem_type(a.i, found)


def _elem_type(code: int, found: set) -> int:
    """FLOAT for a half type (noted in `found`), any other type as it is."""
    if code in HALF:
        found.add(HALF[code])
        return TensorProto.FLOAT
    return code


def _tensor(t: TensorProto, found: set) -> None:
    if t.data_type in HALF:
        found.add(HALF[t.data_type])
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))


def _type(t: onnx.TypeProto, found: set) -> None:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        t.tensor_type.elem_type = _elem_type(t.tensor_type.elem_type, found)
    elif kind in ("sequence_type", "optional_type"):
        _type(getattr(t, kind).elem_type, found)
