"""A model declared at a newer IR version than the installed onnxruntime reads is declared at the newest one it reads,
where every opset the model imports already existed then (onnx 1.23's helpers write IR 14; onnxruntime 1.31 reads
up to 13). An IR version adds file-format features (element types, fields) that a model of older opsets rarely
uses; where it does, onnxruntime still refuses the model, in one line.
"""
from __future__ import annotations

from functools import cache

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..errors import OnnxplainError
from . import register

COLUMNS = {"": 2, "ai.onnx": 2, "ai.onnx.ml": 3}  # the opset columns of onnx.helper.VERSION_TABLE


@register("ir_version")
def lower_ir(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The pass: `model` declared at `readable_ir()` where it is newer and its opsets allow it."""
    most, have = readable_ir(), model.ir_version
    if have <= most:
        return model, None
    needed = needed_ir(model)
    if needed > most:
        opsets = ", ".join(f"{i.domain or 'ai.onnx'} {i.version}" for i in model.opset_import)
        raise OnnxplainError(f"the model imports {opsets}, which needs IR version {needed}; onnxruntime "
                             f"{ort.__version__} reads IR versions up to {most}: upgrade onnxruntime")
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    lowered.ir_version = most
    return lowered, f"IR version {have} declared as {most}, the newest onnxruntime {ort.__version__} reads"


def needed_ir(model: onnx.ModelProto) -> int:
    """The oldest IR version whose onnx release had every standard opset `model` imports (3 for none known)."""
    needed = 3
    for i in model.opset_import:
        column = COLUMNS.get(i.domain)
        if column is not None:
            needed = max(needed, next((row[1] for row in helper.VERSION_TABLE if row[column] >= i.version),
                                      onnx.IR_VERSION))
    return needed


@cache
def readable_ir() -> int:
    """The newest IR version the installed onnxruntime reads: a one-node model tried from onnx's newest down."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ir", [x], [y])
    for ir in range(onnx.IR_VERSION, 3, -1):
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001 (onnxruntime raises its own types, version-dependent)
            continue
    return 3
