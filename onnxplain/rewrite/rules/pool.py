"""VJP rules for pooling, LRN and resizing.

Max pooling routes each output's cotangent to the input its window picked (ORT's Indices: the first maximum on
ties, as torch). Average pooling is a depthwise convolution with a ones kernel and a per-output divisor, so its
gradient is the divided cotangent through the Conv input gradient of conv.py. Resize is linear and separable per
axis: each axis' interpolation matrix is read off ORT itself (a one-axis Resize of an identity basis), and
dx = M_hᵀ · dy · M_w.
"""
from __future__ import annotations

from functools import lru_cache, reduce

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper, numpy_helper

from ...errors import OnnxplainError
from ..builder import np_dtype, rank_of, shape_of
from . import constant_input, optional_input, vjp
from .conv import conv_input_grad, window


@vjp("MaxPool", min_opset=16)
def max_pool(node, dys, g):
    x, (dy, *_) = node.inputs[0], dys
    has_indices = len(node.outputs) > 1 and node.outputs[1].name and not node.attrs.get("storage_order", 0)
    indices = (node.outputs[1] if has_indices else
               g.op("MaxPool", x, outputs=2, **{**node.attrs, "storage_order": 0})[1])
    flat = g.ints([-1])  # indices count over the whole flattened input
    dx = g.ScatterElements(g.Reshape(g.zeros(x), flat), g.Reshape(indices, flat), g.Reshape(dy, flat), axis=0,
                           reduction="add")
    return [g.Reshape(dx, g.Shape(x))]


@vjp("GlobalMaxPool", min_opset=11)
def global_max_pool(node, dys, g):
    x, (dy,) = node.inputs[0], dys
    xf = g.Reshape(x, g.ints([0, 0, -1]))
    first_max = g.ArgMax(xf, axis=2, keepdims=1)
    dx = g.ScatterElements(g.zeros(xf), first_max, g.Reshape(dy, g.ints([0, 0, 1])), axis=2)
    return [g.Reshape(dx, g.Shape(x))]


@vjp("GlobalAveragePool")
def global_average_pool(node, dys, g):
    x, y, (dy,) = node.inputs[0], node.outputs[0], dys
    count = g.cast_like(g.Div(g.Size(x), g.Size(y)), x)  # H·W...
    return [g.Expand(g.Div(dy, count), g.Shape(x))]


def _window_sizes(n, o, k, s, d, head, tail, include_pad):
    """ORT's divisor of each output along one axis: taps inside the input, or inside input and padding."""
    start = np.arange(o) * s - head
    if include_pad:
        return 1 + (np.minimum(start + k * d, n + tail) - start - 1) // d
    taps = start[:, None] + d * np.arange(k)
    return ((taps >= 0) & (taps < n)).sum(1)


@vjp("AveragePool")
def average_pool(node, dys, g):
    x, (dy,) = node.inputs[0], dys
    win, channels = window(node, node.attrs["kernel_shape"]), _channels(node, x)
    include_pad = node.attrs.get("count_include_pad", 0)
    sizes = [_window_sizes(*axis, include_pad) for axis in
             zip(win.ins, win.outs, win.kernel, win.strides, win.dilations, win.heads, win.tails)]
    divisor = np.maximum(reduce(np.multiply.outer, sizes), 1)
    ones = np.ones((channels, 1, *win.kernel), np_dtype(x))
    return [conv_input_grad(g, g.Div(dy, g.const(divisor, like=x)), ones, win, channels)]


def _channels(node, x) -> int:
    if x.shape is None or not isinstance(x.shape[1], int):
        raise OnnxplainError(f"the gradient of {node.op} '{node.name}' needs the static channel count of its input")
    return x.shape[1]


@vjp("LRN")
def lrn(node, dys, g):
    """y = x·s^-β with s = bias + α/size·Σ_window x²: dx = dy·s^-β - 2αβ/size · x · Σᵀ_window(dy·y/s)."""
    x, y, (dy,), a = node.inputs[0], node.outputs[0], dys, node.attrs
    size, alpha, beta, bias = a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    c, r = _channels(node, x), rank_of(x) - 2
    lo, hi = (size - 1) // 2, size // 2  # the window of channel i is [i - lo, i + hi]
    band = np.array([[i - lo <= j <= i + hi for j in range(c)] for i in range(c)], np_dtype(x))

    def window_sum(t, m):  # a 1×1 Conv mixing channels
        return g.Conv(t, g.const(np.ascontiguousarray(m).reshape(c, c, *[1] * r)))
    s = g.Add(g.const(bias, like=x), g.Mul(g.const(alpha / size, like=x), window_sum(g.Mul(x, x), band)))
    back = window_sum(g.Div(g.Mul(dy, y), s), band.T)
    return [g.Sub(g.Mul(dy, g.Pow(s, g.const(-beta, like=x))),
                  g.Mul(g.const(2 * alpha * beta / size, like=x), g.Mul(x, back)))]


@vjp("Resize", "Upsample")
def resize(node, dys, g):
    x, (dy,) = node.inputs[0], dys
    rank, dx = rank_of(x), dy
    for axis, n, scale, size, roi in _resized_axes(node, g.opset):
        m = _interpolation(node.op, g.opset, _attrs_key(node.attrs), n, scale, size, roi)  # [out, in]
        dx = _along(g, dx, m.astype(np_dtype(x)), axis, rank)
    return [dx] + [None] * (len(node.inputs) - 1)


def _along(g, t, m, axis: int, rank: int):
    """Contract axis `axis` of t (length out) with m (out × in)."""
    if axis == rank - 1:
        return g.MatMul(t, g.const(m))
    perm = list(range(rank))
    perm[axis], perm[-2] = perm[-2], perm[axis]
    swap = (lambda u: g.Transpose(u, perm=perm)) if axis != rank - 2 else (lambda u: u)
    return swap(g.MatMul(g.const(np.ascontiguousarray(m.T)), swap(t)))


def _resized_axes(node, opset: int):
    """(axis, input size, scale or None, output size or None, (roi start, roi end)) of each axis Resize changes."""
    x, y, a = node.inputs[0], node.outputs[0], node.attrs
    rank = rank_of(x)
    axes = [ax % rank for ax in a.get("axes", range(rank))]
    if node.op == "Upsample" and opset < 9:
        roi, scales, sizes = None, a["scales"], None
    elif node.op == "Upsample" or opset < 11:
        roi, scales, sizes = None, _given(node, 1), None
    else:
        roi, scales, sizes = _given(node, 1), _given(node, 2), optional_input(node, 3)
        if isinstance(sizes, gs.Variable):  # computed in the graph: shape inference may know the result
            sizes = [y.shape[ax] if y.shape is not None else None for ax in axes]
        elif sizes is not None:
            sizes = _given(node, 3)
        if sizes is not None and not all(isinstance(d, (int, np.integer)) or d == x.shape[ax]  # kept, e.g. the batch
                                         for d, ax in zip(sizes, axes)):
            raise OnnxplainError(f"the gradient of Resize '{node.name}' needs constant sizes or static output sizes")
        if sizes is not None and a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise OnnxplainError(f"the gradient of Resize '{node.name}' does not support keep_aspect_ratio_policy")
    crop = a.get("coordinate_transformation_mode") == "tf_crop_and_resize"
    for i, axis in enumerate(axes):
        n, span = shape_of(x)[axis], (float(roi[i]), float(roi[i + len(axes)])) if crop else (0.0, 1.0)
        scale, size = (float(scales[i]), None) if scales is not None else (None, sizes[i])
        if (scale == 1.0 or size == n) and not crop:
            continue
        if not isinstance(n, int) or not isinstance(size, (int, np.integer, type(None))):
            raise OnnxplainError(f"the gradient of {node.op} '{node.name}' needs the static size of axis {axis}")
        yield axis, n, scale, None if size is None else int(size), span


def _given(node, i: int):
    """Constant input i as a flat array; None when omitted or empty."""
    v = constant_input(node, i)
    return v.ravel() if v is not None and v.size else None


def _attrs_key(attrs) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))


@lru_cache(maxsize=256)
def _interpolation(op: str, opset: int, attrs: tuple, n: int, scale, size, roi) -> np.ndarray:
    """The out × in matrix of a one-axis resize, as ORT computes it: the same op resizing an n × n identity basis."""
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs
             if k not in ("axes", "keep_aspect_ratio_policy")}
    inits = {}
    if op == "Upsample" and opset < 9:
        attrs["scales"], names = [1.0, scale], ["x"]
    elif op == "Upsample" or opset < 11:
        inits["scales"], names = np.array([1, scale], np.float32), ["x", "scales"]
    else:
        attrs["extrapolation_value"] = 0.0  # the constant it adds outside the roi is not part of the linear map
        inits["roi"] = np.array([0, roi[0], 1, roi[1]], np.float32)
        inits["scales"] = np.array([1, scale] if scale is not None else [], np.float32)
        names = ["x", "roi", "scales"] + (["sizes"] if size is not None else [])
        if size is not None:
            inits["sizes"] = np.array([n, size], np.int64)
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)], "basis",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.eye(n, dtype=np.float32)})[0].T.astype(np.float64)
