"""Static shapes for one input size: the image input's height and width fixed, every tensor's shape inferred, and
where ONNX's shape inference gives up (sizes computed at run time, ops it does not know), read from one probe run of
the model, so that no rule is starved of a shape that a forward pass tells. The batch dimension stays symbolic."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..limits import check_tensor_sizes
from ..passes import probe
from ..protos import graph_inputs
from .graph import fold_constants, infer_shapes

PROBE_BATCHES = (1, 2)  # a dimension that differs between the two runs depends on the batch and stays symbolic


def sized(model: onnx.ModelProto, input_name: str, axes: tuple[int, int], size: tuple[int, int]) -> onnx.ModelProto:
    """A copy of `model` with the `axes` of `input_name` fixed to `size` and no value_info (shapes of another size)."""
    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    dims = next(i for i in fixed.graph.input if i.name == input_name).type.tensor_type.shape.dim
    for axis, s in zip(axes, size):
        dims[axis].dim_value = int(s)
    del fixed.graph.value_info[:]
    return fixed


def at_size(model: onnx.ModelProto, input_name: str, axes: tuple[int, int], size: tuple[int, int]
            ) -> tuple[onnx.ModelProto, str | None]:
    """`model` with the `axes` of `input_name` fixed to `size`, its constant subgraphs folded and every tensor's shape
    inferred once for all that read it (`build(shaped=True)`, `find_layers`, `scale_merges`), and a note when
    shapes came from a probe run: where static inference left a shape open, the probe declares the shapes of the
    model as exported, which are then folded (constants computed from those shapes too) and inferred. A tensor larger
    than the memory available is refused first (`limits.check_tensor_sizes`)."""
    fixed = sized(model, input_name, axes, size)
    batch = next(i for i in fixed.graph.input if i.name == input_name).type.tensor_type.shape.dim[0].dim_param or None
    inferred = infer_shapes(fold_constants(fixed))
    check_tensor_sizes(inferred)
    if not _open_shapes(inferred, batch):
        return inferred, None
    unfolded = infer_shapes(fixed)  # the probe declares the shapes of the model as exported, and then they fold
    open_ = _open_shapes(unfolded, batch)
    probed = _probe(unfolded, open_)
    if probed is None:
        return inferred, None
    declared = _declare(unfolded, probed, open_, batch)
    inferred = infer_shapes(fold_constants(unfolded))
    return inferred, (f"shapes of {declared} tensors that ONNX shape inference left open come from a probe run of "
                      f"the model at {size[0]}x{size[1]}")


def _known(shape, batch: str | None) -> bool:
    """Whether a shape has a rank and every dimension is a number or the batch. A first dimension of another name
    is open too: inference that computes a size from Shape slices (ghostnetv2's Resize to its input's size) names
    the batch afresh ('unk__39'), and a rule comparing it with its input's batch would find them different."""
    return shape is not None and all(d.HasField("dim_value") or (batch and d.dim_param == batch) for d in shape.dim)


def _open_shapes(model: onnx.ModelProto, batch: str | None) -> set[str]:
    """Names of the node outputs whose type is unknown or whose shape is not static (but for the batch)."""
    types = {vi.name: vi.type for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    open_ = set()
    for node in model.graph.node:
        for name in filter(None, node.output):
            t = types.get(name)
            if t is None or (t.HasField("tensor_type") and not _known(
                    t.tensor_type.shape if t.tensor_type.HasField("shape") else None, batch)):
                open_.add(name)
    return open_


def _probe(model: onnx.ModelProto, names: set[str]) -> dict[str, tuple[np.dtype, tuple, tuple]] | None:
    """dtype and shapes of the node outputs `names` in runs of one session at each of PROBE_BATCHES (only those made
    outputs: onnxruntime optimises the rest as it would), or None when the model cannot be probed (inputs with
    symbolic dimensions besides the batch, or onnxruntime cannot run it)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in copy.graph.output}
    for name in [n for node in copy.graph.node for n in node.output if n in names and n not in have]:
        copy.graph.output.add().name = name
    specs = []
    for i in graph_inputs(copy.graph):
        dims = i.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims[1:]):
            return None
        specs.append((i.name, helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
                      [d.dim_value for d in dims[1:]]))
    try:
        runs = probe.runs(copy, [{name: np.zeros([b, *rest], dtype) for name, dtype, rest in specs}
                                 for b in PROBE_BATCHES])
    except RuntimeError:  # left to the rules, which say which shape they lack
        return None
    outputs = [o.name for o in copy.graph.output]
    return {name: (a.dtype, a.shape, b.shape) for name, a, b in zip(outputs, *runs)
            if isinstance(a, np.ndarray) and a.ndim == b.ndim}


def _declare(model: onnx.ModelProto, probed: dict, names: set[str], batch: str | None) -> int:
    """Declare the probed shape of each of `names` in `model`'s value_info; returns how many were declared."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    kept = [vi for vi in graph.value_info if vi.name not in names or vi.name not in probed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    declared = 0
    for name in sorted(names & probed.keys() - outputs):
        dtype, small, large = probed[name]
        shape = [a if a == b else batch if (a, b) == PROBE_BATCHES and batch else f"{name}_d{i}"
                 for i, (a, b) in enumerate(zip(small, large))]
        graph.value_info.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
        declared += 1
    return declared
