"""Output shapes as onnxruntime computes them, where the exporter declared none or a rank-0 one (some Paddle exports
declare their N×classes output as a scalar), so that the score output is found by its shape.

The model runs once on a probe input (probe.feeds); each output so declared gets the shape it had there, the batch
symbolic where the image's batch is. Other dims are those of the probe's size: right for class scores, which do not
depend on the image size.
"""
from __future__ import annotations

import onnx

from ..protos import graph_inputs, shown
from . import probe, register, writable


@register("output_shapes")
def trust_runtime_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass, noted as "output 'prob' declared [], computed ['N', 4]: shapes set from onnxruntime"."""
    wrong = [i for i, o in enumerate(model.graph.output) if o.type.HasField("tensor_type") and _undeclared(o)]
    if not wrong:
        return model, None
    try:
        computed = [v.shape for v in probe.run(model, probe.feeds(model))]
    except RuntimeError:
        return model, None  # the model does not run on a probe input: load's own checks say what is wrong
    batch = _symbolic_batch(model)
    model = writable(model)
    notes = []
    for i in wrong:
        out = model.graph.output[i]
        declared = shown(out)
        shape = out.type.tensor_type.shape
        shape.Clear()
        for j, d in enumerate(computed[i]):
            if j == 0 and batch:
                shape.dim.add().dim_param = "N"
            else:
                shape.dim.add().dim_value = d
        notes.append(f"output '{out.name}' declared {declared}, computed {shown(out)}")
    return model, "; ".join(notes) + ": shapes set from onnxruntime"


def _undeclared(out: onnx.ValueInfoProto) -> bool:
    t = out.type.tensor_type
    return not t.HasField("shape") or not t.shape.dim


def _symbolic_batch(model: onnx.ModelProto) -> bool:
    """Whether a rank-4 graph input (the image) leaves its batch symbolic."""
    return any(len(i.type.tensor_type.shape.dim) == 4 and i.type.tensor_type.shape.dim[0].dim_value < 1
               for i in graph_inputs(model.graph))
