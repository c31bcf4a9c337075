"""Emit ONNX nodes into an onnx-graphsurgeon graph so that graph-building code reads like the math.

    g = Builder(graph, opset)
    dx = g.Mul(dy, g.Cast(g.Greater(x, g.const(0, like=x)), to=FLOAT))

Attribute keywords pass through as node attributes. The helpers below hide the opset differences of the ops whose
attributes became inputs over time (Reduce*, Squeeze, Unsqueeze, Split, Pad, Slice, Resize), so rules never branch on
the opset themselves.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Tensor = gs.Tensor

# The first opset in which each op takes `axes` as an input instead of an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13}
_REDUCE_AXES_INPUT_SINCE = 18


def np_dtype(t: Tensor):
    """The numpy dtype of a tensor, float32 when shape inference left it unknown."""
    return np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)


class Builder:
    def __init__(self, graph: gs.Graph, opset: int, prefix: str = "onnxplain"):
        self.graph, self.opset, self.prefix = graph, opset, prefix
        self._ids = itertools.count()

    # -- emitting --------------------------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._ids)}"

    def op(self, op_type: str, *inputs, outputs: int = 1, **attrs):
        """Append one node; returns its output tensor, or a list when `outputs` > 1. `None` inputs stay empty."""
        ins = [gs.Variable.empty() if t is None else self._tensor(t) for t in inputs]
        outs = [gs.Variable(self.name(op_type.lower())) for _ in range(outputs)]
        node = gs.Node(op_type, name=self.name(op_type), attrs=attrs, inputs=ins, outputs=outs)
        self.graph.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def __getattr__(self, op_type: str):
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.op(op_type, *inputs, **attrs)

    def const(self, value, like: Tensor | None = None, dtype=None) -> gs.Constant:
        """A constant with the dtype of `like` (or `dtype`); scalars stay rank 0 and broadcast."""
        dt = np_dtype(like) if like is not None else (dtype or None)
        arr = np.asarray(value, dtype=dt)
        return gs.Constant(self.name("const"), values=arr)

    def ints(self, values) -> gs.Constant:
        return gs.Constant(self.name("ints"), values=np.asarray(values, dtype=np.int64))

    def _tensor(self, t):
        return t if isinstance(t, Tensor) else self.const(t)

    # -- opset-portable helpers ------------------------------------------------------------------------------
    def reduce(self, op_type: str, x, axes, keepdims: bool = True):
        axes = [int(a) for a in axes]
        since = _AXES_INPUT_SINCE.get(op_type, _REDUCE_AXES_INPUT_SINCE)
        if self.opset >= since:
            return self.op(op_type, x, self.ints(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))

    def reduce_sum(self, x, axes, keepdims: bool = True):
        return self.reduce("ReduceSum", x, axes, keepdims)

    def reduce_mean(self, x, axes, keepdims: bool = True):
        return self.reduce("ReduceMean", x, axes, keepdims)

    def reduce_max(self, x, axes, keepdims: bool = True):
        return self.reduce("ReduceMax", x, axes, keepdims)

    def squeeze(self, x, axes):
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints(axes))
        return self.op("Squeeze", x, axes=list(axes))

    def unsqueeze(self, x, axes):
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=list(axes))

    def slice(self, x, starts, ends, axes, steps=None):
        if self.opset < 10:
            if steps is not None and any(s != 1 for s in steps):
                raise ValueError("Slice with steps needs opset 10")
            return self.op("Slice", x, starts=list(starts), ends=list(ends), axes=list(axes))
        args = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
        if steps is not None:
            args.append(self.ints(steps))
        return self.op("Slice", *args)

    def pad(self, x, pads, mode: str = "constant"):
        if self.opset < 11:
            return self.op("Pad", x, pads=[int(p) for p in pads], mode=mode)
        return self.op("Pad", x, self.ints(pads), mode=mode)

    def split(self, x, sizes, axis: int):
        if self.opset >= 13:
            return self.op("Split", x, self.ints(sizes), axis=axis, outputs=len(sizes))
        return self.op("Split", x, axis=axis, split=list(sizes), outputs=len(sizes))

    def resize(self, x, sizes, mode: str = "linear", **attrs):
        """Resize to absolute `sizes` (a 1-D int64 tensor or list covering every axis)."""
        sizes = sizes if isinstance(sizes, Tensor) else self.ints(sizes)
        empty = None if self.opset >= 13 else self.const(np.zeros(0, np.float32))  # roi and scales: optional from 13
        return self.op("Resize", x, empty, empty, sizes, mode=mode, **attrs)

    def cast_like(self, x, like: Tensor):
        return self.op("Cast", x, to=int(onnx.helper.np_dtype_to_tensor_dtype(np_dtype(like))))

    def zeros_like(self, t: Tensor):
        return self.Mul(t, self.const(0, like=t))

    def zeros(self, t: Tensor):
        """Zeros of t's shape and dtype, not computed from t's values (opset 9)."""
        return self.ConstantOfShape(self.Shape(t), value=gs.Constant(self.name("zero"), np.zeros(1, np_dtype(t))))

    def size_of(self, t: Tensor, axis: int):
        """t's size along `axis` as a 1-element int64 tensor: a constant when shape inference knows it."""
        if t.shape is not None and isinstance(t.shape[axis], int):
            return self.ints([t.shape[axis]])
        return self.slice(self.Shape(t), [axis], [axis + 1], [0])

    def unbroadcast(self, grad, x: Tensor, out: Tensor):
        """Sum `grad` (shaped like the broadcast result `out`) back to the shape of `x` (NumPy broadcasting)."""
        rank_diff = -rank_of(x) + rank_of(out)  # (x's asked for first: the one a message names)
        axes = list(range(rank_diff))
        for i, d in enumerate(x.shape):
            o = out.shape[i + rank_diff]
            if d == 1 and o != 1:
                axes.append(i + rank_diff)
        if not axes:
            return grad
        summed = self.reduce_sum(grad, axes, keepdims=True)
        if rank_diff == 0:
            return summed
        return self.Reshape(summed, self.Shape(x) if not _static(x) else self.ints(x.shape))


class RankLost(Exception):
    """A rule needs the rank of `tensor`, which ONNX shape inference did not find (opset-11 exports reshape to
    shapes computed from Shape/Slice/Concat); the walk names the node in one line (`autodiff`)."""

    def __init__(self, tensor: Tensor):
        super().__init__(tensor.name)
        self.tensor = tensor


def shape_of(t: Tensor) -> tuple:
    """t's shape from shape inference (a dim may be symbolic); RankLost where its rank is unknown."""
    if t.shape is None:
        raise RankLost(t)
    return tuple(t.shape)


def rank_of(t: Tensor) -> int:
    return len(shape_of(t))


def _static(t: Tensor) -> bool:
    return t.shape is not None and all(isinstance(d, int) and d >= 0 for d in t.shape)
