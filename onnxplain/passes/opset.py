"""The model at the opset the gradient rules need: old exports are converted once at load, and only when the
conversion is proven.

ONNX's version converter runs on the model as exported, before anything of ours touches it. The converted model is
kept only when the checker accepts it and it computes the original's outputs on a probe input under onnxruntime;
otherwise the original stays and the note says why: forward-only and black-box methods run on it, and a gradient
through an op whose rule needs the newer opset fails in one line naming the op (autodiff). A model importing an
opset newer than this onnx and onnxruntime know is refused here, not at the first session.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, version_converter

from ..errors import OnnxplainError, first_line
from ..rewrite.graph import opset_of, subgraphs
from ..rewrite.rules import RULES, min_opset
from . import probe, register


MAPS_OPSET = 11  # the methods resize their maps to the input with half-pixel centres: Resize's modes of opset 11


@register("opset")
def convert_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass: `model` converted to the newest opset the plain rule of one of its ops needs (a composite chosen
    later may need less: autodiff checks the rule it uses), noted as "opset 9 converted
    to 16 (...)", or kept with a note saying why it could not be."""
    have, top = opset_of(model), highest_opset()
    if have > top:
        raise OnnxplainError(f"the model imports opset {have}, newer than this onnx {onnx.__version__} and "
                             f"onnxruntime {ort.__version__} support (opset {top} at most)")
    ops = sorted({n.op_type for n in _nodes(model.graph) if min_opset(RULES.get(n.op_type), n.op_type) > have})
    if not ops and have >= MAPS_OPSET:
        return model, None
    needed = max([min_opset(RULES[op], op) for op in ops] + [MAPS_OPSET])
    needs, for_ = ((f"gradients through {', '.join(ops)} need", f"the gradients of {', '.join(ops)}") if ops else
                   ("the maps' Resize (half-pixel centres) needs", "the maps' Resize"))
    try:
        converted = checked_conversion(model, needed)
    except RuntimeError as exc:
        return model, (f"opset {have} kept, converting it to opset {needed} failed ({exc}): {needs} opset "
                       f"{needed}; forward and black-box methods run")
    return converted, f"opset {have} converted to {needed} for {for_} (outputs checked)"


def checked_conversion(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` converted to `opset`, accepted by the checker and computing the same outputs as the original on a
    probe input; RuntimeError with the reason otherwise."""
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise RuntimeError(first_line(exc)) from None
    values = probe.feeds(model)
    try:
        expected = probe.run(model, values)
    except RuntimeError as exc:
        raise RuntimeError(f"the original does not run on a probe input to check it against: {exc}") from None
    if not probe.same(expected, probe.run(converted, values)):
        raise RuntimeError("the converted model's outputs differ from the original's on a probe input")
    return converted


@lru_cache(maxsize=None)
def highest_opset() -> int:
    """The newest standard opset that both onnx and onnxruntime (which may lag behind onnx) can run."""
    opset = onnx.defs.onnx_opset_version()
    while opset > 1 and not _runs(opset):
        opset -= 1
    return opset


def _runs(opset: int) -> bool:
    """Whether onnxruntime starts a session on an Identity model importing `opset`."""
    x, y = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1]), helper.make_tensor_value_info(
        "y", onnx.TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    try:
        probe.run(model, {"x": np.zeros(1, np.float32)})
    except RuntimeError:
        return False
    return True


def _nodes(graph: onnx.GraphProto):
    """Every node of `graph` and of its subgraphs."""
    for node in graph.node:
        yield node
        for g in subgraphs(node):
            yield from _nodes(g)
