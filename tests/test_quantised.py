"""Quantised models (issue 13, class 8): the straight-through gradient of QuantizeLinear/DequantizeLinear pairs and of
dynamic quantisation (DynamicQuantizeLinear + ConvInteger/MatMulInteger), quantized="exact" refusing, and the
black-box path running the true quantised model."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain import OnnxplainError
from onnxplain.explain import forward
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request, build

RNG = np.random.default_rng(8)


def _run(proto, feeds, names=None):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def qdq_then(scale, zero_point, after=None, axis=1):
    """x[2, 4, 5, 5] → QuantizeLinear → DequantizeLinear (→ `after`: Tanh(x̂ · w)) → y; `scale` and `zero_point`
    per tensor or per channel (axis 1)."""
    w = np.random.default_rng(2).standard_normal((4, 5, 5)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis, name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xq" if after else "y"], axis=axis)]
    if after:
        nodes += [helper.make_node("Mul", ["xq", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 5])],
                              [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
                               numpy_helper.from_array(np.asarray(zero_point), "z"),
                               numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _vjp(proto, x, u, straight_through=True):
    grad = build(proto, Request(differentiate=("y",), wrt=("x",)), straight_through)
    return _run(grad, {"x": x, COTANGENT.format("y"): u}, [GRAD.format("x")])[0]


PAIRS = {"uint8 per tensor": (0.05, np.uint8(128)), "int8 per tensor": (0.04, np.int8(-3)),
         "int8 per channel": (np.array([0.02, 0.05, 0.1, 0.03]), np.array([0, 5, -7, 2], np.int8))}


@pytest.mark.parametrize("pair", PAIRS)
def test_a_qdq_pair_passes_the_gradient_inside_its_range_and_nothing_outside(pair):
    scale, zero_point = PAIRS[pair]
    x = (RNG.standard_normal((2, 4, 5, 5)) * 6).astype(np.float32)  # well beyond the range of every pair
    u = RNG.standard_normal(x.shape).astype(np.float32)
    s = np.broadcast_to(np.reshape(scale, (-1, 1, 1)), (4, 1, 1)).astype(np.float32)
    z = np.reshape(zero_point, (-1, 1, 1)).astype(np.float32)
    info = np.iinfo(np.asarray(zero_point).dtype)
    level = np.round(x / s) + z
    inside = (level >= info.min) & (level <= info.max)
    assert 0.1 < inside.mean() < 0.9
    dx = _vjp(qdq_then(scale, zero_point), x, u)
    assert (dx[~inside] == 0).all() and rel_err(dx[inside], u[inside]) < 1e-6  # the estimator's definition
    with pytest.raises(OnnxplainError, match="QuantizeLinear 'q'.*gradient is zero"):
        _vjp(qdq_then(scale, zero_point), x, u, straight_through=False)


def test_straight_through_is_the_gradient_of_the_dequantised_function_where_it_is_smooth():
    """dL/dx = ∇h(x̂) · 1[in range], h the float function after the pair at x̂ = DQ(Q(x)): checked by central
    differences of h (the same graph without the pair) along a random direction within the range."""
    scale, zero_point = PAIRS["int8 per channel"]
    proto = qdq_then(scale, zero_point, after=True)
    float_part = qdq_then(scale, zero_point, after=True)
    del float_part.graph.node[:2]
    float_part.graph.node[0].input[0] = "x"  # h(x̂) = tanh(x̂ · w)
    x = (RNG.standard_normal((2, 4, 5, 5)) * 3).astype(np.float32)
    u = RNG.standard_normal(x.shape).astype(np.float32)
    s = np.reshape(scale, (-1, 1, 1)).astype(np.float32)
    z = np.reshape(zero_point, (-1, 1, 1)).astype(np.float32)
    level = np.clip(np.round(x / s) + z, -128, 127)
    inside = (np.round(x / s) + z >= -128) & (np.round(x / s) + z <= 127)
    x_hat = ((level - z) * s).astype(np.float32)
    dx = _vjp(proto, x, u)
    v = RNG.standard_normal(x.shape).astype(np.float32) * inside
    eps = 1e-3

    def loss(a):
        return float((u.astype(np.float64) * _run(float_part, {"x": a})[0]).sum())
    fd = (loss(x_hat + eps * v) - loss(x_hat - eps * v)) / (2 * eps)
    assert abs((dx * v).sum() - fd) < 1e-3 * abs(fd) and (dx[~inside] == 0).all()


def small_cnn():
    """A float classifier: Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → MatMul + Add (10 classes)."""
    rng = np.random.default_rng(5)
    weights = {"w1": rng.standard_normal((8, 3, 3, 3)) / 4, "b1": rng.standard_normal(8) / 10,
               "w2": rng.standard_normal((8, 8, 3, 3)) / 8, "b2": rng.standard_normal(8) / 10,
               "fc": rng.standard_normal((8, 10)), "fb": rng.standard_normal(10) / 10}
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["mm"]),
             helper.make_node("Add", ["mm", "fb"], ["logits"])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 12, 12])
    graph = helper.make_graph(nodes, "small", [image],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


IMAGES = RNG.random((4, 3, 12, 12)).astype(np.float32)


class _Images:
    """onnxruntime's calibration reader over IMAGES, one image per call."""

    def __init__(self):
        self.left = [{"image": x[None]} for x in IMAGES]

    def get_next(self):
        return self.left.pop() if self.left else None


def _quantised(tmp_path, kind):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    onnx.save(small_cnn(), tmp_path / "float.onnx")
    if kind in ("static", "operators"):
        quantize_static(tmp_path / "float.onnx", tmp_path / "q.onnx", _Images(), activation_type=QuantType.QUInt8,
                        quant_format=QuantFormat.QDQ if kind == "static" else QuantFormat.QOperator,
                        weight_type=QuantType.QInt8)
    else:
        quantize_dynamic(tmp_path / "float.onnx", tmp_path / "q.onnx", weight_type=QuantType.QUInt8,
                         op_types_to_quantize=["Conv", "MatMul"])
    return onnx.load(tmp_path / "q.onnx")


def _gradient(m, x, c):
    sess = m.session(Request(differentiate=(m.score,), wrt=(m.input,)))
    onehot = np.eye(m.num_classes, dtype=np.float32)[[c] * len(x)]
    return sess.run([GRAD.format(m.input)], {m.input: x, COTANGENT.format(m.score): onehot})[0]


def _cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("kind,ops", [("static", {"QuantizeLinear", "DequantizeLinear"}),
                                      ("dynamic", {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})])
def test_quantised_models_get_the_float_models_gradient_and_run_quantised_in_black_box(tmp_path, kind, ops):
    proto = _quantised(tmp_path, kind)
    assert ops <= {n.op_type for n in proto.graph.node}
    reference = onnxplain.load(small_cnn(), preprocessing="unit", device="cpu")
    with pytest.warns(UserWarning, match="quantised .* passes straight through"):
        m = onnxplain.load(proto, preprocessing="unit", device="cpu")
        grad = _gradient(m, IMAGES, 3)
    float_grad = _gradient(reference, IMAGES, 3)
    assert _cosine(grad, float_grad).min() > 0.98, _cosine(grad, float_grad)  # measured 0.992-0.99996
    e = onnxplain.explain(m, IMAGES, "gradcam", target=3)  # a CAM layer through the estimator too
    assert np.isfinite(e.maps).all() and e.maps.max() > 0
    quantised = np.concatenate([_run(proto, {"image": x[None]})[0] for x in IMAGES])
    occluded = onnxplain.explain(m, IMAGES, "occlusion", target=3, window=4, stride=4, score="logit")
    assert rel_err(occluded.logits, quantised) < 1e-6  # the true quantised model, not the float one
    assert rel_err(quantised, forward(reference, IMAGES)) > 1e-4  # (which differs)
    exact = onnxplain.load(proto, preprocessing="unit", device="cpu", quantized="exact")
    with pytest.raises(OnnxplainError, match="gradient is zero"):
        onnxplain.explain(exact, IMAGES, "saliency")


def test_dynamic_quantisation_differentiates_as_the_dequantised_weights(tmp_path):
    """A linear model (Conv → GlobalAveragePool → MatMul) has one gradient: the straight-through one of its dynamic
    quantisation is exactly that of the float model with the dequantised weights."""
    proto = _quantised(tmp_path, "dynamic")
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    linear = small_cnn()
    relus = [n for n in linear.graph.node if n.op_type == "Relu"]
    for r in relus:
        r.op_type = "Identity"
    for t in linear.graph.initializer:
        if t.name + "_quantized" in weights:
            q, s, z = (weights[t.name + suffix] for suffix in ("_quantized", "_scale", "_zero_point"))
            t.CopyFrom(numpy_helper.from_array(((q.astype(np.float32) - z.astype(np.float32)) * s), t.name))
    quantised = _quantised(tmp_path, "dynamic")
    for n in quantised.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Identity"
    with pytest.warns(UserWarning, match="straight through"):
        grad = _gradient(onnxplain.load(quantised, preprocessing="unit", device="cpu"), IMAGES, 3)
    assert rel_err(grad, _gradient(onnxplain.load(linear, preprocessing="unit", device="cpu"), IMAGES, 3)) < 1e-5


def test_integer_operators_are_named_in_the_refusal(tmp_path):
    """onnxruntime's QOperator format (QLinearConv, QLinearMatMul) computes in integers: no straight-through rule."""
    m = onnxplain.load(_quantised(tmp_path, "operators"), preprocessing="unit", device="cpu")
    with pytest.raises(OnnxplainError, match="only through QLinearConv '.*' \\(integer"):
        with pytest.warns(UserWarning, match="straight through"):
            onnxplain.explain(m, IMAGES, "saliency")
    assert onnxplain.explain(m, IMAGES, "occlusion", window=4, stride=4).maps.shape == (4, 12, 12)


def test_inspect_says_how_a_quantised_model_is_differentiated(tmp_path):
    from click.testing import CliRunner
    from onnxplain_cli.main import cli
    _quantised(tmp_path, "static")
    for flag, expected in ((), "straight-through"), (("--quantized", "exact"), "QuantizeLinear"):
        result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "q.onnx"), "--preset", "unit", *flag])
        assert result.exit_code == 0, result.output
        assert expected in result.output
