"""Guided Backprop, Deconvnet, Guided Grad-CAM and DeepLIFT (Rescale).

- Their override rules, with numbers, on one-node graphs.
- The methods against Captum on the same weights, and DeepLIFT's summation-to-delta.
- The bundled MobileNetV2 from the API and the command line.
"""
import numpy as np
import onnxruntime as ort
import pytest
from conftest import IMAGES, MOBILENET, ZOO, rel_err, zoo
from gradcheck import one_node_model

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain import perturb
from onnxplain.explain import as_batch, forward
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request, build
from onnxplain.rewrite.modified.deeplift import RESCALE
from onnxplain.rewrite.modified.guided import DECONVNET, GUIDED

R = np.random.default_rng(0)


def modified_vjp(op, x, dy, composite, attrs=None, constants=None, opset=17):
    """dx of a one-node float32 graph y0 = op(x) under `composite`, for the cotangent dy."""
    model = one_node_model(op, {"x": x}, attrs, constants, opset=opset, dtype=np.float32)
    proto = build(model, Request(differentiate=("y0",), wrt=("x",), rules=composite))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([GRAD.format("x")], {"x": x, COTANGENT.format("y0"): dy})[0]


# -- rules ------------------------------------------------------------------------------------------------------
RELU6 = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}


@pytest.mark.parametrize("op, attrs, consts, opset, x, guided, deconvnet", [
    ("Relu", {}, None, 17, [-2, -0.5, 0, 0.5, 2, 3], [0, 0, 0, 1, 0, 2], [1, 1, 1, 1, 0, 2]),
    ("Clip", {}, RELU6, 17, [-1, 0, 3, 6, 7, 2], [0, 0, 1, 0, 0, 2], [1, 1, 1, 1, 0, 2]),       # ReLU6: 0 < x < 6
    ("Clip", {"min": 0.0, "max": 6.0}, None, 7, [-1, 0, 3, 6, 7, 2], [0, 0, 1, 0, 0, 2], [1, 1, 1, 1, 0, 2]),
    ("Clip", {}, {"lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}, 17, [-2, -0.5, 0, 0.5, 0.9, 2],  # hardtanh: plain
     [0, 1, 1, 1, -1, 0], [0, 1, 1, 1, -1, 0]),
])
def test_guided_and_deconvnet_rules(op, attrs, consts, opset, x, guided, deconvnet):
    """Guided: dx = ReLU(dy)·1[x in the open linear part]; Deconvnet: dx = ReLU(dy); a Clip whose lower bound is
    not 0 is not ReLU-like and keeps its plain gradient under both."""
    x, dy = np.array([x], np.float32), np.array([[1, 1, 1, 1, -1, 2]], np.float32)
    assert modified_vjp(op, x, dy, GUIDED, attrs, consts, opset).tolist() == [guided]
    assert modified_vjp(op, x, dy, DECONVNET, attrs, consts, opset).tolist() == [deconvnet]


ELEMENTWISE = {  # op: (attributes, numpy definition)
    "Relu": ({}, lambda x: np.maximum(x, 0)),
    "LeakyRelu": ({"alpha": 0.1}, lambda x: np.where(x > 0, x, 0.1 * x)),
    "Elu": ({}, lambda x: np.where(x > 0, x, np.expm1(x))),
    "Sigmoid": ({}, lambda x: 1 / (1 + np.exp(-x))),
    "Tanh": ({}, np.tanh),
    "Softplus": ({}, lambda x: np.log1p(np.exp(x))),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    "HardSwish": ({}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Swish": ({"alpha": 0.8}, lambda x: x / (1 + np.exp(-0.8 * x))),
    "Softsign": ({}, lambda x: x / (1 + np.abs(x))),
    "ThresholdedRelu": ({"alpha": 0.7}, lambda x: np.where(x > 0.7, x, 0)),
    "Shrink": ({"lambd": 0.6, "bias": 0.2}, lambda x: np.where(x > 0.6, x - 0.2, np.where(x < -0.6, x + 0.2, 0))),
}
OPSETS = {"Swish": 24}  # else 17


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_rescale_multiplier_is_the_secant(op):
    """On the batch [x; x'] the Rescale rule gives dx = dy·[m; m] with m = (f(x) − f(x'))/(x − x'), and the plain
    derivative of each row where x = x'."""
    attrs, f = ELEMENTWISE[op]
    x = np.float32(R.uniform(-5, 5, (1, 12)))
    ref = x + np.float32(R.uniform(0.2, 3, x.shape) * R.choice([-1, 1], x.shape))
    ref[0, -1] = x[0, -1]
    dy = np.float32(R.standard_normal((2, 12)))
    dx = modified_vjp(op, np.concatenate([x, ref]), dy, RESCALE, attrs, opset=OPSETS.get(op, 17))
    x64, ref64 = x[:, :-1].astype(np.float64), ref[:, :-1].astype(np.float64)
    m = (f(x64) - f(ref64)) / (x64 - ref64)
    np.testing.assert_allclose(dx[:, :-1], dy[:, :-1] * np.concatenate([m, m]), rtol=1e-4, atol=1e-6)
    x0 = np.float64(x[0, -1])  # = x' there: the plain derivative
    slope = (f(x0 + 1e-5) - f(x0 - 1e-5)) / 2e-5
    np.testing.assert_allclose(dx[:, -1], dy[:, -1] * slope, rtol=1e-3, atol=1e-5)


def test_rescale_relu6_multiplier():
    """Clip (ReLU6) across both bounds: m = Δy/Δx, e.g. (6 − 0)/(8 − (−1)) for x = 8, x' = −1."""
    x, ref = np.array([[8, 3, -1, 7, 2]], np.float32), np.array([[-1, 1, -3, 9, 2]], np.float32)
    dx = modified_vjp("Clip", np.concatenate([x, ref]), np.ones((2, 5), np.float32), RESCALE, constants=RELU6)
    np.testing.assert_allclose(dx, [[6 / 9, 1, 0, 0, 1]] * 2, rtol=1e-6)  # last: x = x', plain derivative


def test_rescale_maxpool_routes_the_pooled_difference():
    """Captum's rule, written out per window: Δy goes to the image's maximum when y ≥ y', else to the reference's,
    divided by Δx there. So each window's Σ Δx·m equals dy·Δy (summation-to-delta)."""
    x, ref = np.float32(R.standard_normal((2, 1, 1, 4, 4)))
    dy = np.float32(R.standard_normal((1, 1, 2, 2)))
    dx = modified_vjp("MaxPool", np.concatenate([x, ref]), np.concatenate([dy, dy]), RESCALE,
                      {"kernel_shape": [2, 2], "strides": [2, 2]})
    expected = np.zeros((1, 1, 4, 4))
    for i in range(2):
        for j in range(2):
            win = (0, 0, slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2))
            y, y_ref = x[win].max(), ref[win].max()
            at = np.unravel_index((x if y >= y_ref else ref)[win].argmax(), (2, 2))
            expected[win][at] = dy[0, 0, i, j] * (y - y_ref) / (x - ref)[win][at]
            assert np.isclose(((x - ref) * dx[:1])[win].sum(), dy[0, 0, i, j] * (y - y_ref), atol=1e-6)
    np.testing.assert_allclose(dx, np.concatenate([expected, expected]), rtol=1e-5, atol=1e-7)


def test_rescale_softmax_centres_the_multipliers():
    x, ref = np.float32(R.standard_normal((2, 1, 5)))
    dy = np.float32(R.standard_normal((2, 5)))
    dx = modified_vjp("Softmax", np.concatenate([x, ref]), dy, RESCALE, {"axis": 1})
    e, e_ref = np.exp(x) / np.exp(x).sum(), np.exp(ref) / np.exp(ref).sum()
    u = dy * np.concatenate(2 * [(e - e_ref) / (x - ref)])
    np.testing.assert_allclose(dx, u - u.mean(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


# -- Captum on the same weights ---------------------------------------------------------------------------------
torch = pytest.importorskip("torch", reason="reference tests need torch")
captum_attr = pytest.importorskip("captum.attr", reason="reference tests need captum")
from captum._utils.common import _register_backward_hook  # noqa: E402
from captum.attr._core import deep_lift  # noqa: E402
from test_methods import _onnx_tensor_of, _torch_mobilenet, _torch_zoo  # noqa: E402

# Captum modifies nn.ReLU modules only; the zoo's ResNet applies torch.relu after each residual Add, which Captum
# leaves plain, so it is left out. Every ReLU of the other zoo models is a module.
MODULE_RELU_ZOO = [name for name in ZOO if name != "resnet"]


@pytest.mark.parametrize("name", MODULE_RELU_ZOO)
def test_guided_and_deconvnet_equal_captum(name):
    m, ref = zoo(name)
    net, x, t = _torch_zoo(name), torch.tensor(ref["x"]), torch.tensor(ref["targets"])
    for method, cls in (("guided", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        expected = cls(net).attribute(x.clone().requires_grad_(), target=t).detach().numpy()
        e = onnxplain.explain(m, ref["x"], method, target=ref["targets"].tolist())
        assert rel_err(e.attributions, expected) <= 1e-4, method
        assert rel_err(e.maps, np.abs(expected).max(axis=1)) <= 1e-4


@pytest.mark.parametrize("name", MODULE_RELU_ZOO)
def test_guided_gradcam_equals_captum(name):
    """Captum upsamples with torch's "nearest" by default; the paper's bilinear is our default."""
    m, ref = zoo(name)
    net, x, t = _torch_zoo(name), torch.tensor(ref["x"]), torch.tensor(ref["targets"])
    module = net.get_submodule(net.INFO["cam_layer"])
    layer = _onnx_tensor_of(m, net, module, ref["x"])
    for mode in ("nearest", "bilinear"):
        expected = captum_attr.GuidedGradCam(net, module).attribute(x, target=t, interpolate_mode=mode)
        e = onnxplain.explain(m, ref["x"], "guidedgradcam", target=ref["targets"].tolist(), layer=layer,
                              upsample=mode)
        assert rel_err(e.attributions, expected.detach().numpy()) <= 1e-4, mode


class _Clone(torch.nn.Module):
    def forward(self, x):
        return x.clone()


def _captum_deeplift_net(name, monkeypatch):
    """The zoo model in float64 for Captum's DeepLift, with two workarounds that leave its function unchanged.

    - Captum 0.9's DeepLift reads each module's output gradient from a hook on that tensor. A ReLU feeding a
      MaxPool shares its output with the MaxPool's input, so the ReLU reads the gradient before the MaxPool
      rescales it (captum#1104). A copy between the two gives each hook its own tensor.
    - Captum rescales only its listed nonlinearities; MobileNetV3's Hardswish and Hardsigmoid get Captum's own
      elementwise rule, as ours do.
    In float64, because Δy/Δx at HardSwish loses digits in float32: Captum in float32 is 7e-5 from its float64.
    """
    net = _torch_zoo(name).double()
    for path, module in list(net.named_modules()):
        if isinstance(module, torch.nn.MaxPool2d):
            parent, _, child = path.rpartition(".")
            setattr(net.get_submodule(parent), child, torch.nn.Sequential(_Clone(), module))
    for cls in (torch.nn.Hardswish, torch.nn.Hardsigmoid):
        monkeypatch.setitem(deep_lift.SUPPORTED_NON_LINEAR, cls, deep_lift.nonlinear)
    return net


@pytest.mark.parametrize("name", MODULE_RELU_ZOO)
def test_deeplift_equals_captum(name, monkeypatch):
    """Attributions and the per-image gap Σa − Δy_c equal Captum's DeepLift and its convergence delta (the gap is
    not 0 on MobileNetV3: its squeeze-excite gate multiplies two activations, which Rescale does not cover).

    The reference is random noise, not zeros: from a constant image, a padded conv net's maps are constant inside,
    so most MaxPool windows of the reference hold exact ties (9145 of Inception's 9216). Which tied position gets
    the pooled difference is then arbitrary, and float32 and float64 rounding break some ties differently (3 windows
    on Inception, enough for 8 % of the map: the test failed with zeros). Summation-to-delta with zeros is tested
    below."""
    m, ref = zoo(name)
    net, t = _captum_deeplift_net(name, monkeypatch), torch.tensor(ref["targets"])
    baseline = np.random.default_rng(0).uniform(size=ref["x"].shape).astype(np.float32)
    x = torch.tensor(ref["x"], dtype=torch.float64, requires_grad=True)
    expected, delta = captum_attr.DeepLift(net).attribute(x, torch.tensor(baseline, dtype=torch.float64), target=t,
                                                          return_convergence_delta=True)
    e = onnxplain.explain(m, ref["x"], "deeplift", target=ref["targets"].tolist(), baseline=baseline)
    assert rel_err(e.attributions, expected.detach().numpy()) <= 1e-4
    assert rel_err(e.maps, expected.detach().numpy().sum(axis=1)) <= 1e-4
    assert np.abs(e.info["completeness_gap"] - delta.numpy()).max() <= 1e-5


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"mobilenetv3"}))
def test_deeplift_sums_to_the_score_difference(name):
    """Σa = y_c(x) − y_c(x') on every zoo model whose nonlinearities are elementwise or max pooling (ResNet's
    functional ReLUs included: the graph does not see how torch called them), with the zero and a blurred
    reference. Not on MobileNetV3: its squeeze-excite gates multiply two activations, and its gap, 12-14% of Δy_c,
    is Captum's (test_deeplift_equals_captum)."""
    m, ref = zoo(name)
    for baseline in ("zero", "blur"):
        e = onnxplain.explain(m, ref["x"], "deeplift", target=ref["targets"].tolist(), baseline=baseline)
        references = perturb.references(ref["x"], m.layout, baseline, "deeplift")
        assert np.allclose(e.info["baseline_score"], forward(m, references)[np.arange(3), e.targets], atol=1e-6)
        difference = e.scores - e.info["baseline_score"]
        assert np.allclose(e.attributions.sum(axis=(1, 2, 3)) - difference, e.info["completeness_gap"], atol=1e-6)
        assert np.abs(e.info["completeness_gap"]).max() <= 1e-5 * np.abs(difference).max()


# -- the bundled MobileNetV2 ------------------------------------------------------------------------------------
def _hook_relu6(captum_method):
    """A Captum ReLU-modifying method that also modifies nn.ReLU6 (MobileNetV2's activation), as ours do."""
    def register(module):
        if isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6)):
            captum_method.backward_hooks.extend(_register_backward_hook(module, captum_method._backward_hook,
                                                                        captum_method))
    captum_method._register_hooks = register
    return captum_method


def test_mobilenet_guided_and_deconvnet_equal_captum_with_relu6(mobilenet):
    """Captum hooked on ReLU6 modules too, as our rules treat ReLU6 (Clip) as ReLU-like; unhooked, Captum would
    give the plain gradient on this model, which has no ReLU. Unlike the plain input gradient (see test_methods),
    both agree with torch in float32 on both photos."""
    try:
        net = _torch_mobilenet()
    except Exception as exc:  # the weights package is a test extra
        pytest.skip(f"MobileNetV2 torch weights unavailable: {exc}")
    x, _ = as_batch(mobilenet, IMAGES)
    targets = [281, 967]
    for method, cls in (("guided", captum_attr.GuidedBackprop), ("deconvnet", captum_attr.Deconvolution)):
        expected = _hook_relu6(cls(net)).attribute(torch.tensor(x, requires_grad=True),
                                                   target=torch.tensor(targets)).detach().numpy()
        e = onnxplain.explain(mobilenet, x, method, target=targets)
        assert rel_err(e.attributions, expected) <= 1e-4, method


def test_mobilenet_deeplift_sums_to_the_score_difference(mobilenet):
    """On the two photos, the top-1 class of each image (not of its reference), for a blurred and a given
    reference; every gap is below 1e-5 of the score difference (float32 sums of 150 528 attributions)."""
    x, _ = as_batch(mobilenet, IMAGES)
    top1 = forward(mobilenet, x).argmax(axis=1)
    for baseline in ("blur", np.full(x.shape[1:], 0.5, np.float32)):
        e = onnxplain.explain(mobilenet, x, "deeplift", baseline=baseline)
        references = perturb.references(x, mobilenet.layout, baseline, "deeplift")
        difference = e.scores - forward(mobilenet, references)[[0, 1], top1]
        assert (e.targets == top1).all() and e.maps.shape == (2, 224, 224)
        assert (np.abs(e.info["completeness_gap"]) <= 1e-5 * np.abs(difference)).all()


def test_mobilenet_guided_gradcam_is_guided_times_gradcam(mobilenet):
    ggc = onnxplain.explain(mobilenet, IMAGES, "guidedgradcam")
    guided = onnxplain.explain(mobilenet, IMAGES, "guided", target=ggc.targets.tolist())
    cam = onnxplain.explain(mobilenet, IMAGES, "gradcam", target=ggc.targets.tolist())
    assert ggc.layer == cam.layer and (ggc.targets == cam.targets).all()
    assert rel_err(ggc.attributions, guided.attributions * cam.maps[:, None]) <= 1e-6
    assert rel_err(ggc.maps, np.abs(ggc.attributions).max(axis=1)) <= 1e-6


# -- command line -----------------------------------------------------------------------------------------------
from test_cli import fail, run  # noqa: E402


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_exported_graph_matches_the_api(tmp_path, method, mobilenet):
    out = tmp_path / f"{method}.onnx"
    run("export", MOBILENET, "-m", method, "-o", out)
    x, _ = as_batch(mobilenet, IMAGES)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    maps, used = sess.run(["maps", "target_used"], {"input": x})
    e = onnxplain.explain(mobilenet, x, method)
    assert (used == e.targets).all() and rel_err(maps, e.maps) < 1e-5


def test_multi_pass_methods_are_not_exported_and_bad_parameters_give_one_line(tmp_path, capsys, mobilenet):
    for method in ("guidedgradcam", "deeplift"):
        assert "runs several passes" in fail(capsys, "export", MOBILENET, "-m", method, "-o", tmp_path / "m.onnx")
    assert "upsample must be bilinear or nearest" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-m",
                                                          "guidedgradcam", "-p", "upsample=cubic", "-o", tmp_path)
    x, _ = as_batch(mobilenet, IMAGES)
    for params, message in (({"baseline": "nope"}, "baseline must be"), ({"baseline": {"a": 1}}, "baseline must"),
                            ({"baseline": np.zeros((3, 8, 8))}, "baseline has shape"), ({"eps": 1}, "no parameter 'eps'")):
        with pytest.raises(OnnxplainError, match=message) as error:
            onnxplain.explain(mobilenet, x, "deeplift", **params)
        assert "\n" not in str(error.value)


def test_the_opset_check_is_the_rule_used_not_the_op_type():
    """MaxPool's plain rule needs opset 16 (ScatterElements with add); an override that emits nothing newer runs on
    an opset-11 graph, and an override that applies the plain rule (DeepLIFT's) is refused as the plain one is."""
    from onnxplain.rewrite.composite import Composite
    from onnxplain.rewrite.rules import RULES

    class AsAverage:  # MaxPool differentiated as the AveragePool of the same window, with ops of opset 11
        min_opset = 11

        def __call__(self, node, dys, g):
            return RULES["AveragePool"](node, dys, g)
    x, dy = R.random((1, 2, 6, 6), np.float32), R.random((1, 2, 3, 3), np.float32)
    window = {"kernel_shape": [2, 2], "strides": [2, 2]}
    averaged = modified_vjp("MaxPool", x, dy, Composite("t", rules=(("MaxPool", AsAverage()),)), window, opset=11)
    assert rel_err(averaged, np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3) / 4) <= 1e-6  # AveragePool's VJP
    for composite in (None, RESCALE):
        with pytest.raises(OnnxplainError, match="the gradient needs opset 16.*for MaxPool"):
            modified_vjp("MaxPool", x, dy, composite, window, opset=11)
