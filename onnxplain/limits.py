"""Bounds on what a request may allocate or repeat, checked before the work starts: each refusal is one line naming
the parameter, its value and the limit."""
from __future__ import annotations

import math
import os
from numbers import Integral, Real

import numpy as np
import onnx
import onnx.numpy_helper

from .errors import OnnxplainError

MAX_COUNT = 100_000  # steps, samples, masks, iterations: each costs at least one model pass per image
MAX_SIDE = 65_536    # pixels on a side of the model input or of an image after resize


def is_number(value) -> bool:
    """Whether `value` is a real number (Python's or numpy's), not a boolean."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def is_whole(value) -> bool:
    """Whether `value` is an integer (Python's or numpy's), not a boolean."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def whole(name: str, value, least: int = 1, most: int | None = None) -> int:
    """`value` as an int in [least, most], or one line naming `name`, the value and the range."""
    if not is_whole(value) or value < least or (most is not None and value > most):
        span = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise OnnxplainError(f"{name} must be a whole number {span}, not {value!r}")
    return int(value)


def available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable where Linux gives it, else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if math.isfinite(n) else "unbounded memory"


def check_memory(what: str, nbytes: float, remedy: str) -> None:
    """Refuse `what` when it needs more than the memory available now."""
    free = available_memory()
    if nbytes > free:
        raise OnnxplainError(f"{what} would need {gigabytes(nbytes)}, more than the {gigabytes(free)} of memory "
                             f"available; {remedy}")


GROWING = frozenset({"Expand", "Tile", "Resize", "Upsample", "ConstantOfShape"})  # outputs sized by a value


def check_tensor_sizes(model: onnx.ModelProto) -> None:
    """Refuse a model whose Expand, Tile, Resize or ConstantOfShape makes a tensor larger than the memory available,
    before onnxruntime allocates it: sized by its declared shape (symbolic dims, such as the batch, counted as 1)
    where shape inference gave one, else at least by the constant shape, repeats or sizes input it reads."""
    constants = {t.name: t for t in model.graph.initializer}
    declared = {v.name: v.type.tensor_type for v in (*model.graph.value_info, *model.graph.output)}
    sizes = []
    for node in model.graph.node:
        if node.op_type in GROWING and node.output:
            t = declared.get(node.output[0])
            elements = _declared_elements(t) or _least_elements(node, constants)
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize if t and t.elem_type else 1
            sizes.append((elements * itemsize, elements, node))
    if sizes:
        nbytes, elements, node = max(sizes, key=lambda s: s[0])
        check_memory(f"{node.op_type} node '{node.name or node.output[0]}' ({elements:.3g} elements per image)",
                     nbytes, "the model cannot run on this machine")


def _declared_elements(t) -> int | None:
    if t is None or not t.HasField("shape") or not any(d.HasField("dim_value") for d in t.shape.dim):
        return None
    return math.prod(d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim)


def _least_elements(node, constants: dict) -> int:
    """The fewest elements the node's output can have, from its constant shape input (Expand broadcasts the input to
    at least that shape; ConstantOfShape makes it), repeats (Tile) or sizes (Resize); 0 where none is constant."""
    index = {"Expand": 1, "ConstantOfShape": 0, "Tile": 1, "Resize": 3}.get(node.op_type)
    if index is None or len(node.input) <= index or node.input[index] not in constants:
        return 0
    values = onnx.numpy_helper.to_array(constants[node.input[index]])
    return math.prod(max(int(v), 1) for v in values.reshape(-1)) if values.size else 0
