"""Declared negative dims are symbolic: Paddle's exports declare unknown sizes as -1, which shape inference, constant
folding and onnx's version converter otherwise take literally (a folded Shape then holds -1 and a Reshape fails with
'Invalid Target shape product of 0')."""
from __future__ import annotations

import onnx

from . import register, writable


@register("dims")
def symbolic_dims(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass, noted as "3 declared dims of -1 made symbolic (x, y)"."""
    if not any(_negative(model.graph)):
        return model, None
    model = writable(model)
    names = []
    for name, i, dim in _negative(model.graph):
        dim.dim_param = f"{name}_d{i}"
        names.append(name)
    return model, f"{len(names)} declared dims of -1 made symbolic ({', '.join(dict.fromkeys(names))})"


def _negative(graph: onnx.GraphProto):
    """(tensor name, axis, dim) for each dim declared negative in the graph's inputs, outputs and value_info."""
    for v in (*graph.input, *graph.output, *graph.value_info):
        for i, dim in enumerate(v.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                yield v.name, i, dim
