"""Find the tensors worth explaining at: those with spatial extent on the path from the image to the score."""
from __future__ import annotations

import onnx

from .graph import infer_shapes


def spatial_tensors(model: onnx.ModelProto, input_name: str, score: str, layout: str) -> list[tuple[str, tuple]]:
    """(name, shape) of every rank-4 float tensor with height and width > 1 between the input and the score, in
    topological order."""
    inferred = infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.elem_type == onnx.TensorProto.FLOAT:
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    nodes = list(inferred.graph.node)
    forward = {input_name}
    for node in nodes:
        if any(i in forward for i in node.input) and node.op_type not in ("Shape", "Size"):
            forward.update(node.output)
    backward = {score}
    for node in reversed(nodes):
        if any(o in backward for o in node.output):
            backward.update(node.input)
    hw = slice(2, 4) if layout == "NCHW" else slice(1, 3)
    found = []
    for node in nodes:
        for name in node.output:
            shape = shapes.get(name)
            if name in forward and name in backward and shape and len(shape) == 4 and all(
                    d is not None and d > 1 for d in shape[hw]):
                found.append((name, shape))
    return found


def default_layer(found: list[tuple[str, tuple]]) -> str | None:
    """The last tensor with spatial extent before global pooling."""
    return found[-1][0] if found else None


def block_ends(found: list[tuple[str, tuple]], layout: str) -> list[str]:
    """The last tensor at each spatial resolution: the ends of the convolutional blocks."""
    hw = slice(2, 4) if layout == "NCHW" else slice(1, 3)
    last = {}
    for name, shape in found:
        last[shape[hw]] = name
    return list(last.values())
