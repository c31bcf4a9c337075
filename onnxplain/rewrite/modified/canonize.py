"""Canonizers (Zennit's term): model rewrites that put a network in the form its LRP rules assume, applied before
any rule. proto → proto, so a Composite lists them as they are.

`fold_batch_norm` merges an inference BatchNormalization into the Conv that feeds it, as Zennit's MergeBatchNorm:
y = k ⊙ (W x + b − μ) + β with k = γ / √(σ² + ε) is the Conv with weight k ⊙ W (per output channel) and bias
k ⊙ (b − μ) + β. It folds only where that is the same model: the Conv's output feeds nothing but the BatchNorm (and is
not a model output), and every parameter is a constant. A BatchNorm on any other tensor (DenseNet's pre-activation
BN on a concatenation, or on a Conv output that also feeds a skip) stays, and the LRP composites pass relevance
through it.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import lift_constants


def fold_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each BatchNormalization that alone reads a Conv's output merged into that Conv."""
    graph = gs.import_onnx(model)
    lift_constants(graph)
    folded = [bn for bn in graph.nodes if bn.op == "BatchNormalization" and _fold(graph, bn)]
    if not folded:
        return model
    graph.cleanup(remove_unused_graph_inputs=False)
    return gs.export_onnx(graph, do_type_check=False)


def _fold(graph: gs.Graph, bn: gs.Node) -> bool:
    """Merge `bn` into the Conv producing its input, if it can be done without changing the model."""
    x = bn.inputs[0]
    conv = x.inputs[0] if len(x.inputs) == 1 else None
    if (conv is None or conv.op != "Conv" or len(x.outputs) != 1 or x in graph.outputs
            or bn.attrs.get("training_mode", 0) or len(bn.outputs) != 1
            or not all(isinstance(t, gs.Constant) for t in conv.inputs[1:] + bn.inputs[1:5])):
        return False
    w = conv.inputs[1].values
    scale, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
    if scale.shape != (w.shape[0],):  # per-channel parameters only (not the spatial ones of opset < 9)
        return False
    k = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    b = conv.inputs[2].values.astype(np.float64) if len(conv.inputs) > 2 else 0.0
    y = bn.outputs[0]
    weight = gs.Constant(f"{y.name}/folded_weight", (w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype))
    bias = gs.Constant(f"{y.name}/folded_bias", (k * (b - mean) + beta).astype(w.dtype))
    data = conv.inputs[0]
    for io in (conv.inputs, conv.outputs, bn.outputs):  # graphsurgeon's lists keep tensors' links in sync
        io.clear()
    conv.inputs.extend([data, weight, bias])
    conv.outputs.append(y)
    return True
