"""VJP rules for Conv and ConvTranspose, and the sliding-window helpers that the pooling rules share.

The input gradient of a convolution is the transposed convolution of the cotangent. ORT's CPU ConvTranspose is 3-12×
slower than Conv for depthwise kernels, so it is emitted as a plain Conv: of the cotangent zero-inserted between
samples (stride > 1), with the kernel flipped in space and its in/out channels swapped per group. For strided dense
kernels the zeros cost s² times the work, and ORT's ConvTranspose is faster: `use_conv_transpose` picks it there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import OnnxplainError
from ..builder import np_dtype
from . import vjp

SAME = ("SAME_UPPER", "SAME_LOWER")


@dataclass
class Window:
    """Per spatial axis: input and output sizes, kernel, stride, dilation, and padding at the begin and end."""
    ins: list
    outs: list
    kernel: list
    strides: list
    dilations: list
    heads: list
    tails: list


def static_spatial(node, t: gs.Tensor, what: str) -> list[int]:
    """The spatial sizes (axes 2..) of `t`, which the gradient of `node` needs to be static."""
    dims = list(t.shape[2:]) if t.shape is not None else [None]
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise OnnxplainError(f"the gradient of {node.op} '{node.name}' needs the static spatial size of its {what}")
    return dims


def _attributes(node, r: int):
    """Strides, dilations, auto_pad and explicit pads of a Conv, ConvTranspose or pooling node."""
    a = node.attrs
    auto_pad = a.get("auto_pad", "NOTSET")
    pads = list(a.get("pads", [0] * 2 * r)) if auto_pad == "NOTSET" else [0] * 2 * r
    return list(a.get("strides", [1] * r)), list(a.get("dilations", [1] * r)), auto_pad, pads


def _heads(totals, auto_pad: str) -> list[int]:
    """Where ORT puts a total padding: the odd sample at the end for SAME_UPPER, at the begin otherwise."""
    return [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]


def window(node, kernel) -> Window:
    """The window of a Conv or pooling node, with paddings and output sizes as ORT computes them."""
    r, ceil = len(kernel), node.attrs.get("ceil_mode", 0)
    ins = static_spatial(node, node.inputs[0], "input")
    strides, dilations, auto_pad, pads = _attributes(node, r)
    if auto_pad in SAME:
        total = [max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
                 for n, k, s, d in zip(ins, kernel, strides, dilations)]
        heads = _heads(total, auto_pad)
        pads = heads + [t - h for t, h in zip(total, heads)]
    heads, tails = pads[:r], pads[r:]
    outs = []
    for n, k, s, d, h, t in zip(ins, kernel, strides, dilations, heads, tails):
        span = n + h + t - (k - 1) * d - 1
        o = (-(-span // s) if ceil else span // s) + 1
        outs.append(o - 1 if ceil and (o - 1) * s >= n + h else o)  # no window may start in the end padding
    return Window(ins, outs, list(kernel), strides, dilations, heads, tails)


# -- the input gradient ----------------------------------------------------------------------------------------------
def conv_input_grad(g, dy, w, win: Window, group: int):
    """dx of y = Conv(x, w) given dy; `w` is a tensor or an array."""
    if use_conv_transpose(win, group):
        return g.ConvTranspose(dy, _as_tensor(g, w), strides=win.strides, dilations=win.dilations, group=group,
                               **_transpose_pads(win))
    z = _zero_insert(g, dy, w, win.strides)  # length out · stride on each axis
    begins = [(k - 1) * d - h for k, d, h in zip(win.kernel, win.dilations, win.heads)]
    ends = [n - o * s + h for n, o, s, h in zip(win.ins, win.outs, win.strides, win.heads)]
    return conv(g, z, _transposed_kernel(g, w, group), begins, ends, [1] * len(begins), win.dilations, group)


def use_conv_transpose(win: Window, group: int) -> bool:
    """Whether ORT's ConvTranspose beats the zero-inserting Conv: for strided dense kernels (see the module doc)."""
    return group == 1 and any(s > 1 for s in win.strides)


def _transpose_pads(win: Window) -> dict:
    """ConvTranspose paddings that give back exactly the input size. Per axis, equal paddings at both ends with the
    missing end samples added back by output_padding where that is below the stride: onnxruntime's CUDA ConvTranspose
    (cuDNN) takes only equal ones, and places a node with unequal ones on the CPU (ResNet-50's stem and strided 3×3s:
    4 of its 7). Otherwise the end is cropped, or extended by output_padding."""
    crop = [(o - 1) * s + (k - 1) * d + 1 - h - n
            for n, o, k, s, d, h in zip(win.ins, win.outs, win.kernel, win.strides, win.dilations, win.heads)]
    even = [0 <= h - c < s for h, c, s in zip(win.heads, crop, win.strides)]
    return {"pads": win.heads + [h if e else max(c, 0) for h, c, e in zip(win.heads, crop, even)],
            "output_padding": [h - c if e else max(-c, 0) for h, c, e in zip(win.heads, crop, even)]}


def _zero_insert(g, dy, w, strides):
    """dy with stride - 1 zeros after each sample on each spatial axis, as a depthwise 1×1 ConvTranspose of ones:
    a pure scatter that ORT runs about 10× faster than Unsqueeze/Pad/Reshape or Resize and a mask."""
    if all(s == 1 for s in strides):
        return dy
    ones = np.ones((w.shape[0], 1) + (1,) * len(strides), np_dtype(w))
    return g.ConvTranspose(dy, g.const(ones), strides=strides, group=w.shape[0],
                           output_padding=[s - 1 for s in strides])


def _transposed_kernel(g, w, group: int):
    """The kernel of the transposed convolution: in/out channels swapped per group, spatial axes flipped."""
    m, cg, *k = w.shape
    r = len(k)
    if not isinstance(w, gs.Variable):
        v = (w.values if isinstance(w, gs.Constant) else w).reshape(group, m // group, cg, *k)
        v = v.swapaxes(1, 2).reshape(cg * group, m // group, *k)
        return np.ascontiguousarray(np.flip(v, axis=tuple(range(2, 2 + r))))
    t = g.Transpose(g.Reshape(w, g.ints([group, m // group, cg, *k])), perm=[0, 2, 1, *range(3, 3 + r)])
    t = g.Reshape(t, g.ints([cg * group, m // group, *k]))
    return g.slice(t, [-1] * r, [np.iinfo(np.int64).min] * r, list(range(2, 2 + r)), [-1] * r)


def conv(g, x, w, begins, ends, strides, dilations, group: int):
    """Conv whose paddings may be negative: those samples are cropped from `x` first."""
    if any(p < 0 for p in begins + ends):
        x = g.slice(x, [max(-p, 0) for p in begins], [min(p, 0) or np.iinfo(np.int64).max for p in ends],
                    list(range(2, 2 + len(begins))))
    return g.Conv(x, _as_tensor(g, w), strides=strides, dilations=dilations, group=group,
                  pads=[max(p, 0) for p in begins + ends])


def _as_tensor(g, w):
    return w if isinstance(w, gs.Tensor) else g.const(w)


def _end_pad(least: int, span: int) -> int:
    """An end padding in [least, least + span), which all give the same strided output size, cropping the least."""
    return least if least >= 0 else min(0, least + span - 1)


# -- weight and bias gradients ---------------------------------------------------------------------------------------
def conv_weight_grad(g, x, dy, win: Window, group: int, channels: int):
    """dw of y = Conv(x, w): a Conv of x (batch as channels) with dy (as kernel), strides and dilations swapped."""
    r, cg = len(win.kernel), channels // group
    xt = g.Transpose(g.Reshape(x, g.ints([0, group, cg, *win.ins])), perm=[2, 1, 0, *range(3, 3 + r)])
    xt = g.Reshape(xt, g.ints([cg, -1, *win.ins]))  # [C/G, G·N, ...]: group-major channels
    dyt = g.Transpose(dy, perm=[1, 0, *range(2, 2 + r)])
    ends = [_end_pad((k - 1) * d + 1 + s * (o - 1) - n - h, d)
            for n, o, k, s, d, h in zip(win.ins, win.outs, win.kernel, win.strides, win.dilations, win.heads)]
    dw = conv(g, xt, dyt, win.heads, ends, win.dilations, win.strides, group)  # [C/G, M, k...]
    return g.Transpose(dw, perm=[1, 0, *range(2, 2 + r)])


def _bias_grad(g, node, dy):
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None or not g.needs(b):
        return None
    return g.reduce_sum(dy, [0, *range(2, len(node.inputs[1].shape))], keepdims=False)


def _kernel(node, w) -> list[int]:
    if w.shape is None or not all(isinstance(d, int) for d in w.shape):
        raise OnnxplainError(f"the gradient of {node.op} '{node.name}' needs the static shape of its weight")
    if len(w.shape) < 3:  # the checker does not look at ranks; onnxruntime would refuse to run it too
        raise OnnxplainError(f"{node.op} node '{node.name}' has a weight '{w.name}' of shape {list(w.shape)}: not "
                             f"a convolution kernel (out channels × in channels × kernel size)")
    return list(w.shape[2:])


# -- the rules -------------------------------------------------------------------------------------------------------
@vjp("Conv")
def conv_vjp(node, dys, g):
    x, w = node.inputs[:2]
    (dy,), group = dys, node.attrs.get("group", 1)
    win = window(node, _kernel(node, w))
    return [conv_input_grad(g, dy, w, win, group) if g.needs(x) else None,
            conv_weight_grad(g, x, dy, win, group, w.shape[1] * group) if g.needs(w) else None,
            _bias_grad(g, node, dy)][:len(node.inputs)]


def _adjoint_window(node, kernel) -> Window:
    """ConvTranspose is the adjoint of a Conv from its output back to its input: that Conv's window, with the
    ConvTranspose's output size and paddings as ORT computes them (output_shape and SAME split a total padding)."""
    r, shape = len(kernel), node.attrs.get("output_shape")
    ins = static_spatial(node, node.inputs[0], "input")
    strides, dilations, auto_pad, pads = _attributes(node, r)
    extra = list(node.attrs.get("output_padding", [0] * r))
    full = [(n - 1) * s + (k - 1) * d + 1 + p for n, k, s, d, p in zip(ins, kernel, strides, dilations, extra)]
    if shape or auto_pad in SAME:
        outs = list(shape[-r:]) if shape else [n * s for n, s in zip(ins, strides)]
        heads = _heads([max(0, f - o) for f, o in zip(full, outs)], auto_pad)
    else:
        heads, outs = pads[:r], [f - b - e for f, b, e in zip(full, pads[:r], pads[r:])]
    tails = [_end_pad(f - p - o - h, s) for f, p, o, h, s in zip(full, extra, outs, heads, strides)]
    return Window(outs, ins, list(kernel), strides, dilations, heads, tails)


@vjp("ConvTranspose")
def conv_transpose_vjp(node, dys, g):
    x, w = node.inputs[:2]
    (dy,), group = dys, node.attrs.get("group", 1)
    win = _adjoint_window(node, _kernel(node, w))
    return [conv(g, dy, w, win.heads, win.tails, win.strides, win.dilations, group) if g.needs(x) else None,
            conv_weight_grad(g, dy, x, win, group, w.shape[1] * group) if g.needs(w) else None,
            _bias_grad(g, node, dy)][:len(node.inputs)]
