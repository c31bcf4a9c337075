"""Straight-through gradients of quantised models (static QDQ and dynamic quantisation).

Quantisation is piecewise constant, so its exact gradient is zero almost everywhere. The straight-through estimator,
the standard one for quantised nets (Bengio et al. 2013; Jacob et al. 2018), differentiates q = saturate(round(x / s)
+ z) as if it were x / s + z inside the representable range of q's type, and as a constant outside it (where
saturation clips). An integer tensor on such a path carries the cotangent of its integer value: dx = dq / s · 1[in
range] at a QuantizeLinear, dq = dy · s at a DequantizeLinear, so a Q/DQ pair passes dy where x is in range and zero
outside. DynamicQuantizeLinear's scale and zero point, computed from x's range, are treated as constants (its range
holds x, so the mask is 1). ConvInteger and MatMulInteger are linear in their integer input, with the float weights
w - w_zero_point.

These ops carry a gradient only with the estimator on (`STRAIGHT_THROUGH`, passed to the walk by `build`); with
`quantized="exact"` the walk stops at their integer outputs and says that the gradient is zero.
"""
from __future__ import annotations

import numpy as np

from ...errors import OnnxplainError
from ..builder import rank_of
from . import constant_input, optional_input, vjp
from .conv import _kernel, conv_input_grad, window

# ops whose integer outputs carry a cotangent under the straight-through estimator
STRAIGHT_THROUGH = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})
QUANTISERS = ("QuantizeLinear", "DynamicQuantizeLinear")  # the ops that round activations
RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767), "uint4": (0, 15),
          "int4": (-8, 7)}  # the integer types a QuantizeLinear may give; float8 outputs saturate to their own range


def _per_axis(g, v, node, x):
    """A scale or zero point `v` shaped to broadcast against `x` along the node's axis (per-tensor stays scalar)."""
    if node.attrs.get("block_size", 0):
        raise OnnxplainError(f"{node.op} '{node.name}' quantises by blocks; its straight-through gradient is not "
                             "supported (use quantized='exact' and a black-box method)")
    if v.shape is None or len(v.shape) == 0 or (len(v.shape) == 1 and v.shape[0] == 1):
        return v
    rank, axis = rank_of(x), node.attrs.get("axis", 1)
    axis = axis % rank
    return g.Reshape(v, g.ints([-1] + [1] * (rank - 1 - axis)))


def _range(q) -> tuple[int, int] | None:
    """The integer range of q's type (uint8 when unknown, the default; None for a float8 type)."""
    return RANGES["uint8"] if q.dtype is None else RANGES.get(np.dtype(q.dtype).name)


@vjp("QuantizeLinear")
def quantize(node, dys, g):
    """dx = dq / s · 1[qmin ≤ round(x / s) + z ≤ qmax]."""
    x, (q,), (dq,) = node.inputs[0], node.outputs, dys
    s = _per_axis(g, node.inputs[1], node, x)
    z = optional_input(node, 2)
    scaled = g.Div(x, s)
    dx = g.Div(dq, s)
    bounds = _range(q)
    if bounds is None:
        return [dx, None, None][:len(node.inputs)]
    level = g.Round(scaled)
    if z is not None:
        level = g.Add(level, g.cast_like(_per_axis(g, z, node, x), x))
    inside = g.And(g.GreaterOrEqual(level, g.const(float(bounds[0]), like=x)),
                   g.LessOrEqual(level, g.const(float(bounds[1]), like=x)))
    return [g.Mul(dx, g.cast_like(inside, x)), None, None][:len(node.inputs)]


@vjp("DequantizeLinear")
def dequantize(node, dys, g):
    """y = (q - z) · s: dq = dy · s."""
    q, (dy,) = node.inputs[0], dys
    return [g.Mul(dy, _per_axis(g, node.inputs[1], node, q)), None, None][:len(node.inputs)]


@vjp("DynamicQuantizeLinear")
def dynamic_quantize(node, dys, g):
    """y = saturate(round(x / s) + z), s and z from x's range (constants here): dx = dy / s."""
    dy = dys[0]
    return [None if dy is None else g.Div(dy, node.outputs[1])]


def _float_weight(node, i, zero_point_index):
    """The float values w - w_zero_point of a constant integer weight input (per output channel or per tensor)."""
    w = constant_input(node, i).astype(np.float32)
    z = constant_input(node, zero_point_index) if optional_input(node, zero_point_index) is not None else None
    if z is not None:
        z = z.astype(np.float32)
        w = w - (z.reshape(-1, *[1] * (w.ndim - 1)) if node.op == "ConvInteger" and z.size > 1 else z)
    return w


@vjp("ConvInteger")
def conv_integer(node, dys, g):
    """y = Conv(x - x_zero_point, w - w_zero_point) in int32: dx = Conv's input gradient with the float weights."""
    x, w = node.inputs[:2]
    win = window(node, _kernel(node, w))
    dx = conv_input_grad(g, dys[0], _float_weight(node, 1, 3), win, node.attrs.get("group", 1))
    return [dx] + [None] * (len(node.inputs) - 1)


@vjp("MatMulInteger")
def matmul_integer(node, dys, g):
    """y = (a - a_zero_point)(b - b_zero_point), b a constant matrix: da = dy (b - b_zero_point)^T."""
    b = _float_weight(node, 1, 3)
    if b.ndim != 2:
        raise OnnxplainError(f"MatMulInteger '{node.name}': its straight-through gradient needs a 2-D constant B")
    return [g.MatMul(dys[0], g.const(np.ascontiguousarray(b.T)))] + [None] * (len(node.inputs) - 1)
