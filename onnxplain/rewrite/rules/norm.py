"""VJP rules for normalisation: BatchNormalization (inference), InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization.

Instance and layer norm recompute xhat = (x - mean) / sqrt(var + eps) over their axes and use
dx = (d - mean(d) - xhat mean(d xhat)) / sqrt(var + eps) with d = dy * scale; scale and bias get sum(dy xhat), sum(dy).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import OnnxplainError
from ..builder import rank_of
from . import optional_input, vjp


def _per_channel(g, v, ndim, like):
    """A parameter of `ndim` axes (C, ...), numpy or tensor, with unit axes appended to broadcast over `like`."""
    v = v.values if isinstance(v, gs.Constant) else v
    units = rank_of(like) - 1 - ndim
    if isinstance(v, np.ndarray):
        return g.const(v.reshape(v.shape + (1,) * units), like=like)
    return g.unsqueeze(v, range(ndim, ndim + units)) if units else v


@vjp("BatchNormalization")
def batch_norm(node, dys, g):
    """Inference mode: y = (x - mean) k + bias with k = scale / sqrt(var + eps), so dx = dy k."""
    (x, scale, bias, mean, var), dy = node.inputs, dys[0]
    if node.attrs.get("training_mode", 0) or any(d is not None for d in dys[1:]):
        raise OnnxplainError(f"BatchNormalization node '{node.name}' runs in training mode, which is not supported")
    if g.needs(mean) or g.needs(var):
        raise OnnxplainError(f"BatchNormalization node '{node.name}' has a mean or variance computed from the input, "
                             "which is not supported")
    rank, eps, ndim = rank_of(x), node.attrs.get("epsilon", 1e-5), rank_of(scale)

    def channel(v):  # parameters are (C,), or (C, D1, ...) with spatial=0 before opset 9
        return _per_channel(g, v, ndim, x)

    if isinstance(scale, gs.Constant) and isinstance(var, gs.Constant):  # the usual case: fold k in numpy
        inv = 1 / np.sqrt(var.values.astype(np.float64) + eps)
        k, inv = channel(scale.values * inv), channel(inv)
    else:
        inv = channel(g.Reciprocal(g.Sqrt(g.Add(var, g.const(eps, like=var)))))
        k = g.Mul(channel(scale), inv)
    axes = [0, *range(1 + ndim, rank)]  # all but the channel axes
    xhat = g.Mul(g.Sub(x, channel(mean)), inv)
    dscale = g.reduce_sum(g.Mul(dy, xhat), axes, keepdims=False) if g.needs(scale) else None
    dbias = g.reduce_sum(dy, axes, keepdims=False) if g.needs(bias) else None
    return [g.Mul(dy, k), dscale, dbias]


def _standardize(g, x, axes, eps):
    """xhat = (x - mean) / sqrt(var + eps) over `axes`, and 1 / sqrt(var + eps)."""
    xc = g.Sub(x, g.reduce_mean(x, axes))
    inv = g.Reciprocal(g.Sqrt(g.Add(g.reduce_mean(g.Mul(xc, xc), axes), g.const(eps, like=x))))
    return g.Mul(xc, inv), inv


def _standardize_vjp(g, d, xhat, inv, axes):
    """The cotangent of x given the cotangent d of xhat."""
    centred = g.Sub(d, g.reduce_mean(d, axes))
    return g.Mul(inv, g.Sub(centred, g.Mul(xhat, g.reduce_mean(g.Mul(d, xhat), axes))))


@vjp("InstanceNormalization")
def instance_norm(node, dys, g):
    (x, scale, bias), dy = node.inputs, dys[0]
    rank = rank_of(x)
    axes = list(range(2, rank))
    xhat, inv = _standardize(g, x, axes, node.attrs.get("epsilon", 1e-5))
    dx = _standardize_vjp(g, g.Mul(dy, _per_channel(g, scale, 1, x)), xhat, inv, axes)
    dscale = g.reduce_sum(g.Mul(dy, xhat), [0, *axes], keepdims=False) if g.needs(scale) else None
    dbias = g.reduce_sum(dy, [0, *axes], keepdims=False) if g.needs(bias) else None
    return [dx, dscale, dbias]


@vjp("LayerNormalization")
def layer_norm(node, dys, g):
    (x, scale), bias, (y, *_), dy = node.inputs[:2], optional_input(node, 2), node.outputs, dys[0]
    if any(d is not None for d in dys[1:]):
        raise OnnxplainError(f"LayerNormalization node '{node.name}' has its Mean or InvStdDev output used, "
                             "which is not supported")
    rank = rank_of(x)
    axes = list(range(node.attrs.get("axis", -1) % rank, rank))
    xhat, inv = _standardize(g, x, axes, node.attrs.get("epsilon", 1e-5))
    dx = _standardize_vjp(g, g.Mul(dy, scale), xhat, inv, axes)
    dscale = g.unbroadcast(g.Mul(dy, xhat), scale, y) if g.needs(scale) else None
    dbias = g.unbroadcast(dy, bias, y) if bias is not None and g.needs(bias) else None
    return [dx, dscale, dbias]


@vjp("GroupNormalization")
def group_norm(node, dys, g):
    """Instance norm over (channels of a group, spatial axes) of x viewed as (N, G, C/G · spatial), then per-channel
    scale and bias (opset 21; the checker refuses opset 18's per-group form, deprecated)."""
    (x, scale, bias), dy = node.inputs, dys[0]
    grouped = g.Reshape(x, g.ints([0, node.attrs["num_groups"], -1]))
    grouped.dtype = x.dtype  # for the constants _standardize makes like it
    xhat, inv = _standardize(g, grouped, [2], node.attrs.get("epsilon", 1e-5))
    d = g.Reshape(g.Mul(dy, _per_channel(g, scale, 1, x)), g.Shape(grouped))
    dx = g.Reshape(_standardize_vjp(g, d, xhat, inv, [2]), g.Shape(x))
    xhat = g.Reshape(xhat, g.Shape(x))
    axes = [0, *range(2, rank_of(x))]
    dscale = g.reduce_sum(g.Mul(dy, xhat), axes, keepdims=False) if g.needs(scale) else None
    dbias = g.reduce_sum(dy, axes, keepdims=False) if g.needs(bias) else None
    return [dx, dscale, dbias]


@vjp("RMSNormalization")
def rms_norm(node, dys, g):
    """y = x r · scale, r = 1 / sqrt(mean(x²) + eps) over the axes from `axis` on: dx = r (d - x r mean(d x r)),
    d = dy · scale."""
    (x, scale), dy = node.inputs, dys[0]
    axes = list(range(node.attrs.get("axis", -1) % rank_of(x), rank_of(x)))
    inv = g.Reciprocal(g.Sqrt(g.Add(g.reduce_mean(g.Mul(x, x), axes), g.const(node.attrs.get("epsilon", 1e-5),
                                                                               like=x))))
    xhat, d = g.Mul(x, inv), g.Mul(dy, scale)
    dx = g.Mul(inv, g.Sub(d, g.Mul(xhat, g.reduce_mean(g.Mul(d, xhat), axes))))
    dscale = g.unbroadcast(g.Mul(dy, xhat), scale, node.outputs[0]) if g.needs(scale) else None
    return [dx, dscale]
