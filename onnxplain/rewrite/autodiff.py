"""Append the vector-Jacobian subgraph of a graph to itself, using standard ONNX ops only.

The walk follows tinygrad's gradient.py: keep the nodes on a path from the requested tensors (`wrt`) to the
differentiated outputs (`ys`), visit them in reverse topological order, ask each node's rule for its input
cotangents, and sum cotangents where a tensor fans out. Integer and boolean tensors carry no gradient, so shape
arithmetic and indices drop out of the walk by themselves.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import OnnxplainError, UnsupportedOpError
from .builder import Builder, RankLost
from .rules import NOT_DIFFERENTIABLE, RULES, min_opset


def is_float(t: gs.Tensor) -> bool:
    """Whether a tensor can carry a gradient (unknown dtypes are assumed to)."""
    return t.dtype is None or np.issubdtype(np.dtype(t.dtype), np.floating)


class VJPBuilder(Builder):
    """The builder handed to rules: it also knows which tensors are on the differentiation path."""

    def __init__(self, graph: gs.Graph, opset: int, needed: set[str], prefix: str = "vjp"):
        super().__init__(graph, opset, prefix)
        self._needed = needed

    def needs(self, t: gs.Tensor) -> bool:
        return not isinstance(t, gs.Constant) and t.name in self._needed


Lookup = Callable[[gs.Node], Callable | None]  # node → its VJP rule (a composite's lookup, or the plain registry)


def path_tensors(graph: gs.Graph, ys: list[gs.Tensor], wrt: list[gs.Tensor], through=frozenset()) -> set[str]:
    """Names of the float tensors that depend on `wrt` and that `ys` depend on (and the integer outputs of the ops
    in `through`, which carry a straight-through gradient)."""
    return downstream(graph, wrt, through) & upstream(graph, ys)


def path_nodes(graph: gs.Graph, ys: list[gs.Tensor], wrt: list[gs.Tensor], through=frozenset()) -> list[gs.Node]:
    """The nodes that take a tensor depending on `wrt` and give one that `ys` depend on, in topological order; ops
    without a derivative or with integer outputs among them are where a path loses its gradient."""
    forward, backward = downstream(graph, wrt, through), upstream(graph, ys)
    return [n for n in graph.nodes
            if any(t.name in forward for t in reads(n)) and any(t.name in backward for t in n.outputs)]


def downstream(graph: gs.Graph, wrt: list[gs.Tensor], through=frozenset()) -> set[str]:
    """Names of the float tensors that depend on `wrt` through differentiable ops (graph topologically sorted), and
    the integer outputs of the ops in `through`."""
    forward = {t.name for t in wrt}
    for node in graph.nodes:
        if node.op not in NOT_DIFFERENTIABLE and any(t.name in forward for t in reads(node)):
            forward.update(t.name for t in node.outputs if is_float(t) or node.op in through)
    return forward


def upstream(graph: gs.Graph, ys: list[gs.Tensor]) -> set[str]:
    """Names of the tensors that `ys` depend on through differentiable ops."""
    backward = {t.name for t in ys}
    for node in reversed(graph.nodes):
        if any(t.name in backward for t in node.outputs) and node.op not in NOT_DIFFERENTIABLE:
            backward.update(t.name for t in reads(node) if t.name and not isinstance(t, gs.Constant))
    return backward


def reads(node: gs.Node) -> list[gs.Tensor]:
    """The tensors `node` reads: its inputs, and those that its subgraphs (If, Loop, Scan) read from outside."""
    found = list(node.inputs)
    for sub in node.subgraphs():
        inner = {t.name for t in sub.inputs} | {t.name for n in sub.nodes for t in n.outputs}
        found += [t for n in sub.nodes for t in reads(n) if t.name not in inner]
    return found


def append_vjp(graph: gs.Graph, opset: int, ys: list[gs.Tensor], dys: list[gs.Tensor], wrt: list[gs.Tensor],
               rule_of: Lookup | None = None, through=frozenset()) -> list[gs.Tensor]:
    """Emit nodes computing d<dys, ys>/d(wrt); returns one gradient tensor per `wrt` entry.

    `graph` must be topologically sorted and carry shape-inference results. `dys` are tensors (usually graph inputs)
    shaped like `ys`. `rule_of` gives each node's rule: by default its op type's registered rule; a composite's
    lookup overrides some (see `onnxplain.rewrite.composite`). `through`: the ops whose integer outputs carry a
    straight-through gradient (a quantised model's, see `rules/quant.py`); by default none do.
    """
    needed = path_tensors(graph, ys, wrt, through)
    missing = [t.name for t in wrt if t.name not in needed]
    if missing:
        raise OnnxplainError(f"the score does not depend on tensor '{missing[0]}': nothing to differentiate")
    g = VJPBuilder(graph, opset, needed)
    pending: dict[str, list[gs.Tensor]] = defaultdict(list)
    for y, dy in zip(ys, dys):
        pending[y.name].append(dy)

    def total(t: gs.Tensor):
        parts = pending.pop(t.name, [])
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else g.Sum(*parts)

    wanted = {t.name for t in wrt}
    results: dict[str, gs.Tensor] = {}
    for node in list(reversed(graph.nodes)):
        if not any(t.name in needed for t in node.outputs):
            continue
        douts = []
        for t in node.outputs:
            d = total(t)
            if d is not None and t.name in wanted:
                results[t.name] = d
            douts.append(d)
        if all(d is None for d in douts) or not any(g.needs(t) for t in reads(node)):
            continue
        if any(True for _ in node.subgraphs()):
            raise UnsupportedOpError(node.op, node.name, opset, "no gradient through the subgraphs of control flow")
        rule = rule_of(node) if rule_of else RULES.get(node.op)
        if rule is None:
            raise UnsupportedOpError(node.op, node.name, opset)
        newer = min_opset(rule, node.op)  # of the rule used: a composite's may need less than the plain one
        if newer > opset:  # the load pass could not convert the model (see inspect)
            raise UnsupportedOpError(node.op, node.name, opset, f"the gradient needs opset {newer}, "
                                     "to which this model could not be converted (see `onnxplain inspect`),")
        dins = _apply(rule, node, douts, g)
        for t, d in zip(node.inputs, dins):
            if d is not None and g.needs(t):
                pending[t.name].append(d)
    for t in wrt:  # graph inputs are produced by no node
        if t.name not in results:
            results[t.name] = total(t)
        if results[t.name] is None:
            raise OnnxplainError(f"the score depends on '{t.name}' only through {_cut(graph, ys, t, through)}, so "
                                 "its gradient is zero; explain this model with a black-box method instead "
                                 "(occlusion, rise, lime, kernelshap), which only runs the model")
    return [results[t.name] for t in wrt]


def _apply(rule, node: gs.Node, douts: list, g: VJPBuilder) -> list:
    """The node's input cotangents; where its rule asks for a rank that ONNX shape inference lost (`shape_of`,
    `rank_of`), one line naming the node and the tensor."""
    try:
        return rule(node, douts, g)
    except RankLost as lost:
        raise OnnxplainError(f"the gradient of {node.op} '{node.name}' needs the rank of '{lost.tensor.name}', which "
                             "ONNX shape inference did not find; explain this model with a black-box method instead "
                             "(occlusion, rise, lime, kernelshap), which only runs the model") from None


def _cut(graph: gs.Graph, ys: list[gs.Tensor], t: gs.Tensor, through=frozenset()) -> str:
    """Names the node where the paths from `t` to the score lose their gradient (an integer output, such as a
    quantised model's QuantizeLinear or QLinearConv, or an op without a derivative), for the error message."""
    for node in path_nodes(graph, ys, [t], through):
        if node.op in NOT_DIFFERENTIABLE or not all(is_float(o) for o in node.outputs) and node.op not in through:
            if node.op not in ("Shape", "Size"):  # shapes feed a Reshape beside its data, never instead of it
                return f"{node.op} '{node.name}' (integer or piecewise-constant output)"
    return "ops without a gradient"
