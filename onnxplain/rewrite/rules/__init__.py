"""Vector-Jacobian product rules, one short function per ONNX op, registered by op type.

A rule has the signature ``rule(node, dys, g) -> list`` where ``node`` is the forward onnx-graphsurgeon node (shapes
and dtypes from shape inference), ``dys`` holds one cotangent per node output (``None`` for outputs that are not on
the differentiation path) and ``g`` is a :class:`~onnxplain.rewrite.autodiff.VJPBuilder`. It returns one cotangent per
node input, ``None`` where the input gets no gradient (indices, shapes, or inputs off the path: ``g.needs(t)`` tells).
A rule reads the shape or rank of a tensor that shape inference may have lost through ``builder.shape_of`` and
``builder.rank_of``: the walk turns their refusal into one line naming the node and the tensor. Any other exception
of a rule is a bug, and propagates as one.

Ops listed in NOT_DIFFERENTIABLE have no input gradient by definition; an op in neither table fails with one
sentence that names it (see :class:`~onnxplain.errors.UnsupportedOpError`).
"""
from __future__ import annotations

from typing import Callable

import onnx_graphsurgeon as gs

from ...errors import OnnxplainError

RULES: dict[str, Callable] = {}

# Ops whose outputs do not depend differentiably on their inputs: the walk stops here.
NOT_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not",
    "And", "Or", "Xor", "NonZero", "ConstantOfShape", "Constant", "Range", "EyeLike", "RandomNormal",
    "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf",
    "OneHot",
})


def vjp(*op_types: str, min_opset: int | None = None):
    """Register a rule for one or more op types; `min_opset`: the opset its emitted nodes need (an op newer than
    some models' opset), kept on the rule (see `min_opset`)."""
    def register(fn):
        for op in op_types:
            RULES[op] = fn
        if min_opset:
            fn.min_opset = min_opset
        return fn
    return register


def min_opset(rule, op: str) -> int:
    """The opset that the nodes `rule` emits on an `op` node need: the rule's own `min_opset` where it has one (a
    plain rule's from `vjp`, or an override's class attribute), else that of `op`'s plain rule, which an override
    applies unless it declares otherwise (guided backprop, DeepLIFT's and LRP's rules mostly do)."""
    own = getattr(rule, "min_opset", None)
    return own if own is not None else getattr(RULES.get(op), "min_opset", 0)


def optional_input(node, i):
    """Input i of `node`, None when it is omitted."""
    return node.inputs[i] if i < len(node.inputs) and node.inputs[i].name else None


def constant_input(node, i):
    """The values of input i as a numpy array, None when it is omitted; it must be a constant of the model."""
    t = optional_input(node, i)
    if t is not None and not isinstance(t, gs.Constant):
        raise OnnxplainError(f"{node.op} node '{node.name}' gets '{t.name}' computed at run time; its gradient "
                             "needs that input to be a constant")
    return None if t is None else t.values


from . import activation, conv, elementwise, linear, norm, pool, quant, shape  # noqa: E402,F401  (they register)

