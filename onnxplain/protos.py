"""What the loader and the load passes read off an ONNX graph, in one place: declared dims, float types, the inputs
that are not weights, producers and the walk past Identities, and the layout a rank-4 input suggests."""
from __future__ import annotations

import onnx
from onnx import TensorProto

FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: the sizes a channel axis has


def dims(value_info) -> list:
    """Each dim of a tensor's declared shape: its size, its symbolic name, or None."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def shown(value_info) -> str:
    """A declared shape as text, "?" for a dim without size or name: "[N, 1000]"; "no shape" when none is declared."""
    if not value_info.type.tensor_type.HasField("shape"):
        return "no shape"
    return f"[{', '.join(str(d) if d is not None else '?' for d in dims(value_info))}]"


def graph_inputs(graph: onnx.GraphProto) -> list:
    """The graph's inputs that are not initializers (IR 3 files list their weights among the inputs too)."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def producers(graph: onnx.GraphProto) -> dict:
    """Tensor name → the node that computes it (one map: a search per step is O(nodes²))."""
    return {o: n for n in graph.node for o in n.output}


def past_identities(producer: dict, name: str) -> tuple:
    """The node that makes tensor `name` once Identities are passed (None for a graph input or initializer), and
    the names on the way, `name` first."""
    node, chain = producer.get(name), [name]
    while node is not None and node.op_type == "Identity":
        chain.append(node.input[0])
        node = producer.get(node.input[0])
    return node, chain


def guess_layout(shape: list) -> str:
    """The layout a rank-4 input's declared dims suggest: NHWC when the last axis looks like channels and the second
    does not, else NCHW."""
    return "NHWC" if shape[3] in CHANNELS and shape[1] not in CHANNELS else "NCHW"
