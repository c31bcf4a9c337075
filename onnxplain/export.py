"""Write an explanation as a standalone ONNX graph: image in; the model's outputs, the map and the class out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from . import methods
from .errors import OnnxplainError, writing
from .explain import cam_layer
from .model import Model
from .rewrite.graph import TARGET, build, infer_shapes


def export(model: Model, method: str, path: str | Path, layer: str | None = None, **params) -> onnx.ModelProto:
    """Save `method` on `model` as one ONNX graph.

    Inputs: the image tensor and an optional int64 `target` per image (default -1: the top-1 class, found in the
    graph). Outputs: the model's own outputs, `attributions`, `maps` (N×H×W) and `target_used`.
    """
    m = methods.get(method, **params)
    if not m.one_graph:
        graphs = ", ".join(sorted(n for n, cls in methods.METHODS.items() if cls.one_graph))
        raise OnnxplainError(f"method '{method}' runs several passes, so it is not one graph to export "
                             f"(exportable: {graphs})")
    proto = build(model.graph, m.request(model, cam_layer(model, layer) if m.at_layer else None),
                  model.straight_through, shaped=True)
    proto.producer_name = "onnxplain"
    inferred = {vi.name: vi.type for vi in infer_shapes(proto).graph.output}
    for out in proto.graph.output:  # a standalone file declares every output's shape
        if not out.type.tensor_type.HasField("shape") and out.name in inferred:
            out.type.CopyFrom(inferred[out.name])
    _declare_run_shapes(model, m, layer, proto)
    onnx.checker.check_model(proto)
    with writing(path) as tmp:
        onnx.save(proto, str(tmp))
    return proto


def _declare_run_shapes(model: Model, m, layer: str | None, proto: onnx.ModelProto) -> None:
    """Declare the shapes that ONNX's inference left open (the outputs of a model whose shapes came from a probe run)
    from one run of the graph on a zero image, the batch kept symbolic."""
    missing = [out for out in proto.graph.output if not out.type.tensor_type.HasField("shape")]
    if not missing:
        return
    h, w = model.input_size
    c = model.preprocessing.channels
    x = np.zeros((1, c, h, w) if model.layout == "NCHW" else (1, h, w, c), np.dtype(model.pixels))
    request = m.request(model, cam_layer(model, layer) if m.at_layer else None)
    found = model.session(request).run([out.name for out in missing], {model.input: x, TARGET: np.array([-1])}, 1)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param or "N"
    for out, value in zip(missing, found):
        dims = out.type.tensor_type.shape.dim
        dims.add().dim_param = batch
        for n in value.shape[1:]:
            dims.add().dim_value = n
