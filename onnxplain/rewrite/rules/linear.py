"""VJP rules for Gemm, MatMul and the Reduce* ops.

ReduceMax and ReduceMin split the gradient evenly among tied extrema, as torch.amax / torch.amin do.
"""
from __future__ import annotations

from . import constant_input, optional_input, vjp
from .activation import equal


@vjp("Gemm")
def gemm(node, dys, g):
    """Y = alpha A' B' + beta C with A' = A or A^T, B' = B or B^T: dA' = alpha dY B'^T, dB' = alpha A'^T dY."""
    (a, b), c, (y,), (dy,) = node.inputs[:2], optional_input(node, 2), node.outputs, dys
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    ta, tb = node.attrs.get("transA", 0), node.attrs.get("transB", 0)

    def product(p, q, **trans):  # Gemm's C is optional from opset 11 only
        return g.Gemm(p, q, *([] if g.opset >= 11 else [g.const(0, like=y)]), alpha=alpha, **trans)

    da = product(b, dy, transA=tb, transB=1) if ta else product(dy, b, transB=1 - tb)
    db = product(dy, a, transA=1, transB=ta) if tb else product(a, dy, transA=1 - ta)
    dc = g.unbroadcast(g.Mul(dy, g.const(beta, like=y)), c, y) if c is not None and g.needs(c) else None
    return [da, db, dc]


def _swap_last(g, t, rank):
    return g.Transpose(t, perm=[*range(rank - 2), rank - 1, rank - 2])


def _sum_batch(g, grad, x, batch):
    """Sum `grad` (shaped batch + x's two matrix dims) over the batch axes x was broadcast along, to x's shape."""
    xb = list(x.shape[:-2])
    lead = len(batch) - len(xb)
    axes = [i for i, d in enumerate(batch) if i < lead or (xb[i - lead] == 1 and d != 1)]
    grad = g.reduce_sum(grad, axes) if axes else grad
    return grad if len(batch) + 2 == len(x.shape) else g.Reshape(grad, g.Shape(x))


@vjp("MatMul")
def matmul(node, dys, g):
    """NumPy matmul: 1-D operands become (1, K) and (K, 1), batch dims broadcast; dA = dY B^T, dB = A^T dY."""
    (a, b), (y,), (dy,) = node.inputs, node.outputs, dys
    ra, rb = len(a.shape), len(b.shape)
    r = max(ra, rb, 2)
    a2 = a if ra > 1 else g.unsqueeze(a, [0])
    b2 = b if rb > 1 else g.unsqueeze(b, [1])
    gone = [r - 2] * (ra == 1) + [r - 1] * (rb == 1)  # axes of the (..., M, N) product that y dropped
    dy = g.unsqueeze(dy, gone) if gone else dy
    batch = list(y.shape[:r - 2])
    da = _sum_batch(g, g.MatMul(dy, _swap_last(g, b2, max(rb, 2))), a, batch) if g.needs(a) else None
    db = _sum_batch(g, g.MatMul(_swap_last(g, a2, max(ra, 2)), dy), b, batch) if g.needs(b) else None
    return [da, db]


def _reduced_axes(node, x):
    """The axes a Reduce* node reduces (attribute, or input from opset 13/18), or None when it is the identity."""
    axes = node.attrs["axes"] if "axes" in node.attrs else constant_input(node, 1)
    if axes is None or len(axes) == 0:
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(len(x.shape)))
    return sorted(int(a) % len(x.shape) for a in axes)


def reduction(*ops, **kw):
    """Register `local(g, x, y, dy, axes) -> dx` for Reduce* ops; y and dy arrive with the reduced axes kept."""
    def register(local):
        @vjp(*ops, **kw)
        def rule(node, dys, g):
            x, y, dy = node.inputs[0], node.outputs[0], dys[0]
            axes = _reduced_axes(node, x)
            if axes is None:
                return [dy]
            if not node.attrs.get("keepdims", 1):
                y, dy = g.unsqueeze(y, axes), g.unsqueeze(dy, axes)
            return [local(g, x, y, dy, axes)]
        return local
    return register


@reduction("ReduceSum", min_opset=8)  # Expand
def reduce_sum(g, x, y, dy, axes):
    return g.Expand(dy, g.Shape(x))


@reduction("ReduceMean", min_opset=8)
def reduce_mean(g, x, y, dy, axes):
    count = g.cast_like(g.Div(g.Size(x), g.Size(y)), x)
    return g.Expand(g.Div(dy, count), g.Shape(x))


@reduction("ReduceMax", "ReduceMin")
def reduce_extremum(g, x, y, dy, axes):
    hits = equal(g, x, y, x)
    return g.Mul(g.Div(dy, g.reduce_sum(hits, axes)), hits)


@reduction("ReduceL2")
def reduce_l2(g, x, y, dy, axes):
    return g.Mul(dy, g.Div(x, y))
