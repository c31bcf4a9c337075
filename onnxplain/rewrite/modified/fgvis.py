"""FGVis's defence against adversarial evidence (Wagner et al. 2019): the gradient of each ReLU-like op passes only
where the explanation's activation stays between 0 and the image's, min(a⁰, 0) ≤ a(e) ≤ max(a⁰, 0); every other
op keeps its plain VJP rule.

a⁰, the activation of the original image, is a graph input of the rewritten graph, REFERENCE.format(a) for each
filtered output a, fed by the caller (`filtered_tensors` lists them). The condition is read on the op's output, the
activation the next layer sees; a ReLU-like output is ≥ 0, so it reads a(e) ≤ a⁰. Read on the pre-activation
instead it gives the same gradient: the plain rule passes the gradient only where 0 < x < max, and there the output
is the input x (and a clipped a⁰ above the cap bounds nothing x can reach there).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..autodiff import path_nodes
from ..composite import Composite
from ..graph import prepared
from ..rules import RULES
from ..rules.activation import shaped
from .guided import RELU_LIKE_OPS, relu_like

REFERENCE = "{}__reference"  # graph input holding the image's activation a⁰ of a filtered tensor


def filtered(node, dys, g):
    """dx = plain dx ⊙ 1[a(e) ≤ a⁰] at a ReLU-like op, a⁰ the new graph input REFERENCE.format(a)."""
    dx, *rest = RULES[node.op](node, dys, g)
    if not relu_like(node):
        return [dx, *rest]
    a = node.outputs[0]
    # symbolic dims, as the cotangent inputs: where ONNX shape inference and onnxruntime disagree, onnxruntime wins
    a0 = gs.Variable(REFERENCE.format(a.name), dtype=a.dtype or np.float32,
                     shape=None if a.shape is None else [f"{a.name}__reference_d{i}" for i in range(len(a.shape))])
    g.graph.inputs.append(a0)
    within = g.cast_like(g.Not(g.Greater(a, a0)), a)
    return [shaped(g.Mul(dx, within), a), *rest]


FILTER = Composite("fgvis_filter", rules=tuple((op, filtered) for op in RELU_LIKE_OPS))


def filtered_tensors(model: onnx.ModelProto, input_name: str, score: str) -> list[str]:
    """The outputs of the ReLU-like ops between the input and the score: the a⁰ a FILTER graph needs fed."""
    graph = prepared(model)  # as build sees it: Clip bounds computed from constants are constants
    tensors = graph.tensors()
    return [n.outputs[0].name for n in path_nodes(graph, [tensors[score]], [tensors[input_name]])
            if n.op in RELU_LIKE_OPS and relu_like(n)]
