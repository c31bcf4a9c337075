"""VJP rules for Gemm, MatMul, Einsum and the Reduce* ops.

ReduceMax and ReduceMin split the gradient evenly among tied extrema, as torch.amax / torch.amin do; ReduceL1 takes
sign(0) = 0, and ReduceProd is exact where inputs are zero.
"""
from __future__ import annotations

from ...errors import OnnxplainError
from ..builder import rank_of, shape_of
from . import constant_input, optional_input, vjp
from .activation import equal
from .elementwise import sign


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
    xb = list(shape_of(x)[:-2])
    lead = len(batch) - len(xb)
    axes = [i for i, d in enumerate(batch) if i < lead or (xb[i - lead] == 1 and d != 1)]
    grad = g.reduce_sum(grad, axes) if axes else grad
    return grad if len(batch) + 2 == rank_of(x) else g.Reshape(grad, g.Shape(x))


@vjp("MatMul")
def matmul(node, dys, g):
    """NumPy matmul: 1-D operands become (1, K) and (K, 1), batch dims broadcast; dA = dY B^T, dB = A^T dY."""
    (a, b), (y,), (dy,) = node.inputs, node.outputs, dys
    ra, rb = rank_of(a), rank_of(b)
    r = max(ra, rb, 2)
    a2 = a if ra > 1 else g.unsqueeze(a, [0])
    b2 = b if rb > 1 else g.unsqueeze(b, [1])
    gone = [r - 2] * (ra == 1) + [r - 1] * (rb == 1)  # axes of the (..., M, N) product that y dropped
    dy = g.unsqueeze(dy, gone) if gone else dy
    batch = list(shape_of(y)[:r - 2])
    da = _sum_batch(g, g.MatMul(dy, _swap_last(g, b2, max(rb, 2))), a, batch) if g.needs(a) else None
    db = _sum_batch(g, g.MatMul(_swap_last(g, a2, max(ra, 2)), dy), b, batch) if g.needs(b) else None
    return [da, db]


def _einsum_terms(node) -> tuple[list[str], str]:
    """Each operand's subscripts and the output's, explicit: an ellipsis becomes letters of its own (right-aligned,
    as it broadcasts), and an implicit output is the letters used once, in alphabetical order, after the ellipsis."""
    eq = node.attrs["equation"].replace(" ", "")
    ins, out = eq.split("->") if "->" in eq else (eq, None)
    terms = ins.split(",")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq]
    dots = max((rank_of(x) - len(t) + 3 for t, x in zip(terms, node.inputs) if "..." in t), default=0)
    ell = "".join(spare[:dots])
    terms = [t.replace("...", ell[dots - (rank_of(x) - len(t) + 3):]) for t, x in zip(terms, node.inputs)]
    if out is None:
        letters = "".join(terms)
        out = ell + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ell))
    return terms, out.replace("...", ell)


def _widened(node, terms, letter) -> bool:
    """Whether some operand gives `letter` a size other than 1, to which operands of size 1 there broadcast."""
    return any(shape_of(x)[t.index(letter)] != 1 for t, x in zip(terms, node.inputs) if letter in t)


@vjp("Einsum", min_opset=12)
def einsum(node, dys, g):
    """Operand i's cotangent is the einsum of dy with the other operands into i's subscripts; letters that only i
    has were summed over in the forward, so its cotangent is broadcast along them."""
    terms, out = _einsum_terms(node)
    grads = []
    for i, x in enumerate(node.inputs):
        if not g.needs(x):
            grads.append(None)
            continue
        term, others = terms[i], terms[:i] + terms[i + 1:]
        if len(set(term)) < len(term):
            raise OnnxplainError(f"Einsum node '{node.name}' takes a diagonal of operand {i} ('{term}'), whose "
                                 "gradient is not supported")
        seen = set(out).union(*others)
        kept = "".join(c for c in term if c in seen)
        dx = g.Einsum(dys[0], *node.inputs[:i], *node.inputs[i + 1:], equation=f"{','.join([out, *others])}->{kept}")
        if kept != term:
            dx = g.Expand(g.unsqueeze(dx, [k for k, c in enumerate(term) if c not in seen]), g.Shape(x))
        wide = [k for k, c in enumerate(term) if shape_of(x)[k] == 1 and _widened(node, terms, c)]
        grads.append(g.reduce_sum(dx, wide) if wide else dx)  # ellipsis axes that x broadcast
    return grads


def _reduced_axes(node, x):
    """The axes a Reduce* node reduces (attribute, or input from opset 13/18), or None when it is the identity."""
    axes = node.attrs["axes"] if "axes" in node.attrs else constant_input(node, 1)
    if axes is None or len(axes) == 0:
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank_of(x)))
    return sorted(int(a) % rank_of(x) for a in axes)


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


@reduction("ReduceL1")
def reduce_l1(g, x, y, dy, axes):
    return g.Mul(dy, sign(g, x))


@reduction("ReduceSumSquare")
def reduce_sum_square(g, x, y, dy, axes):
    return g.Mul(dy, g.Mul(x, g.const(2, like=x)))


@reduction("ReduceLogSumExp")
def reduce_log_sum_exp(g, x, y, dy, axes):
    return g.Mul(dy, g.Exp(g.Sub(x, y)))


@reduction("ReduceLogSum", min_opset=8)
def reduce_log_sum(g, x, y, dy, axes):  # y = log sum x: dx = dy / sum x
    return g.Expand(g.Div(dy, g.Exp(y)), g.Shape(x))


@reduction("ReduceProd")
def reduce_prod(g, x, y, dy, axes):
    """dx_i = dy · (product of the others): y / x_i without zeros; where one x is 0, the product of the rest at it
    and 0 elsewhere; 0 everywhere with two zeros or more (as torch)."""
    is_zero = equal(g, x, g.const(0, like=x), x)
    zeros = g.reduce_sum(is_zero, axes)
    nonzero = g.Add(x, is_zero)  # x with its zeros set to 1
    others = g.Div(g.reduce("ReduceProd", nonzero, axes), nonzero)  # the product of the other nonzero x
    live = g.Add(equal(g, zeros, g.const(0, like=x), x), g.Mul(equal(g, zeros, g.const(1, like=x), x), is_zero))
    return g.Mul(dy, g.Mul(others, live))  # live: 1 in groups without zeros, and at a group's only zero
