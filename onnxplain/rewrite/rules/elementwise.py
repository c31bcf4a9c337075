"""VJP rules for elementwise arithmetic with NumPy broadcasting: each input's cotangent is summed back to its shape.

Max and Min split the gradient evenly among inputs that tie for the result, as torch.maximum / torch.minimum do.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from . import vjp
from .activation import equal, pointwise, step


def _unbroadcast(g, node, *grads):
    """Each input's gradient summed back to its shape; None for inputs off the path."""
    y = node.outputs[0]
    return [g.unbroadcast(d, x, y) if d is not None and g.needs(x) else None for x, d in zip(node.inputs, grads)]


@vjp("Add", "Sum")
def add(node, dys, g):
    return _unbroadcast(g, node, *[dys[0]] * len(node.inputs))


@vjp("Mean")
def mean(node, dys, g):
    return _unbroadcast(g, node, *[g.Div(dys[0], g.const(len(node.inputs), like=node.outputs[0]))] * len(node.inputs))


@vjp("Sub")
def sub(node, dys, g):
    return _unbroadcast(g, node, dys[0], g.Neg(dys[0]))


@vjp("Mul")
def mul(node, dys, g):
    (a, b), (dy,) = node.inputs, dys
    return _unbroadcast(g, node, g.Mul(dy, b), g.Mul(dy, a))


@vjp("Div")
def div(node, dys, g):
    (_, b), (y,), (dy,) = node.inputs, node.outputs, dys
    da = g.Div(dy, b)
    return _unbroadcast(g, node, da, g.Neg(g.Mul(da, y)))


@vjp("Pow")
def pow_(node, dys, g):
    """dx = dy p x^(p-1), dp = dy y log(x); a constant exponent is folded in numpy."""
    (x, p), (y,), (dy,) = node.inputs, node.outputs, dys
    if isinstance(p, gs.Constant):
        p, p_1 = g.const(p.values, like=x), g.const(p.values - 1, like=x)
    else:
        p = g.cast_like(p, x)
        p_1 = g.Sub(p, g.const(1, like=x))
    return _unbroadcast(g, node, g.Mul(dy, g.Mul(p, g.Pow(x, p_1))), g.Mul(dy, g.Mul(y, g.Log(x))))


@vjp("Max", "Min")
def extremum(node, dys, g):
    (y,), (dy,) = node.outputs, dys
    hits = [equal(g, x, y, y) for x in node.inputs]
    share = g.Div(dy, g.Sum(*hits))
    return _unbroadcast(g, node, *[g.Mul(share, h) for h in hits])


@vjp("Where")
def where(node, dys, g):
    cond, (dy,) = node.inputs[0], dys
    zero = g.const(0, like=node.outputs[0])
    return _unbroadcast(g, node, None, g.Where(cond, dy, zero), g.Where(cond, zero, dy))


@pointwise("Neg")
def neg(g, c, x, y, a):
    return c(-1)


def sign(g, x):
    """1, 0 or -1 as x is positive, zero or negative (Sign needs opset 9)."""
    return g.Sub(step(g, x), g.cast_like(g.Less(x, g.const(0, like=x)), x))


@pointwise("Abs")
def abs_(g, c, x, y, a):  # sign(x), 0 at 0 as in torch
    return sign(g, x)


@pointwise("Exp")
def exp(g, c, x, y, a):
    return y


@pointwise("Log")
def log(g, c, x, y, a):
    return g.Reciprocal(x)


@pointwise("Sqrt")
def sqrt(g, c, x, y, a):
    return g.Div(c(0.5), y)


@pointwise("Reciprocal")
def reciprocal(g, c, x, y, a):
    return g.Neg(g.Mul(y, y))


@pointwise("Sin")
def sin(g, c, x, y, a):
    return g.Cos(x)


@pointwise("Cos")
def cos(g, c, x, y, a):
    return g.Neg(g.Sin(x))


@pointwise("Tan")
def tan(g, c, x, y, a):
    return g.Add(c(1), g.Mul(y, y))


@pointwise("Sinh")
def sinh(g, c, x, y, a):
    return g.Cosh(x)


@pointwise("Cosh")
def cosh(g, c, x, y, a):
    return g.Sinh(x)


@pointwise("Asin")
def asin(g, c, x, y, a):
    return g.Reciprocal(g.Sqrt(g.Sub(c(1), g.Mul(x, x))))


@pointwise("Acos")
def acos(g, c, x, y, a):
    return g.Neg(asin(g, c, x, y, a))


@pointwise("Atan")
def atan(g, c, x, y, a):
    return g.Reciprocal(g.Add(c(1), g.Mul(x, x)))


@pointwise("Asinh")
def asinh(g, c, x, y, a):
    return g.Reciprocal(g.Sqrt(g.Add(g.Mul(x, x), c(1))))


@pointwise("Acosh")
def acosh(g, c, x, y, a):
    return g.Reciprocal(g.Sqrt(g.Sub(g.Mul(x, x), c(1))))


@pointwise("Atanh")
def atanh(g, c, x, y, a):
    return g.Reciprocal(g.Sub(c(1), g.Mul(x, x)))
