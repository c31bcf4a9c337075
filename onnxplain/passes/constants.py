"""Weights are initializers: Constant nodes (Paddle exports hold every weight in one) become initializers, and
initializers listed among the graph inputs (IR version 3, as Caffe2's conversions of the model zoo list them) stop
being inputs, so that shape inference and the rules read them as the constants the exporter meant."""
from __future__ import annotations

import onnx

from ..protos import graph_inputs
from . import register, writable


@register("constants")
def as_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass, noted as "3 Constant nodes made initializers; 17 initializers removed from the graph inputs"."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    listed = [i for i in graph.input if i.name in initializers]
    outputs = {o.name for o in graph.output}
    constants = [i for i, n in enumerate(graph.node) if n.op_type == "Constant" and n.output[0] not in outputs
                 and [a.name for a in n.attribute] == ["value"]]
    if not listed and not constants:
        return model, None
    model = writable(model)
    graph = model.graph
    kept = graph_inputs(graph)
    del graph.input[:]
    graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # IR 4 on: initializers need not be inputs
    for i in reversed(constants):
        node = graph.node.pop(i)
        graph.initializer.append(node.attribute[0].t)
        graph.initializer[-1].name = node.output[0]
    notes = [f"{len(constants)} Constant nodes made initializers" if constants else "",
             f"{len(listed)} initializers removed from the graph inputs" if listed else ""]
    return model, "; ".join(n for n in notes if n)

