"""One run of a model on a seeded random input, for passes that check a rewrite against the model it rewrote."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import first_line, quiet_onnxruntime
from ..protos import graph_inputs, guess_layout

SIDE = 224  # height and width given to a rank-4 input that leaves them symbolic


def feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """A seeded random value for every graph input that is not an initializer: symbolic dims are 1, except the
    height and width of a rank-4 input (SIDE); floats in [0, 1), integers in [0, 255], booleans False."""
    rng = np.random.default_rng(0)
    values = {}
    for inp in graph_inputs(model.graph):
        if not inp.type.HasField("tensor_type"):
            continue
        t = inp.type.tensor_type
        dims = [max(d.dim_value, 0) for d in t.shape.dim]  # 0: symbolic (some exporters write -1)
        spatial = ((1, 2) if guess_layout(dims) == "NHWC" else (2, 3)) if len(dims) == 4 else ()
        shape = [d or (SIDE if i in spatial else 1) for i, d in enumerate(dims)]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            values[inp.name] = rng.random(shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            values[inp.name] = rng.integers(0, 256, shape).astype(dtype)
        else:
            values[inp.name] = np.zeros(shape, dtype)
    return values


def run(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of `model` on `values`, on the CPU; raises RuntimeError with onnxruntime's first line."""
    return runs(model, [values])[0]


def runs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of `model` on each of `feeds`, from one session on the CPU (building it costs more than a run);
    raises RuntimeError with onnxruntime's first line."""
    try:
        with quiet_onnxruntime():
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return [session.run(None, values) for values in feeds]
    except Exception as exc:
        raise RuntimeError(first_line(exc)) from None


def same(a: list[np.ndarray], b: list[np.ndarray], rtol: float = 1e-4) -> bool:
    """Whether two runs' outputs have the same shapes and agree within `rtol` of each output's largest value."""
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.all(np.isfinite(x) == np.isfinite(y)) and
        np.abs(_finite(x) - _finite(y)).max(initial=0) <= rtol * np.abs(_finite(x)).max(initial=0) + 1e-7
        for x, y in zip(a, b))


def _finite(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(x.astype(np.float64), nan=0, posinf=0, neginf=0)
