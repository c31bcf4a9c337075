"""Modified backward passes as data (Zennit's composites): which rule overrides the plain VJP rule of each op type.

A composite maps ONNX op types to override rules, optionally gives the first layer from the input a rule of its
own (LRP's z^B), and lists canonizers, model rewrites applied before anything else (BatchNormalization folded into
the preceding Conv). Override rules have the plain rules' signature ``rule(node, dys, g) -> list``; write them as
frozen dataclasses with `__call__` so that a composite stays hashable by value (sessions are cached by request).
Ops the composite does not name keep their plain rule: the engine is not forked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from .rules import RULES

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers a `first` rule can apply to


@dataclass(frozen=True)
class Composite:
    name: str
    rules: tuple[tuple[str, Callable], ...] = ()        # (op type, override rule)
    first: Callable | None = None                       # rule of the first linear layer on the path from the input
    canonizers: tuple[Callable[[onnx.ModelProto], onnx.ModelProto], ...] = ()

    def prepare(self, model: onnx.ModelProto) -> onnx.ModelProto:
        for canonize in self.canonizers:
            model = canonize(model)
        return model

    def lookup(self, graph: gs.Graph, wrt: list[gs.Tensor]) -> Callable[[gs.Node], Callable | None]:
        """node → its rule: `first` for the first linear layer fed (through any ops) by `wrt`, else the override
        for the node's op type, else the plain rule. `graph` is topologically sorted."""
        overrides = dict(self.rules)
        first = None
        if self.first is not None:
            reached = {t.name for t in wrt}
            for node in graph.nodes:
                if any(t.name in reached for t in node.inputs):
                    if node.op in LINEAR_OPS:
                        first = node
                        break
                    reached.update(t.name for t in node.outputs)
        return lambda node: self.first if node is first else overrides.get(node.op, RULES.get(node.op))

