"""VJP rules for ops that move data without arithmetic: reshapes, transposes, joins, splits, slices, gathers, pads,
running sums and top-k.

Also the readers of a node's form shared by all rule modules: optional inputs, and inputs that must be constants
(indices, sizes, pads, axes) because the gradient's structure depends on their values.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ...errors import OnnxplainError
from ..builder import np_dtype, rank_of, shape_of
from . import constant_input, optional_input, vjp


def _static_dim(node, x, axis):
    """The size of x along `axis`, which must be known when the graph is built."""
    dim = shape_of(x)[axis]
    if not isinstance(dim, int):
        raise OnnxplainError(f"the gradient of {node.op} node '{node.name}' needs a fixed size along axis {axis} "
                             f"of '{x.name}', which has size '{dim}'")
    return dim


def _transpose(g, t, perm):
    return t if list(perm) == sorted(perm) else g.Transpose(t, perm=list(perm))


def _onehot(g, idx, dim, like):
    """(len(idx), dim) one-hot rows of the flattened indices: folded in numpy when `idx` and `dim` are known,
    computed in the graph when either is a tensor (indices or size known at run time only)."""
    if isinstance(dim, int) and not isinstance(idx, gs.Tensor):
        return g.const(np.reshape(idx, (-1, 1)) % dim == np.arange(dim), like=like)
    if g.opset < 11:
        raise OnnxplainError("gradients through gathers and slices whose sizes are known at run time only need "
                             f"opset 11 or newer, not {g.opset}")
    idx = g.Cast(idx, to=TensorProto.INT64) if isinstance(idx, gs.Tensor) else g.ints(idx)  # may be int32
    dim = dim if isinstance(dim, gs.Tensor) else g.ints(dim)
    hits = g.Equal(g.Mod(g.Reshape(idx, g.ints([-1, 1])), dim), g.Range(g.ints(0), dim, g.ints(1)))
    return g.cast_like(hits, like)


def _ungather(g, dy, onehot, ndim, axis, x):
    """Adjoint of Gather(x, idx, axis) for `ndim`-D indices given as one-hot rows: a MatMul, so repeats sum."""
    rank = rank_of(x)
    dims = range(axis, axis + ndim)  # the axes of dy that index into x's axis
    t = _transpose(g, dy, [i for i in range(rank - 1 + ndim) if i not in dims] + list(dims))
    t = g.MatMul(g.Reshape(t, g.ints([0] * (rank - 1) + [-1])), onehot)  # (..., len(idx)) @ (len(idx), dim)
    return _transpose(g, t, [*range(axis), rank - 1, *range(axis, rank - 1)])


def _dim(g, x, axis):
    """x's size along `axis`: an int when shape inference knows it, else a scalar computed at run time."""
    return shape_of(x)[axis] if isinstance(x.shape[axis], int) else g.Gather(g.Shape(x), g.ints(axis))


@vjp("Identity", "Dropout")  # Dropout at inference is the identity
def identity(node, dys, g):
    return [dys[0]]


@vjp("Cast", "CastLike")
def cast(node, dys, g):
    """dx = dy in x's float type; an integer x gets dy as it is (it is on the path only as a quantised value, whose
    straight-through cotangent is a float: see rules/quant.py)."""
    x = node.inputs[0]
    return [g.cast_like(dys[0], x) if np.issubdtype(np_dtype(x), np.floating) else dys[0]]


@vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(node, dys, g):
    return [g.Reshape(dys[0], g.Shape(node.inputs[0]))]


@vjp("Transpose")
def transpose(node, dys, g):
    perm = node.attrs.get("perm", list(range(rank_of(node.inputs[0])))[::-1])
    return [g.Transpose(dys[0], perm=np.argsort(perm).tolist())]


@vjp("Expand")
def expand(node, dys, g):
    return [g.unbroadcast(dys[0], node.inputs[0], node.outputs[0])]


@vjp("Tile")
def tile(node, dys, g):
    """View dy as (r0, d0, r1, d1, ...) and sum over the repeats r_i."""
    x, reps = node.inputs[0], constant_input(node, 1).reshape(-1, 1)
    split = g.Reshape(g.Concat(g.ints(reps), g.unsqueeze(g.Shape(x), [1]), axis=1), g.ints([-1]))
    return [g.reduce_sum(g.Reshape(dys[0], split), range(0, 2 * len(reps), 2), keepdims=False)]


@vjp("Concat")
def concat(node, dys, g):
    axis = node.attrs["axis"] % rank_of(node.outputs[0])
    sizes = [shape_of(t)[axis] for t in node.inputs]
    if all(isinstance(s, int) for s in sizes):
        parts = g.split(dys[0], sizes, axis)
        return parts if len(sizes) > 1 else [parts]
    parts, start = [], g.ints([0])
    for t in node.inputs:  # sizes known at run time only: slice dy at running offsets
        end = g.Add(start, g.slice(g.Shape(t), [axis], [axis + 1], [0]))
        parts.append(g.Slice(dys[0], start, end, g.ints([axis])))
        start = end
    return parts


@vjp("Split")
def split(node, dys, g):
    parts = [g.zeros_like(y) if d is None else d for y, d in zip(node.outputs, dys)]
    return [g.Concat(*parts, axis=node.attrs.get("axis", 0))]


def _slices(node, rank):
    """(axis, start, stop, step) per sliced axis; attributes before opset 10, constant inputs after."""
    if "starts" in node.attrs:
        starts, ends, axes, steps = node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None
    else:
        starts, ends, axes, steps = (constant_input(node, i) for i in range(1, 5))
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    return [(int(a) % rank, int(s), int(e), int(k)) for a, s, e, k in zip(axes, starts, ends, steps)]


@vjp("Slice")
def slice_(node, dys, g):
    """Zero-pad dy back along unit-step axes of known size; scatter it with a one-hot MatMul along the others.
    Bounds computed at run time (exports that slice at offsets computed from shapes): see _unslice."""
    x, dy = node.inputs[0], dys[0]
    if any(isinstance(t, gs.Variable) and t.name for t in node.inputs[1:]):
        return [_unslice(node, dy, g)]
    rank = rank_of(x)
    pads = [0] * (2 * rank)
    for axis, start, stop, step in _slices(node, rank):
        dim = _dim(g, x, axis)
        if isinstance(dim, int):
            idx = range(dim)[start:stop:step]  # Python's clamping is ONNX's
            if step == 1:
                pads[axis], pads[rank + axis] = idx.start, dim - idx.start - len(idx)
                continue
        else:  # the indices the forward slice took, at run time
            idx = g.slice(g.Range(g.ints(0), dim, g.ints(1)), [start], [stop], [0], [step])
        dy = _ungather(g, dy, _onehot(g, idx, dim, x), 1, axis, x)
    return [g.pad(dy, pads) if any(pads) else dy]


def _unslice(node, dy, g):
    """The node's own Slice, applied to a map of x's flat indices, tells where each element of dy came from (once
    each): scatter dy there into zeros of x's shape, whatever the bounds, axes and steps are at run time."""
    if g.opset < 11:
        raise OnnxplainError(f"the gradient of Slice '{node.name}', whose bounds are computed at run time, needs "
                             f"opset 11 or newer (Range, ScatterElements), not {g.opset}")
    x, flat = node.inputs[0], g.ints([-1])
    where = g.Slice(g.Reshape(g.Range(g.ints(0), g.Size(x), g.ints(1)), g.Shape(x)), *node.inputs[1:])
    dx = g.ScatterElements(g.Reshape(g.zeros(x), flat), g.Reshape(where, flat), g.Reshape(dy, flat), axis=0)
    return g.Reshape(dx, g.Shape(x))


@vjp("Gather")
def gather(node, dys, g):
    """Indices may be constants or computed at run time; repeated indices sum their cotangents."""
    x, idx = node.inputs
    axis = node.attrs.get("axis", 0) % rank_of(x)
    idx = idx.values if isinstance(idx, gs.Constant) else idx
    return [_ungather(g, dys[0], _onehot(g, idx, _dim(g, x, axis), x), rank_of(idx), axis, x)]


@vjp("GatherElements", min_opset=16)  # ScatterElements' reduction
def gather_elements(node, dys, g):
    """Repeated indices sum their cotangents."""
    x, idx = node.inputs
    return [g.ScatterElements(g.zeros(x), idx, dys[0], axis=node.attrs.get("axis", 0), reduction="add"), None]


@vjp("GatherND", min_opset=16)  # ScatterElements' reduction
def gather_nd(node, dys, g):
    """Repeated indices sum their cotangents: each index tuple becomes a flat index into x's first k axes, and dy
    (M×rest) is scatter-added there with ScatterElements. Not ScatterND: onnxruntime 1.31's CPU ScatterND with
    reduction add loses updates to repeated indices (3 runs of 20 wrong)."""
    x, idx = node.inputs
    if node.attrs.get("batch_dims", 0):
        raise OnnxplainError(f"GatherND node '{node.name}' has batch_dims {node.attrs['batch_dims']}; its gradient "
                             "is supported for batch_dims 0 only")
    k = idx.shape[-1] if idx.shape else None
    lead = list(x.shape[:k]) if isinstance(k, int) and x.shape is not None else [None]
    rows = list(idx.shape[:-1]) if idx.shape else [None]
    if not all(isinstance(d, int) for d in lead + rows):
        raise OnnxplainError(f"the gradient of GatherND '{node.name}' needs the static sizes of its indices "
                             f"{idx.shape} and of the axes they index in '{x.name}' {x.shape}")
    strides = [int(np.prod(lead[j + 1:])) for j in range(k)]
    i = g.Cast(idx, to=7)                                                    # int64
    i = g.Where(g.Less(i, g.ints(0)), g.Add(i, g.ints(lead)), i)           # negative indices count from the end
    flat = g.Reshape(g.reduce_sum(g.Mul(i, g.ints(strides)), [-1], keepdims=False), g.ints([-1, 1]))
    dy = g.Reshape(dys[0], g.ints([int(np.prod(rows)), -1]))                 # M×rest
    dx = g.ScatterElements(g.Reshape(g.zeros(x), g.ints([int(np.prod(lead)), -1])), g.Expand(flat, g.Shape(dy)),
                           dy, axis=0, reduction="add")
    return [g.Reshape(dx, g.Shape(x)), None]


@vjp("TopK", min_opset=11)  # ScatterElements
def top_k(node, dys, g):
    """The values' cotangents go back to the positions they were taken from (the indices, distinct along axis)."""
    x, indices, dy = node.inputs[0], node.outputs[1], dys[0]
    dx = None if dy is None else g.ScatterElements(g.zeros(x), indices, dy, axis=node.attrs.get("axis", -1))
    return [dx] + [None] * (len(node.inputs) - 1)


@vjp("CumSum")
def cumsum(node, dys, g):
    """Each input reaches the outputs at and after it (before it when reversed): sum their cotangents the other way."""
    exclusive, reverse = node.attrs.get("exclusive", 0), node.attrs.get("reverse", 0)
    return [g.CumSum(dys[0], node.inputs[1], exclusive=exclusive, reverse=1 - reverse), None]


@vjp("DepthToSpace", "SpaceToDepth")
def depth_to_space(node, dys, g):
    """Both permute elements: dx is dy permuted back. DepthToSpace in DCR mode and SpaceToDepth undo each other;
    CRD mode (N, C b², H, W) -> (N, C, H b, W b) is undone by its reshapes and transpose in reverse."""
    x, dy, b = node.inputs[0], dys[0], node.attrs["blocksize"]
    if node.op == "SpaceToDepth":
        return [g.DepthToSpace(dy, blocksize=b, mode="DCR")]
    if node.attrs.get("mode", "DCR") == "DCR":
        return [g.SpaceToDepth(dy, blocksize=b)]
    c, h, w = (_static_dim(node, x, axis) for axis in (1, 2, 3))
    t = g.Reshape(dy, g.ints([0, c // (b * b), h, b, w, b]))
    return [g.Reshape(g.Transpose(t, perm=[0, 1, 3, 5, 2, 4]), g.ints([0, c, h, w]))]


def _pads(node, rank):
    """Pad's begin and end pads for every axis: an attribute before opset 11, then constant inputs (axes from 18)."""
    if "pads" in node.attrs:
        return list(node.attrs["pads"])
    pads, axes = constant_input(node, 1).tolist(), constant_input(node, 3)
    if axes is None:
        return pads
    full = [0] * (2 * rank)
    for i, a in enumerate(int(a) % rank for a in axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    return full


@vjp("Pad")
def pad(node, dys, g):
    """Constant mode: crop dy by the same pads (pads may be computed at run time). reflect/edge/wrap: Pad gathers
    along each padded axis, so ungather each; the constant value gets the cotangent that fell on the padding."""
    x, dy = node.inputs[0], dys[0]
    rank, mode = rank_of(x), node.attrs.get("mode", "constant")
    if mode == "constant":
        if "pads" in node.attrs:
            dx = g.pad(dy, [-p for p in node.attrs["pads"]])
        else:
            axes = optional_input(node, 3)
            dx = g.Pad(dy, g.Neg(node.inputs[1]), *([] if axes is None else [None, axes]), mode="constant")
        value = optional_input(node, 2)
        if value is None or not g.needs(value):
            return [dx]
        padding = g.Sub(g.reduce_sum(dy, range(rank)), g.reduce_sum(dx, range(rank)))
        return [dx, None, g.Reshape(padding, g.Shape(value))]
    pads = _pads(node, rank)
    if min(pads) < 0:
        raise OnnxplainError(f"Pad node '{node.name}' crops in {mode} mode, which is not supported")
    for axis in range(rank):
        if pads[axis] or pads[rank + axis]:
            dim = _static_dim(node, x, axis)
            idx = np.pad(np.arange(dim), (pads[axis], pads[rank + axis]), mode=mode)  # numpy's modes are ONNX's
            dy = _ungather(g, dy, _onehot(g, idx, dim, x), 1, axis, x)
    return [dy]
