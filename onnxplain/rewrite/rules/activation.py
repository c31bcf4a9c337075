"""VJP rules for pointwise activations: dx = dy * f'(x), written with the forward tensors of the node."""
from __future__ import annotations

from . import vjp


def _mask(g, cond, like):
    return g.cast_like(cond, like)


@vjp("Relu")
def relu(node, dys, g):
    (x,), (y,), (dy,) = node.inputs, node.outputs, dys
    return [g.Mul(dy, _mask(g, g.Greater(x, g.const(0, like=x)), x))]
