"""Check VJP rules against central finite differences of onnxruntime's own forward pass.

`check_vjp` builds a one-node graph, appends its gradient subgraph with onnxplain's engine, and compares the
gradient's directional derivatives <grad, v> with (L(x + eps v) - L(x - eps v)) / 2 eps, L = sum <u, f(x)> for a
random cotangent u, along the coordinate axes (small tensors) or random directions. Ops that onnxruntime runs in
float64 are checked in float64; float32-only ops (Conv, ...) use a larger step, exact for the linear ones.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxplain.rewrite.graph import COTANGENT, GRAD, Request, build

RNG = np.random.default_rng(0)


def one_node_model(op, inputs, attrs=None, constants=None, n_outputs=1, opset=17, dtype=np.float64, order=None):
    """A model with one `op` node; `inputs` are graph inputs (name -> array), `constants` initializers.

    `order` lists the node's input names when they are not `inputs` then `constants` ("" for an omitted input).
    """
    constants = constants or {}
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    order = order if order is not None else list(inputs) + list(constants)
    node = helper.make_node(op, order, [f"y{i}" for i in range(n_outputs)], **(attrs or {}))
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.UNDEFINED, None) for i in range(n_outputs)],
        [numpy_helper.from_array(a, n) for n, a in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    for o, inferred in zip(model.graph.output, onnx.shape_inference.infer_shapes(model).graph.output):
        # as inferred (TopK's indices are int64), else typed like the inputs
        typed = inferred.type.tensor_type.elem_type
        o.CopyFrom(inferred if typed else helper.make_tensor_value_info(o.name, elem, None))
    if any(not o.type.tensor_type.HasField("shape") for o in model.graph.output):
        # onnx infers no shapes for some function ops (GroupNormalization): declare the ones onnxruntime computes
        for o, y in zip(model.graph.output, _session(model).run(None, inputs)):
            o.CopyFrom(helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, y.shape))
    return model


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def exact_vjp(model, feeds, cotangents, wrt):
    """onnxplain's gradients of sum <u, y> for the outputs named in `cotangents`, as numpy arrays."""
    grad_model = build(model, Request(differentiate=tuple(cotangents), wrt=tuple(wrt)))
    feeds = dict(feeds, **{COTANGENT.format(y): u for y, u in cotangents.items()})
    return _session(grad_model).run([GRAD.format(n) for n in wrt], feeds)


def check_vjp(op, inputs, attrs=None, constants=None, n_outputs=1, opset=17, wrt=None, order=None, rtol=1e-4,
              atol=1e-6, directions=6, float64=True):
    """Assert that onnxplain's gradient of `op` matches finite differences; returns the max relative error.

    float64=False: check in float32 only, for ops whose float64 kernel computes in float32 (Shrink)."""
    float_inputs = {n: a for n, a in inputs.items() if np.issubdtype(a.dtype, np.floating)}
    wrt = wrt or list(float_inputs)
    for dtype, eps in ((np.float64, 1e-6), (np.float32, 1e-2))[0 if float64 else 1:]:
        cast = {n: (a.astype(dtype) if n in float_inputs else a) for n, a in inputs.items()}
        consts = {n: (a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a)
                  for n, a in (constants or {}).items()}
        try:
            model = one_node_model(op, cast, attrs, consts, n_outputs, opset, dtype, order)
            fwd = _session(model)
        except Exception:  # no float64 kernel (or type constraint) for this op: fall back to float32
            if dtype is np.float64:
                continue
            raise
        break
    ys = [f"y{i}" for i in range(n_outputs)]
    outs = fwd.run(ys, cast)
    us = [RNG.standard_normal(o.shape).astype(o.dtype) for o in outs]
    grad_model = build(model, Request(differentiate=tuple(ys), wrt=tuple(wrt)))
    onnx.checker.check_model(grad_model)
    feeds = dict(cast, **{COTANGENT.format(y): u for y, u in zip(ys, us)})
    grads = dict(zip(wrt, _session(grad_model).run([GRAD.format(n) for n in wrt], feeds)))

    def loss(feed):
        return sum(float(np.sum(u.astype(np.float64) * o)) for u, o in zip(us, fwd.run(ys, feed)))

    worst = 0.0
    for name in wrt:
        x = cast[name]
        assert grads[name].shape == x.shape, f"{op}: gradient of {name} has shape {grads[name].shape}, not {x.shape}"
        vs = ([np.eye(x.size, dtype=x.dtype)[i].reshape(x.shape) for i in range(x.size)] if x.size <= 64 else
              [RNG.standard_normal(x.shape).astype(x.dtype) for _ in range(directions)])
        for v in vs:
            up, down = np.asarray(x + eps * v, x.dtype), np.asarray(x - eps * v, x.dtype)
            numeric = (loss(dict(cast, **{name: up})) - loss(dict(cast, **{name: down}))) / (2 * eps)
            analytic = float(np.sum(grads[name].astype(np.float64) * v))
            err = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1.0)
            worst = max(worst, err)
            assert abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic), 1.0), (
                f"{op} d/d{name}: finite difference {numeric:.6g} vs gradient {analytic:.6g}")
    return worst
