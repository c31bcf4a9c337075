"""Pointwise, elementwise, linear, reduction and normalisation VJP rules against finite differences (gradcheck.py).

Inputs stay away from kinks; the conventions at kinks and ties are checked exactly by `test_kinks_and_ties`.
"""
import numpy as np
import pytest
from gradcheck import check_vjp, exact_vjp, one_node_model


R = np.random.default_rng(0)
# Away from every kink tested below: 0, +-2.5 (HardSigmoid), -4/3 and 2 (HardSigmoid 0.3, 0.4), +-3 (HardSwish).
GRID = np.array([[-4.1, -2.7, -1.7, -0.9, -0.35, 0.45], [0.8, 1.1, 1.7, 2.2, 3.6, 4.3]])


def rand(*shape):
    return R.standard_normal(shape)


def away(*shape):
    """Random values with 0.2 <= |x| <= 2."""
    return R.uniform(0.2, 2, shape) * R.choice([-1, 1], shape)


def positive(*shape):
    return R.uniform(0.3, 2, shape)


@pytest.mark.parametrize("op, attrs, opset", [
    ("Relu", {}, 17), ("LeakyRelu", {}, 17), ("LeakyRelu", {"alpha": 0.3}, 7), ("Elu", {"alpha": 0.7}, 17),
    ("Selu", {}, 17), ("Selu", {"alpha": 1.2, "gamma": 0.8}, 17), ("Sigmoid", {}, 17),
    ("HardSigmoid", {}, 17), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17), ("HardSwish", {}, 14),
    ("Tanh", {}, 17), ("Erf", {}, 17), ("Softplus", {}, 17), ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20),
    ("Mish", {}, 18), ("Neg", {}, 17), ("Abs", {}, 17), ("Exp", {}, 17), ("Reciprocal", {}, 17),
    ("Swish", {}, 24), ("Swish", {"alpha": 0.7}, 24), ("Softsign", {}, 17), ("ThresholdedRelu", {"alpha": 0.6}, 17),
    ("Shrink", {}, 17), ("Shrink", {"lambd": 1.0, "bias": 0.3}, 17), ("Sin", {}, 17), ("Cos", {}, 17),
    ("Tan", {}, 17), ("Sinh", {}, 17), ("Cosh", {}, 17), ("Atan", {}, 17), ("Asinh", {}, 17),
])
def test_activation(op, attrs, opset):
    check_vjp(op, {"x": GRID / 6 if op == "Tan" else GRID}, attrs, opset=opset, rtol=1e-3, float64=op != "Shrink")


@pytest.mark.parametrize("op, x", [("Asin", GRID / 8), ("Acos", GRID / 8), ("Atanh", GRID / 8),
                                   ("Acosh", 1.2 + np.abs(GRID))])
def test_inverse_trigonometric(op, x):
    check_vjp(op, {"x": x}, rtol=1e-3)


def test_celu():
    """Celu is float32-only, which check_vjp's float64 attempt does not survive: compare with f'(x) in numpy."""
    x, u = GRID.astype(np.float32), R.standard_normal(GRID.shape).astype(np.float32)
    model = one_node_model("Celu", {"x": x}, {"alpha": 1.5}, dtype=np.float32)
    (dx,) = exact_vjp(model, {"x": x}, {"y0": u}, ["x"])
    np.testing.assert_allclose(dx, u * np.where(x > 0, 1, np.exp(x / 1.5)), rtol=1e-6)


@pytest.mark.parametrize("op", ["Log", "Sqrt"])
def test_positive_domain(op):
    check_vjp(op, {"x": positive(2, 5)})


@pytest.mark.parametrize("slope_shape, as_input", [((3, 1, 1), False), ((3, 1, 1), True), ((1,), True),
                                                   ((2, 3, 2, 2), True), ((2,), True)])
def test_prelu(slope_shape, as_input):
    x, slope = away(2, 3, 2, 2), rand(*slope_shape)
    inputs, consts = ({"x": x, "slope": slope}, {}) if as_input else ({"x": x}, {"slope": slope})
    check_vjp("PRelu", inputs, constants=consts)


@pytest.mark.parametrize("opset, attrs, bounds, order", [
    (7, {"min": -1.0, "max": 1.3}, {}, ["x"]), (10, {"min": -0.5}, {}, ["x"]),
    (11, {}, {"lo": -1.0, "hi": 1.3}, ["x", "lo", "hi"]), (13, {}, {"lo": -1.0}, ["x", "lo"]),
    (13, {}, {"hi": 1.3}, ["x", "", "hi"]), (13, {}, {}, ["x"]),
])
def test_clip(opset, attrs, bounds, order):
    consts = {n: np.array(v) for n, v in bounds.items()}
    check_vjp("Clip", {"x": GRID / 2}, attrs, consts, opset=opset, order=order)


def _float32_mask(op, x, attrs=None, consts=None, opset=17):
    model = one_node_model(op, {"x": x}, attrs, consts, opset=opset, dtype=np.float32)
    return exact_vjp(model, {"x": x}, {"y0": np.ones_like(x)}, ["x"])[0]


@pytest.mark.parametrize("lo, hi", [(0, 6), (-1, 1), (0.5, 3), (-6, -0.25)])
@pytest.mark.parametrize("as_attrs", [False, True])
def test_clip_mask_at_float32_bounds(lo, hi, as_attrs):
    """The float32 masks (HardSigmoids, see activation.past) are exactly 1[lo < x < hi]: at the bounds, one float
    inside and outside them, and above a bound of 0 from 2^-127 on (the smaller subnormals are the documented
    exception). All float32 in [0, 6], [-1, 1], [0.5, 3] and [-6, -0.25] were checked once the same way."""
    lo, hi = np.float32(lo), np.float32(hi)
    above_lo = np.nextafter(lo, hi) if lo else np.float32(2.0 ** -127)
    x = np.array([[lo, hi, above_lo, np.nextafter(hi, lo), np.nextafter(lo, -np.inf),
                   np.nextafter(hi, np.inf), lo - 1, hi + 1, (lo + hi) / 2, 2.0 ** -126, 1e-30]],
                 np.float32)
    dx = (_float32_mask("Clip", x, {"min": float(lo), "max": float(hi)}, opset=7) if as_attrs else
          _float32_mask("Clip", x, consts={"lo": np.array(lo), "hi": np.array(hi)}))
    np.testing.assert_array_equal(dx, ((x > lo) & (x < hi)).astype(np.float32))


def test_relu_mask_at_float32_zero():
    x = np.array([[-1, -0.0, 0, 2.0 ** -127, 2.0 ** -126, 1e-30, 1, 3e38, np.inf]], np.float32)
    np.testing.assert_array_equal(_float32_mask("Relu", x), (x > 0).astype(np.float32))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis", [(11, None), (11, 0), (11, 2), (13, None), (13, 0), (13, 1), (13, -2)])
def test_softmax(op, opset, axis):
    check_vjp(op, {"x": rand(2, 3, 4)}, {} if axis is None else {"axis": axis}, opset=opset)


BROADCASTS = [((2, 3), (2, 3)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3)),
              ((2, 3, 1), (1, 3, 4))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape, b_shape", BROADCASTS)
def test_binary(op, a_shape, b_shape):
    check_vjp(op, {"a": away(*a_shape), "b": away(*b_shape)})


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("shapes", [[(2, 3)], [(2, 3), (2, 3)], [(2, 3, 4), (4,), (3, 1)], [(1,), (2, 1), (1, 3)]])
def test_variadic(op, shapes):
    check_vjp(op, {f"x{i}": rand(*s) for i, s in enumerate(shapes)})


@pytest.mark.parametrize("c_shape, x_shape", [((2, 3), (2, 1)), ((1,), (3, 2)), ((2, 3, 1), (3, 4))])
def test_where(c_shape, x_shape):
    cond = R.random(c_shape) > 0.5
    check_vjp("Where", {"a": rand(*x_shape), "b": rand(*x_shape)}, constants={"cond": cond}, order=["cond", "a", "b"])


@pytest.mark.parametrize("x, p", [(positive(2, 3), np.array(2.5)), (away(2, 3), np.array(3.0)),
                                  (away(2, 3), np.array(2, np.int64)), (positive(2, 3), positive(3)),
                                  (positive(2, 3), np.array([[0.5], [-1.5]]))])
def test_pow(x, p):
    if p.dtype == np.int64 or p.ndim == 0:
        check_vjp("Pow", {"x": x}, constants={"p": p})
    else:
        check_vjp("Pow", {"x": x, "p": p})


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (5,), (4, 5), (4, 1), (1, 5), (1,)])
def test_gemm(trans_a, trans_b, c_shape):
    a, b = rand(*((3, 4) if trans_a else (4, 3))), rand(*((5, 3) if trans_b else (3, 5)))
    inputs = dict(a=a, b=b, **({} if c_shape is None else {"c": rand(*c_shape)}))
    check_vjp("Gemm", inputs, {"transA": trans_a, "transB": trans_b, "alpha": 0.7, "beta": -1.3},
              opset=9 if c_shape == (4, 5) else 13)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (4,)),
    ((4,), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (2, 4, 5)),
])
def test_matmul(a_shape, b_shape):
    check_vjp("MatMul", {"a": rand(*a_shape), "b": rand(*b_shape)})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1",
                                "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd"])
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("axes, keepdims", [(None, 1), ([1], 1), ([0, 2], 0), ([-1], 0)])
def test_reduce(op, opset, axes, keepdims):
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    attrs = {"keepdims": keepdims, **({"axes": axes} if axes is not None and not as_input else {})}
    consts = {"axes": np.array(axes, np.int64)} if axes is not None and as_input else {}
    check_vjp(op, {"x": away(2, 3, 4)}, attrs, consts, opset=opset)


@pytest.mark.parametrize("opset, axes", [(13, [1]), (18, [0, 2])])
def test_reduce_log_sum(opset, axes):
    attrs, consts = ({"axes": axes}, {}) if opset < 18 else ({}, {"axes": np.array(axes, np.int64)})
    check_vjp("ReduceLogSum", {"x": positive(2, 3, 4)}, attrs, consts, opset=opset)


def test_reduce_prod_at_zeros():
    """As torch: where one input is 0 its gradient is the product of the others, and 0 where two are."""
    x = np.array([[2, 0, 3, 5], [0, 4, 0, 1], [2, 3, 0.5, 4]], np.float32)
    model = one_node_model("ReduceProd", {"x": x}, {"axes": [1], "keepdims": 0}, opset=13, dtype=np.float32)
    (dx,) = exact_vjp(model, {"x": x}, {"y0": np.array([1, 1, 2], np.float32)}, ["x"])
    np.testing.assert_array_equal(dx, [[0, 30, 0, 0], [0, 0, 0, 0], [12, 8, 48, 6]])


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes(op, noop):
    check_vjp(op, {"x": rand(2, 3)}, {"noop_with_empty_axes": noop}, {"axes": np.array([], np.int64)}, opset=18)


@pytest.mark.parametrize("opset, shape, attrs", [
    (9, (2, 3, 4, 4), {}), (14, (2, 3), {"epsilon": 1e-3}), (15, (2, 3, 5), {"training_mode": 0}),
    (7, (2, 3, 2, 2), {"spatial": 0}),
])
@pytest.mark.parametrize("params_as_input", [False, True])
def test_batch_norm(opset, shape, attrs, params_as_input):
    pshape = shape[1:] if attrs.get("spatial") == 0 else shape[1:2]
    params = {"scale": rand(*pshape), "bias": rand(*pshape)}
    stats = {"mean": rand(*pshape), "var": positive(*pshape)}
    inputs, consts = ({"x": rand(*shape), **params}, stats) if params_as_input else ({"x": rand(*shape)},
                                                                                     {**params, **stats})
    check_vjp("BatchNormalization", inputs, attrs, consts, opset=opset, order=["x", "scale", "bias", "mean", "var"])


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 3, 4)])
def test_instance_norm(shape):
    """float32 only (onnxruntime has no float64 kernel), so finite differences take a step of 1e-2: the data has its
    own generator, apart from the tests before it, and channels of different spreads."""
    r = np.random.default_rng(5)
    x = r.standard_normal(shape) * np.array([1.0, 1.5, 2.0]).reshape(1, 3, *[1] * (len(shape) - 2))
    check_vjp("InstanceNormalization", {"x": x, "scale": r.standard_normal(3), "bias": r.standard_normal(3)},
              {"epsilon": 1e-3}, rtol=1e-3)


@pytest.mark.parametrize("shape, axis, pshape, bias", [((2, 3, 4), -1, (4,), True), ((2, 3, 4), 1, (3, 4), True),
                                                       ((2, 3, 4), 1, (4,), False), ((3, 5), 0, (3, 5), True)])
def test_layer_norm(shape, axis, pshape, bias):
    inputs = {"x": rand(*shape), "scale": rand(*pshape), **({"bias": rand(*pshape)} if bias else {})}
    check_vjp("LayerNormalization", inputs, {"axis": axis})


@pytest.mark.parametrize("shape, groups", [((2, 4, 3, 2), 2), ((2, 6, 5), 3), ((1, 4, 2, 2), 4)])
def test_group_norm(shape, groups):
    """In float32: onnxruntime computes the statistics in float32 even for float64 inputs (stash_type 1, the only
    one it implements)."""
    c = shape[1]
    check_vjp("GroupNormalization", {"x": rand(*shape), "scale": rand(c), "bias": rand(c)},
              {"num_groups": groups, "epsilon": 1e-3}, opset=21, rtol=1e-3, float64=False)


@pytest.mark.parametrize("shape, axis, pshape", [((2, 3, 4), -1, (4,)), ((2, 3, 4), 1, (3, 4)), ((2, 3, 4), 1, (4,))])
def test_rms_norm(shape, axis, pshape):
    check_vjp("RMSNormalization", {"x": rand(*shape), "scale": rand(*pshape)}, {"axis": axis}, opset=23)


def test_kinks_and_ties():
    """As torch: Relu-likes take the x <= 0 branch at 0, HardSwish its flat pieces at -3 and 3, Clip is open at its
    bounds (like hardtanh), Max/ReduceMax split ties evenly."""
    x = np.array([[-1, 0, 1, 2]], np.float32)

    def grad(op, attrs=None, consts=None, x=x, **others):
        inputs = {"x": x, **others}
        model = one_node_model(op, inputs, attrs, consts, opset=14, dtype=np.float32)
        u = np.ones((1, 1) if op == "ReduceMax" else (1, 4), np.float32)
        return exact_vjp(model, inputs, {"y0": u}, list(inputs))

    np.testing.assert_allclose(grad("Relu")[0], [[0, 0, 1, 1]])
    np.testing.assert_allclose(grad("LeakyRelu", {"alpha": 0.1})[0], [[0.1, 0.1, 1, 1]], rtol=1e-6)
    np.testing.assert_allclose(grad("HardSwish", x=np.array([[-3, 3, -4, 4]], np.float32))[0], [[0, 1, 0, 1]])
    np.testing.assert_allclose(grad("Clip", consts={"lo": np.float32(0), "hi": np.float32(1)})[0], [[0, 0, 0, 0]])
    np.testing.assert_allclose(grad("Max", b=np.array([[0, 0, 1, 3]], np.float32)),
                               [[[0, 0.5, 0.5, 0]], [[1, 0.5, 0.5, 1]]])
    np.testing.assert_allclose(grad("ReduceMax", {"axes": [1]}, x=np.array([[-1, 0, 2, 2]], np.float32))[0],
                               [[0, 0, 0.5, 0.5]])
