"""Turn a model plus a request (tensors to expose, outputs to differentiate, tensors wanted) into a runnable graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

import warnings

from ..errors import OnnxplainError
from .autodiff import append_vjp
from .rules import MIN_OPSET, RULES

COTANGENT = "{}__cotangent"  # graph input holding the cotangent (target weights) of a differentiated output
GRAD = "{}__grad"            # graph output holding the gradient of a wanted tensor


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise OnnxplainError("the model imports no standard ONNX opset")


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is best effort; rules that need a shape say so themselves
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxplainError(f"ONNX shape inference failed on this model: {first}") from None


@dataclass(frozen=True)
class Request:
    """What a compiled graph must compute besides the model's own outputs. Hashable: sessions are cached by it."""

    expose: tuple[str, ...] = ()         # intermediate tensors to add as outputs
    differentiate: tuple[str, ...] = ()  # tensors y whose cotangent-weighted sum is differentiated
    wrt: tuple[str, ...] = ()            # tensors whose gradient is wanted
    rules: str = "plain"                 # name of the rule composite (modified backward passes)
    keep_outputs: bool = True            # keep the model's own outputs


def build(model: onnx.ModelProto, request: Request, rules=RULES) -> onnx.ModelProto:
    """The model with `request` applied: exposed tensors, cotangent inputs and gradient outputs."""
    if request.differentiate:
        model = upgrade_opset(model, max((MIN_OPSET.get(n.op_type, 0) for n in model.graph.node), default=0))
    opset = opset_of(model)
    graph = gs.import_onnx(infer_shapes(model))
    lift_constants(graph)
    graph.toposort()
    tensors = graph.tensors()

    def find(name: str) -> gs.Tensor:
        if name not in tensors:
            raise OnnxplainError(f"the model has no tensor named '{name}' (see `onnxplain inspect` for names)")
        return tensors[name]

    outputs = list(graph.outputs) if request.keep_outputs else []
    for name in request.expose:
        t = find(name)
        if t not in outputs:
            outputs.append(t)
    if request.differentiate:
        ys = [find(n) for n in request.differentiate]
        dys = [gs.Variable(COTANGENT.format(y.name), dtype=y.dtype or np.float32, shape=y.shape) for y in ys]
        grads = append_vjp(graph, opset, ys, dys, [find(n) for n in request.wrt], rules)
        graph.inputs.extend(dys)
        for name, grad in zip(request.wrt, grads):
            outputs.append(_renamed(graph, grad, GRAD.format(name), find(name)))
    graph.outputs = [_as_output(t) for t in outputs]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return gs.export_onnx(graph, do_type_check=False)


def upgrade_opset(model: onnx.ModelProto, needed: int) -> onnx.ModelProto:
    """Convert `model` to opset `needed` when a gradient rule needs a newer op than the model imports, and say so."""
    have = opset_of(model)
    if needed <= have:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, needed)
    except Exception as exc:
        raise OnnxplainError(f"the gradient needs opset {needed} but converting this opset-{have} model failed: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    warnings.warn(f"onnxplain: converted the model from opset {have} to {needed} for its gradient graph",
                  stacklevel=3)
    return converted


def lift_constants(graph: gs.Graph) -> None:
    """Turn Constant nodes into initializers so rules can read weights as arrays."""
    for node in graph.nodes:
        if node.op == "Constant" and "value" in node.attrs and len(node.outputs) == 1:
            out, value = node.outputs[0], node.attrs["value"]
            const = gs.Constant(out.name, values=value.values if isinstance(value, gs.Constant) else value)
            for consumer in list(out.outputs):
                consumer.inputs[:] = [const if t is out else t for t in consumer.inputs]
            if out in graph.outputs:
                continue
            node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)


def _renamed(graph: gs.Graph, t: gs.Tensor, name: str, like: gs.Tensor) -> gs.Tensor:
    """An Identity giving `t` a stable output name, dtype and shape of `like`."""
    out = gs.Variable(name, dtype=like.dtype or np.float32, shape=like.shape)
    graph.nodes.append(gs.Node("Identity", name=f"{name}/identity", inputs=[t], outputs=[out]))
    return out


def _as_output(t: gs.Tensor) -> gs.Tensor:
    if isinstance(t, gs.Constant):
        raise OnnxplainError(f"tensor '{t.name}' is a constant of the model, not something it computes")
    if t.dtype is None:
        t.dtype = np.float32
    return t
