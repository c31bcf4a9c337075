"""If nodes whose condition is a constant are replaced by the branch they always take.

tf2onnx 1.x exports of Keras models wrap every BatchNormalization in an If on the learning-phase flag, stored as a
constant False. The branch's nodes move into the graph in the If's place, every name they produce prefixed with the
If's (so that the two branches of many Ifs, which reuse names, never clash); names they read from outside keep
theirs; an Identity gives each branch output the If output's name. Nested constant Ifs are folded in turn.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..protos import graph_inputs
from ..rewrite.graph import subgraphs
from . import register, writable


@register("ifs")
def fold_constant_ifs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass, noted as "12 If nodes on a constant condition folded into the branch taken"."""
    folded = 0
    while (found := _constant_if(model)) is not None:
        if not folded:
            model = writable(model)
        _inline(model.graph, *found)
        folded += 1
    if not folded:
        return model, None
    return model, f"{folded} If node{'s' * (folded > 1)} on a constant condition folded into the branch taken"


def _constant_if(model: onnx.ModelProto) -> tuple[int, bool] | None:
    """(position, condition) of the first If of the main graph whose condition is computed from constants alone."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph_inputs(graph)}
    for i, node in enumerate(graph.node):
        if node.op_type == "If":
            nodes = _ancestors(node.input[0], producer, initializers, inputs)
            if nodes is not None:
                return i, bool(np.asarray(_evaluate(model, nodes, node.input[0], initializers)).reshape(-1)[0])
    return None


def _ancestors(name: str, producer: dict, initializers: dict, inputs: set) -> list | None:
    """The nodes computing `name` in graph order, or None when it depends on a graph input or a subgraph."""
    if name in initializers:
        return []
    if name in inputs or name not in producer:
        return None
    node = producer[name]
    if subgraphs(node):
        return None
    found = []
    for i in node.input:
        if i:
            upstream = _ancestors(i, producer, initializers, inputs)
            if upstream is None:
                return None
            found += [n for n in upstream if n not in found]
    return found + [node]


def _evaluate(model: onnx.ModelProto, nodes: list, name: str, initializers: dict):
    """The value of `name`, computed by onnx's reference evaluator from `nodes` and the initializers they read."""
    from onnx.reference import ReferenceEvaluator  # imported here: a tenth of a second that most loads never need
    read = {i for n in nodes for i in n.input} | {name}
    graph = helper.make_graph(nodes, "condition", [], [helper.make_tensor_value_info(name, 0, None)],
                              [initializers[i] for i in read if i in initializers])
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return ReferenceEvaluator(sub).run(None, {})[0]


def _inline(graph: onnx.GraphProto, position: int, condition: bool) -> None:
    """Replace the If at `position` by the nodes of its `condition` branch, renamed, and Identities to its outputs."""
    node = graph.node[position]
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
    taken = set(_produced(branch)) - {i.name for i in branch.input}
    prefix = f"{node.name or node.output[0]}/"
    renamed = {name: prefix + name for name in taken}
    _rename(branch, renamed)
    nodes = list(branch.node) + [helper.make_node("Identity", [b.name], [o], name=f"{prefix}{o}")
                                 for b, o in zip(branch.output, node.output)]
    graph.initializer.extend(branch.initializer)
    del graph.node[position]
    for offset, n in enumerate(nodes):
        graph.node.insert(position + offset, n)


def _produced(graph: onnx.GraphProto):
    """Every name a graph defines: its initializers, its inputs and its nodes' outputs, also in nested graphs."""
    yield from (t.name for t in graph.initializer)
    yield from (i.name for i in graph.input)
    for n in graph.node:
        yield from (o for o in n.output if o)
        for sub in subgraphs(n):
            yield from _produced(sub)


def _rename(graph: onnx.GraphProto, renamed: dict) -> None:
    for t in graph.initializer:
        t.name = renamed.get(t.name, t.name)
    for v in (*graph.input, *graph.output, *graph.value_info):
        v.name = renamed.get(v.name, v.name)
    for n in graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        n.output[:] = [renamed.get(o, o) for o in n.output]
        for sub in subgraphs(n):
            _rename(sub, renamed)

