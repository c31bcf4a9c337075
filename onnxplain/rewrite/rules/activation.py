"""VJP rules for pointwise activations: dx = dy * f'(x), written with the node's forward input x and output y.

Kinks follow torch: at x = 0 the derivative is that of the x <= 0 branch (Relu 0, LeakyRelu/PRelu the slope,
Elu/Selu/Celu their left limit); HardSigmoid and HardSwish take their flat pieces' derivatives at their corners;
Clip passes the gradient only strictly inside (min, max), like torch's hardtanh and ReLU6, which export to Clip
(torch.clamp would also pass it at x = min and x = max).

Relu and Clip read their masks off the output y, which keeps ORT's Conv+activation fusion, and build them in float32
from HardSigmoid and Mul (see `past`): ORT's NCHWc layout pass keeps both in its blocked layout, where comparisons,
Cast and And make it convert the layout before and after every mask (MobileNetV2's saliency graph: 103 layout
conversions, 12 with these masks, and 15-20% less time).
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import OnnxplainError
from ..builder import np_dtype, rank_of
from . import optional_input, vjp


def pointwise(*ops, **kw):
    """Register `deriv(g, c, x, y, attrs) -> f'(x)` as the rule dx = dy * f'(x); `c(v)` is a constant typed like x."""
    def register(deriv):
        @vjp(*ops, **kw)
        def rule(node, dys, g):
            x, y = node.inputs[0], node.outputs[0]
            return [shaped(g.Mul(dys[0], deriv(g, lambda v: g.const(v, like=x), x, y, node.attrs)), x)]
        return deriv
    return register


def shaped(t, like):
    """`t` declared with the shape and dtype of `like`. ORT keeps Mul(dy, mask) in its NCHWc layout only if it can
    prove both operands the same shape, which its inference does not give a cotangent (fed with its own symbolic
    sizes, or broadcast by an Expand); declared at each activation, the convolutions in between propagate it."""
    t.shape, t.dtype = like.shape, like.dtype
    return t


def step(g, x):
    """1 where x > 0, else 0."""
    return g.cast_like(g.Greater(x, g.const(0, like=x)), x)


def past(g, y, bound, side: int):
    """1 where y is strictly beyond `bound` (side 1: above it, -1: below it), 0 at it, for y clipped to that side.

    In float32: HardSigmoid(side s (y - bound)), s the least power of two >= 1 that lifts the gap between the bound
    and the next float beyond it to >= 1. s y and s bound are exact (or s y overflows, far past the bound), so the
    sum is 0 at the bound and rounds to >= 1 past it. Near 0 floats are 2^-149 apart, and alpha is a float32: with
    s = 2^127 at most, a bound of 0 (or a subnormal one) gives the mask 2^127 |y - bound| < 1, not 1, for the
    subnormal y less than 2^-127 past it. Other dtypes, and bounds known only at run time, compare.
    """
    b = bound.values if isinstance(bound, gs.Constant) else bound
    if np_dtype(y) == np.float32 and not isinstance(b, gs.Tensor) and np.size(b) == 1 and np.isfinite(b).all():
        b = float(np.float32(np.reshape(b, ())))
        gap = abs(float(np.nextafter(np.float32(b), np.float32(side * np.inf))) - b)
        s = side * 2.0 ** min(127, max(0, -math.log2(gap)))
        if abs(s * b) <= np.finfo(np.float32).max:
            return g.HardSigmoid(y, alpha=s, beta=-s * b)
    keep = g.Greater if side > 0 else g.Less
    return g.cast_like(keep(y, bound if isinstance(bound, gs.Tensor) else g.const(b, like=y)), y)


def equal(g, a, b, like):
    """1 where a == b, else 0, typed like `like` (Equal takes floats only from opset 11)."""
    return g.cast_like(g.Not(g.Or(g.Less(a, b), g.Greater(a, b))), like)


def _positive(g, x, then, otherwise):
    """then where x > 0, otherwise elsewhere (arithmetic: Where needs opset 9)."""
    return g.Add(otherwise, g.Mul(step(g, x), g.Sub(then, otherwise)))


@pointwise("Relu")
def relu(g, c, x, y, a):
    return past(g, y, 0, 1)


@pointwise("LeakyRelu")
def leaky_relu(g, c, x, y, a):
    return _positive(g, x, c(1), c(a.get("alpha", 0.01)))


@pointwise("Elu")
def elu(g, c, x, y, a):
    return _positive(g, x, c(1), g.Add(y, c(a.get("alpha", 1.0))))


@pointwise("Selu")
def selu(g, c, x, y, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return _positive(g, x, c(gamma), g.Add(y, c(alpha * gamma)))


@pointwise("Celu")
def celu(g, c, x, y, a):
    return _positive(g, x, c(1), g.Add(g.Div(y, c(a.get("alpha", 1.0))), c(1)))


@pointwise("Sigmoid")
def sigmoid(g, c, x, y, a):
    return g.Mul(y, g.Sub(c(1), y))


@pointwise("HardSigmoid")
def hard_sigmoid(g, c, x, y, a):
    inside = g.And(g.Greater(y, c(0)), g.Less(y, c(1)))
    return g.Mul(c(a.get("alpha", 0.2)), g.cast_like(inside, x))


@pointwise("HardSwish")
def hard_swish(g, c, x, y, a):  # y = x h(x), h = HardSigmoid(alpha=1/6, beta=1/2): y' = h + x h'
    h = g.HardSigmoid(x, alpha=1 / 6, beta=0.5)
    return g.Add(h, g.Mul(x, hard_sigmoid(g, c, x, h, {"alpha": 1 / 6})))


@pointwise("Swish")
def swish(g, c, x, y, a):  # y = x s, s = sigmoid(alpha x): y' = s + alpha x s (1 - s)
    alpha = a.get("alpha", 1.0)
    s = g.Sigmoid(g.Mul(c(alpha), x))
    return g.Add(s, g.Mul(g.Mul(c(alpha), x), g.Mul(s, g.Sub(c(1), s))))


@pointwise("Softsign")
def softsign(g, c, x, y, a):  # y = x / (1 + |x|): y' = 1 / (1 + |x|)²
    r = g.Sub(c(1), g.Abs(y))  # 1 - |y| = 1 / (1 + |x|)
    return g.Mul(r, r)


@pointwise("ThresholdedRelu")
def thresholded_relu(g, c, x, y, a):  # y = x where x > alpha, else 0
    return g.cast_like(g.Greater(x, c(a.get("alpha", 1.0))), x)


@pointwise("Shrink")
def shrink(g, c, x, y, a):  # y = x ∓ bias where |x| > lambd, else 0 (torch's hard and soft shrink)
    return g.cast_like(g.Greater(g.Abs(x), c(a.get("lambd", 0.5))), x)


@pointwise("Tanh")
def tanh(g, c, x, y, a):
    return g.Sub(c(1), g.Mul(y, y))


@pointwise("Erf")
def erf(g, c, x, y, a):
    return g.Mul(c(2 / math.sqrt(math.pi)), g.Exp(g.Neg(g.Mul(x, x))))


@pointwise("Softplus")
def softplus(g, c, x, y, a):
    return g.Sigmoid(x)


@pointwise("Gelu")
def gelu(g, c, x, y, a):
    if a.get("approximate", "none") == "tanh":  # y = x/2 (1 + t), t = tanh(k (x + 0.044715 x^3))
        k, x2 = math.sqrt(2 / math.pi), g.Mul(x, x)
        t = g.Tanh(g.Mul(c(k), g.Mul(x, g.Add(c(1), g.Mul(c(0.044715), x2)))))
        du = g.Mul(c(k), g.Add(c(1), g.Mul(c(3 * 0.044715), x2)))
        return g.Mul(c(0.5), g.Add(g.Add(c(1), t), g.Mul(g.Mul(x, g.Sub(c(1), g.Mul(t, t))), du)))
    cdf = g.Mul(c(0.5), g.Add(c(1), g.Erf(g.Mul(x, c(math.sqrt(0.5))))))  # y = x Phi(x): y' = Phi + x phi
    pdf = g.Mul(c(1 / math.sqrt(2 * math.pi)), g.Exp(g.Mul(c(-0.5), g.Mul(x, x))))
    return g.Add(cdf, g.Mul(x, pdf))


@pointwise("Mish")
def mish(g, c, x, y, a):  # y = x t, t = tanh(softplus(x)): y' = t + x (1 - t^2) sigmoid(x)
    t = g.Tanh(g.Softplus(x))
    return g.Add(t, g.Mul(g.Mul(x, g.Sub(c(1), g.Mul(t, t))), g.Sigmoid(x)))


@vjp("PRelu")
def prelu(node, dys, g):
    (x, slope), (y,), (dy,) = node.inputs, node.outputs, dys
    dslope = g.unbroadcast(g.Mul(dy, g.Sub(x, g.Relu(x))), slope, y) if g.needs(slope) else None  # dy min(x, 0)
    return [g.Mul(dy, _positive(g, x, g.const(1, like=x), slope)), dslope]


@vjp("Clip")
def clip(node, dys, g):
    """dx = dy where min < x < max, read off the output y (min < y < max there, y = a bound elsewhere) so that the
    forward Conv+Clip fusion survives; bounds are attributes before opset 11, optional inputs after."""
    y, dy = node.outputs[0], dys[0]
    if any(g.needs(t) for t in node.inputs[1:]):
        raise OnnxplainError(f"Clip node '{node.name}' has bounds computed from the input, which is not supported")
    lo, hi = node.attrs.get("min", optional_input(node, 1)), node.attrs.get("max", optional_input(node, 2))
    masks = [past(g, y, bound, side) for bound, side in ((lo, 1), (hi, -1)) if bound is not None]
    if not masks:
        return [dy]
    return [shaped(g.Mul(dy, masks[0] if len(masks) == 1 else g.Mul(*masks)), y)]


def _softmax_axes(node, g):
    """Softmax's axes: from opset 13 one axis (default -1); before, every axis from `axis` (default 1) on."""
    rank = rank_of(node.inputs[0])
    axis = node.attrs.get("axis", -1 if g.opset >= 13 else 1) % rank
    return [axis] if g.opset >= 13 else list(range(axis, rank))


@vjp("Softmax")
def softmax(node, dys, g):
    (y,), (dy,) = node.outputs, dys
    return [g.Mul(y, g.Sub(dy, g.reduce_sum(g.Mul(dy, y), _softmax_axes(node, g))))]


@vjp("LogSoftmax")
def log_softmax(node, dys, g):
    (y,), (dy,) = node.outputs, dys
    return [g.Sub(dy, g.Mul(g.Exp(y), g.reduce_sum(dy, _softmax_axes(node, g))))]
