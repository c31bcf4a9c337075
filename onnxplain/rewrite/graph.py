"""Turn a model plus a request (tensors to expose, outputs to differentiate, tensors wanted) into a runnable graph."""
from __future__ import annotations

import functools
import gc
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..errors import OnnxplainError, first_line, quiet_onnxruntime
from .autodiff import append_vjp, path_nodes, reads
from .builder import Builder
from .rules import NOT_DIFFERENTIABLE, RULES
from .rules.quant import STRAIGHT_THROUGH

COTANGENT = "{}__cotangent"  # graph input holding the cotangent (target weights) of a differentiated output
GRAD = "{}__grad"            # graph output holding the gradient of a wanted tensor
TARGET = "target"            # with seed="target": int64 class per image, -1 (the default) for the top-1 class
SUM = "sum{}"                # with Request.sums: graph input and (+ "_out") output of the running sums of power p


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise OnnxplainError("the model imports no standard ONNX opset")


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is best effort; rules that need a shape say so themselves
        raise OnnxplainError(f"ONNX shape inference failed on this model: {first_line(exc)}") from None


@dataclass(frozen=True)
class Request:
    """What a compiled graph must compute besides the model's own outputs. Hashable: sessions are cached by it."""

    expose: tuple[str, ...] = ()         # intermediate tensors to add as outputs
    differentiate: tuple[str, ...] = ()  # tensors y whose cotangent-weighted sum is differentiated
    wrt: tuple[str, ...] = ()            # tensors whose gradient is wanted
    keep_outputs: bool = True            # keep the model's own outputs
    seed: str = "cotangent"              # "cotangent": fed per differentiated tensor; "target": one-hot in-graph
    head: object = None                  # appends a method's formula: head.build(g, tensors, grads, target) -> {name:
                                         # tensor}; target is the int64 class per image (seed="target") or None
    rules: object = None                 # a Composite overriding VJP rules (modified backward passes), or None
    cut: tuple[str, ...] = ()            # tensors made graph inputs: the graph runs from them on (their producers,
                                         # and the image input if nothing else needs it, drop out)
    transform: object = None             # a hashable model rewrite (proto -> proto) applied first, e.g. a fed mask
                                         # multiplied into a tensor
    sums: tuple[int, ...] = ()           # powers p: the graph adds Σ_r w_r · a_r^p per image to fed running sums of
                                         # the rows' results a (the head's attributions, or the gradient) and outputs
                                         # only those (see `summed`)


def _collector_paused(fn):
    """`fn` run with Python's cyclic garbage collector paused. A graphsurgeon graph is a web of linked objects that
    each full collection walks again: with it running, building the gradient of a 16000-node chain took 1.5x as long,
    the share growing with size. What the graph leaves behind is collected once the collector resumes."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        if not gc.isenabled():  # paused already (a nested call, or by the caller)
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
    return paused


@_collector_paused
def build(model: onnx.ModelProto, request: Request, straight_through: bool = False, shaped: bool = False
          ) -> onnx.ModelProto:
    """The model with `request` applied: exposed tensors, cotangent inputs and gradient outputs. `straight_through`:
    differentiate quantisers by the straight-through estimator (rules/quant.py) instead of stopping at them.
    `shaped`: `model` has its constants folded and its shapes inferred already (`Model.graph`), which a request
    that rewrites it first (a transform, a composite's preparation) undoes."""
    given = model
    if request.transform is not None:
        model = request.transform(model)
    if request.rules is not None:
        model = request.rules.prepare(model)
    opset = opset_of(model)
    graph = prepared(model, shaped and model is given)
    tensors = graph.tensors()

    def find(name: str) -> gs.Tensor:
        if name not in tensors:
            raise OnnxplainError(f"the model has no tensor named '{name}' (see `onnxplain inspect` for names)")
        return tensors[name]

    upstream = _feeding_inputs(graph, [find(name) for name in request.cut])
    for name in request.cut:
        t = find(name)
        t.inputs.clear()
        graph.inputs.append(t)
    if request.cut:
        graph.cleanup(remove_unused_graph_inputs=False)
        graph.inputs = [t for t in graph.inputs if t.outputs or t.name in request.cut]
        bypass = [t.name for t in graph.inputs if t.name in upstream]
        if bypass:
            raise OnnxplainError(f"the model cannot be cut at {', '.join(request.cut)}: its outputs also depend on "
                                 f"'{bypass[0]}' through paths that bypass it (a residual or parallel branch); choose "
                                 f"a layer that every path passes through, such as a block end (see `onnxplain "
                                 f"inspect`)")
    outputs = list(graph.outputs) if request.keep_outputs else []
    for name in request.expose:
        t = find(name)
        if t not in outputs:
            outputs.append(t)
    grads, target = {}, None
    if request.differentiate:
        ys = [find(n) for n in request.differentiate]
        if request.seed == "target":
            dys, target = _target_seed(Builder(graph, opset, "seed"), ys)
            outputs.append(_renamed(graph, target, TARGET + "_used", np.int64, [ys[0].shape[0]]))
        else:
            # symbolic dims: where ONNX shape inference and onnxruntime disagree on a size, onnxruntime's wins
            dys = [gs.Variable(COTANGENT.format(y.name), dtype=y.dtype or np.float32,
                               shape=None if y.shape is None else [f"{y.name}_d{i}" for i in range(len(y.shape))])
                   for y in ys]
            graph.inputs.extend(dys)
        wrt = [find(n) for n in request.wrt]
        if wrt:
            lookup = request.rules.lookup(graph, wrt) if request.rules is not None else None
            through = STRAIGHT_THROUGH if straight_through else frozenset()
            grads = dict(zip(request.wrt, append_vjp(graph, opset, ys, dys, wrt, lookup, through)))
        if request.head is None:
            outputs += [_renamed(graph, grads[t.name], GRAD.format(t.name), t.dtype, t.shape) for t in wrt]
    if request.head is not None:
        built = request.head.build(Builder(graph, opset, "head"), tensors, grads, target)
        outputs += [_renamed(graph, t, name, np.float32) for name, t in built.items()]
    if request.sums:
        rows = built["attributions"] if request.head is not None else grads[request.wrt[0]]
        outputs = summed(Builder(graph, opset, "sums"), rows, request.sums)
    graph.outputs = [_as_output(t) for t in outputs]
    toposort(graph.cleanup(remove_unused_graph_inputs=False))
    proto = gs.export_onnx(graph, do_type_check=False)
    if request.seed == "target":  # an overridable default: no target fed means the top-1 class
        proto.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), TARGET))
    return proto


SUMS_OPSET = 11  # ScatterND, GatherND


def summed(g: Builder, rows: gs.Tensor, powers: tuple[int, ...]) -> list[gs.Tensor]:
    """Running sums per image of weighted powers of `rows`: for each power p, the output SUM.format(p) + "_out" is
    the fed SUM.format(p) (float64, images × values) with Σ_r select[u, r] · rows_r^p added at row images[u] for
    each u. `select` (float32, u × r) weighs each row of a chunk into its image's sum; `images` (int64, u × 1,
    distinct: onnxruntime's ScatterND adds repeated indices in parallel and loses some of the updates) says which.
    Rows past r (padding) are left out. A MatMul sums the chunk's rows per image in float32; ScatterND adds those to
    the images' running sums (before opset 16: GatherND, Add and ScatterND), which never leave the session's device.
    """
    if g.opset < SUMS_OPSET:
        raise OnnxplainError(f"per-image sums in the graph need opset {SUMS_OPSET}, the model has {g.opset}")
    if not set(powers) <= {1, 2}:
        raise ValueError(f"the graph sums first and second powers, not {powers}")
    select = gs.Variable("select", np.float32, ["u", "r"])
    images = gs.Variable("images", np.int64, ["u", 1])
    g.graph.inputs += [select, images]
    count = g.slice(g.Shape(select), [1], [2], [0])
    flat = g.Reshape(g.Slice(rows, g.ints([0]), count, g.ints([0])), g.ints([0, -1]))
    outputs = []
    for p in powers:
        total = gs.Variable(SUM.format(p), np.float64, ["n", "d"])
        g.graph.inputs.append(total)
        added = g.Cast(g.MatMul(select, flat if p == 1 else g.Mul(flat, flat)), to=onnx.TensorProto.DOUBLE)
        if g.opset >= 16:  # onnxruntime's ScatterND adding: 0.1 ms where gathering, adding and scattering took 2.5
            new = g.ScatterND(total, images, added, reduction="add")
        else:
            new = g.ScatterND(total, images, g.Add(g.GatherND(total, images), added))
        outputs.append(_renamed(g.graph, new, SUM.format(p) + "_out", np.float64, ["n", "d"]))
    return outputs


def _feeding_inputs(graph: gs.Graph, tensors: list[gs.Tensor]) -> set[str]:
    """The names of the graph inputs that `tensors` are computed from."""
    inputs, seen, stack = {t.name for t in graph.inputs}, set(), list(tensors)
    while stack:
        t = stack.pop()
        if t.name not in seen:
            seen.add(t.name)
            stack.extend(i for node in t.inputs for i in node.inputs)
    return inputs & seen


def _target_seed(g: Builder, ys: list[gs.Tensor]):
    """Cotangent = one-hot of the `target` input, or of the arg-max of y where the target is negative."""
    if len(ys) != 1 or (ys[0].shape is not None and len(ys[0].shape) != 2):  # unknown: load checked N×classes
        raise OnnxplainError("a target seed needs one differentiated N×classes tensor")
    y = ys[0]
    target = gs.Variable(TARGET, dtype=np.int64, shape=[y.shape[0] if y.shape else "N"])
    g.graph.inputs.append(target)
    chosen = g.Where(g.Less(target, g.ints(0)), g.ArgMax(y, axis=1, keepdims=0), target)
    onehot = g.OneHot(chosen, g.size_of(y, 1), g.const([0, 1], like=y), axis=-1)
    return [onehot], chosen


@_collector_paused
def prepared(model: onnx.ModelProto, shaped: bool = False) -> gs.Graph:
    """The graph the gradient walk sees: constants folded, shapes inferred (unless `shaped` says they are),
    topologically sorted."""
    return toposort(gs.import_onnx(model if shaped else infer_shapes(fold_constants(model))))


def toposort(graph: gs.Graph) -> gs.Graph:
    """Order `graph.nodes` (and its subgraphs') by depth, each node right after its deepest producer's level, in
    the given order within a level, as graphsurgeon's toposort does (onnxruntime builds a session for a gradient
    graph in that order many times faster than with the backward pass after the forward one), in O(nodes + edges):
    graphsurgeon's takes several times as long and recurses once per node that precedes its producer."""
    nodes = graph.nodes
    producer = {t.name: i for i, node in enumerate(nodes) for t in node.outputs if t.name}
    deps = [[producer[t.name] for t in reads(node) if producer.get(t.name, i) != i] for i, node in enumerate(nodes)]
    level = [-1] * len(nodes)  # -1: not yet known, -2: on the walk's stack
    for root in range(len(nodes)):
        stack = [(root, iter(deps[root]))] if level[root] == -1 else []
        while stack:
            i, pending = stack[-1]
            level[i] = -2
            j = next((j for j in pending if level[j] < 0), None)
            if j is None:
                level[i] = 1 + max((level[k] for k in deps[i]), default=-1)
                stack.pop()
            elif level[j] == -2:
                raise OnnxplainError(f"the graph has a cycle through node '{nodes[j].name}'")
            else:
                stack.append((j, iter(deps[j])))
    for node in nodes:
        for sub in node.subgraphs():
            toposort(sub)
    graph.nodes = [nodes[i] for i in sorted(range(len(nodes)), key=lambda i: (level[i], i))]
    return graph


FOLD_LIMIT = 1 << 26  # bytes: larger constant subgraphs (of a known size) are left to run, not stored in the graph


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate the subgraphs that depend on no input (exporters compute pads and shapes that way), so rules see
    constants and shape inference sees static shapes."""
    if not _foldable(model.graph):
        return model
    graph = gs.import_onnx(model)
    lift_constants(graph)
    if any(n.op != "Constant" and n.inputs and all(isinstance(t, gs.Constant) for t in n.inputs if t.name)
           for n in graph.nodes):
        with quiet_onnxruntime(), _quiet_graphsurgeon():  # a subgraph that fails to fold stays as it is
            graph.fold_constants(error_ok=True, size_threshold=FOLD_LIMIT)
    graph.cleanup(remove_unused_graph_inputs=False)
    return gs.export_onnx(graph, do_type_check=False)


def _foldable(graph: onnx.GraphProto) -> bool:
    """Whether `graph` has a Constant node, or a node reading only initializers (a cheap check on the proto that
    saves a graphsurgeon import and export when there is nothing to fold)."""
    constant = {t.name for t in graph.initializer}
    return any(n.op_type == "Constant" or (n.input and all(i in constant for i in n.input if i)) for n in graph.node)


@contextmanager
def _quiet_graphsurgeon():
    from onnx_graphsurgeon.logger import G_LOGGER
    severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.CRITICAL
    try:
        yield
    finally:
        G_LOGGER.severity = severity


def unsupported_ops(model: onnx.ModelProto, input: str, score: str, straight_through: bool = False
                    ) -> dict[str, list[str]]:
    """Op type → node names, for the nodes on the way from `input` to `score` that no rule can differentiate, once
    constant subgraphs are folded (a quantised model's int8 weights behind DequantizeLinear need no rule)."""
    graph = prepared(model)
    tensors = graph.tensors()
    missing: dict[str, list[str]] = {}
    through = STRAIGHT_THROUGH if straight_through else frozenset()
    for node in path_nodes(graph, [tensors[score]], [tensors[input]], through):
        if (node.op not in RULES or node.op in STRAIGHT_THROUGH and not through) and node.op not in NOT_DIFFERENTIABLE:
            missing.setdefault(node.op, []).append(node.name or "(unnamed)")
    return missing


def lift_constants(graph: gs.Graph) -> None:
    """Turn Constant nodes into initializers so rules can read weights as arrays."""
    for node in graph.nodes:
        if node.op == "Constant" and "value" in node.attrs and len(node.outputs) == 1:
            out, value = node.outputs[0], node.attrs["value"]
            const = gs.Constant(out.name, values=value.values if isinstance(value, gs.Constant) else value)
            for consumer in list(out.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is out:
                        consumer.inputs[i] = const
            if out in graph.outputs:
                continue
            node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)


def _renamed(graph: gs.Graph, t: gs.Tensor, name: str, dtype, shape=None) -> gs.Tensor:
    """An Identity giving `t` a stable output name, with its dtype and (if known) shape."""
    out = gs.Variable(name, dtype=dtype or np.float32, shape=shape)
    graph.nodes.append(gs.Node("Identity", name=f"{name}/identity", inputs=[t], outputs=[out]))
    return out


def _as_output(t: gs.Tensor) -> gs.Tensor:
    if isinstance(t, gs.Constant):
        raise OnnxplainError(f"tensor '{t.name}' is a constant of the model, not something it computes")
    if t.dtype is None:
        t.dtype = np.float32
    return t


def dynamic_batch(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """Make the batch dimension of `input_name` symbolic, also in exports that hard-code batch 1 in Reshape targets.

    A constant Reshape target whose first entry equals the exported batch size and whose data depends on the input
    gets -1 there (or 0, copy-from-input, when -1 is taken). Stale intermediate shapes are dropped. Subgraphs (If,
    Loop, Scan bodies) get the same treatment, and their declared input and output shapes are dropped too.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inp = next(i for i in graph.input if i.name == input_name)
    dim0 = inp.type.tensor_type.shape.dim[0]
    if not dim0.HasField("dim_value"):
        return model
    batch = dim0.dim_value
    dim0.dim_param = "N"
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = "N"
    _free_batch(graph, batch, {input_name}, {})
    return model


def _free_batch(graph: onnx.GraphProto, batch: int, depends: set[str], constants: dict) -> None:
    """dynamic_batch's walk over `graph` and its subgraphs; `depends`: names computed from the image input."""
    del graph.value_info[:]
    constants = {**constants, **{t.name: t for t in graph.initializer}}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for node in graph.node:  # exporters emit nodes in topological order
        for sub in subgraphs(node):
            for v in (*sub.input, *sub.output):
                if v.type.HasField("tensor_type"):
                    v.type.tensor_type.ClearField("shape")
            _free_batch(sub, batch, depends, constants)
        reads = set(node.input) | {o.name for sub in subgraphs(node) for o in sub.output}
        if reads & depends and node.op_type not in ("Shape", "Size"):
            depends.update(node.output)
        if node.op_type != "Reshape" or node.input[0] not in depends or node.input[1] not in constants:
            continue
        target = numpy_helper.to_array(constants[node.input[1]])
        if target.ndim != 1 or not target.size or target[0] != batch:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        fixed = target.copy()
        fixed[0] = -1 if -1 not in target else 0
        if fixed[0] == 0 and allowzero:
            raise OnnxplainError(f"Reshape node '{node.name}' hard-codes the batch size; re-export with a dynamic batch")
        name = f"{node.input[1]}__dynamic_batch"
        graph.initializer.append(numpy_helper.from_array(fixed, name))
        constants[name] = graph.initializer[-1]
        node.input[1] = name


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies and branches of a control-flow node (If, Loop, Scan)."""
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]
