"""LRP, Excitation Backprop and contrastive EBP (rewrite/modified/lrp.py, methods/lrp.py), and BatchNorm folding.

- Each rule on each linear op against its matrix form, the layer read off onnxruntime as y = M x + c.
- fold_batch_norm keeps the model's outputs and leaves pre-activation BatchNorms alone.
- Properties: conservation on bias-free nets, ε-LRP → Gradient×Input as ε → 0, EBP's winning probabilities sum to
  1 and the contrastive ones to 0.
- Zennit (composites, ExcitationBackprop) and Captum (LRP) on the same weights, on the zoo models.
- The bundled MobileNetV2 from the API, the command line and an exported graph; one-line errors.
"""
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import IMAGES, MOBILENET, MODELS, ZOO, rel_err
from gradcheck import one_node_model
from onnx import helper, numpy_helper
from test_cli import fail, run

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import as_batch
from onnxplain.export import export
from onnxplain.rewrite.composite import Composite
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request, build
from onnxplain.rewrite.modified import lrp
from onnxplain.rewrite.modified.canonize import fold_batch_norm

R = np.random.default_rng(0)


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _zoo(name, exporter="dynamo", proto=None):
    return onnxplain.load(proto or MODELS / "zoo" / f"{name}_{exporter}.onnx", device="cpu", preprocessing="unit")


# -- rules against their matrix form ------------------------------------------------------------------------------
LINEAR = {  # op: (attributes, input shape, weight shape, bias shape)
    "Gemm": ({"transB": 1, "alpha": 0.5, "beta": 2.0}, (3, 6), (4, 6), (4,)),
    "MatMul": ({}, (3, 6), (6, 4), None),
    "Conv": ({"strides": [2, 1], "pads": [1, 0, 1, 1], "group": 2}, (2, 4, 5, 5), (6, 2, 3, 2), (6,)),
    "ConvTranspose": ({"strides": [2, 2], "pads": [0, 1, 1, 0]}, (2, 2, 3, 3), (2, 3, 2, 3), (3,)),
}


def _matrix(op, w, b):
    """The layer y = op(x; w, b) of one sample as (M, c): y = M x + c, read off onnxruntime on a basis; w and b are
    the effective parameters (a Gemm's alpha and beta are 1)."""
    attrs, shape, _, _ = LINEAR[op]
    attrs = {**attrs, "alpha": 1.0, "beta": 1.0} if op == "Gemm" else attrs
    n = int(np.prod(shape[1:]))
    basis = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape(n + 1, *shape[1:]).astype(np.float32)
    constants = {"w": w.astype(np.float32), **({} if b is None else {"b": b.astype(np.float32)})}
    y = _session(one_node_model(op, {"x": basis}, attrs, constants, dtype=np.float32)).run(None, {"x": basis})[0]
    y = y.reshape(n + 1, -1).astype(np.float64)
    return (y[1:] - y[0]).T, y[0]


def _stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1, -1)


def _clip(v, lo=None, hi=None):
    return None if v is None else np.clip(v, lo, hi)


def _share(x, r, pos, neg, eps=1e-6):
    """x⁺ ⊙ M_posᵀ s + x⁻ ⊙ M_negᵀ s, s = R / stab(M_pos x⁺ + c_pos + M_neg x⁻)."""
    (mp, cp), (mn, _) = pos, neg
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    s = r / _stab(xp @ mp.T + cp + xn @ mn.T, eps)
    return xp * (s @ mp) + xn * (s @ mn)


def _epsilon(x, r, w, b, mat, eps=0.1):
    m, c = mat(w, b)
    return x * ((r / _stab(x @ m.T + c, eps)) @ m)


def _alpha_beta(x, r, w, b, mat, alpha=2, beta=1):
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    return (alpha * _share(x, r, mat(wp, _clip(b, 0)), mat(wn, None))
            - beta * _share(x, r, mat(wn, _clip(b, None, 0)), mat(wp, None)))


def _gamma(x, r, w, b, mat, gamma=0.25):
    def up(v, lo, hi):
        return None if v is None else v + gamma * np.clip(v, lo, hi)
    m, c = mat(w, b)
    z = x @ m.T + c
    return (_share(x, r * (z > 0), mat(up(w, 0, None), up(b, 0, None)), mat(up(w, None, 0), None))
            + _share(x, r * (z < 0), mat(up(w, None, 0), up(b, None, 0)), mat(up(w, 0, None), None)))


def _zbox(x, r, w, b, mat, low=-1.0, high=2.0):
    (m, c), (mp, cp), (mn, cn) = mat(w, b), mat(np.maximum(w, 0), _clip(b, 0)), mat(np.minimum(w, 0), _clip(b, None, 0))
    lo, hi = np.full(x.shape, low), np.full(x.shape, high)
    s = r / _stab(x @ m.T + c - (lo @ mp.T + cp) - (hi @ mn.T + cn))
    return x * (s @ m) - lo * (s @ mp) - hi * (s @ mn)


def _spread(x, r, w, b, mat):
    """(W')ᵀ (R / stab(W' 1 + c')): the w² and flat rules, (w, b) already modified."""
    m, c = mat(w, b)
    return (r / _stab(np.ones_like(x) @ m.T + c)) @ m


RULES = {  # name: (our rule, its matrix form (x, r, w, b, mat) -> R_in; mat(w, b) gives the layer's (M, c))
    "epsilon": (lrp.Epsilon(0.1), _epsilon),
    "zplus": (lrp.ZPlus(), lambda *a: _alpha_beta(*a, alpha=1, beta=0)),
    "alpha2beta1": (lrp.AlphaBeta(2, 1), _alpha_beta),
    "gamma": (lrp.Gamma(0.25), _gamma),
    "zbox": (lrp.ZBox((-1.0,), (2.0,)), _zbox),
    "wsquare": (lrp.WSquare(), lambda x, r, w, b, mat: _spread(x, r, w ** 2, None if b is None else b ** 2, mat)),
    "flat": (lrp.Flat(), lambda x, r, w, b, mat: _spread(x, r, np.ones_like(w), None, mat)),
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("op", sorted(LINEAR))
def test_rule_equals_its_matrix_form(op, rule):
    """On Gemm (alpha and beta folded in), MatMul, a grouped strided Conv and a strided ConvTranspose, with inputs
    of both signs: the graph's R_in equals the rule written with the layer's matrix."""
    attrs, shape, wshape, bshape = LINEAR[op]
    x = np.float32(R.standard_normal(shape))
    w = np.float32(R.standard_normal(wshape))
    b = None if bshape is None else np.float32(R.standard_normal(bshape))
    ours, reference = RULES[rule]
    model = one_node_model(op, {"x": x}, attrs, {"w": w, **({} if b is None else {"b": b})}, dtype=np.float32)
    y = _session(model).run(None, {"x": x})[0]
    r = np.float32(R.standard_normal(y.shape))
    proto = build(model, Request(differentiate=("y0",), wrt=("x",), rules=Composite("t", ((op, ours),))))
    got = _session(proto).run([GRAD.format("x")], {"x": x, COTANGENT.format("y0"): r})[0]
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    expected = reference(x.reshape(len(x), -1).astype(np.float64), r.reshape(len(r), -1).astype(np.float64),
                         alpha * w, None if b is None else beta * b, lambda w_, b_: _matrix(op, w_, b_))
    assert rel_err(got.reshape(len(x), -1), expected) <= 1e-4


def test_sums_and_pools_share_relevance_and_activations_pass_it():
    """Relu passes R (Pass); the residual Add and the AveragePool give each input its share x_i ⊙ (∂y/∂x_i)ᵀ R /
    stab(y) (Norm); the Add of a constant (a bias) keeps its plain rule. Σ R is conserved down to x1 and x2."""
    x1, x2 = (np.float32(R.standard_normal((1, 2, 4, 4))) for _ in range(2))
    nodes = [helper.make_node("Relu", ["x1"], ["a"]), helper.make_node("Add", ["a", "x2"], ["s"]),
             helper.make_node("AveragePool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Add", ["p", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, x1.shape)
                                           for n in ("x1", "x2")],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.float32([[[[1.0]], [[-2.0]]]]), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    rules = Composite("t", (("Relu", lrp.Pass()), ("Add", lrp.Norm()), ("AveragePool", lrp.Norm())))
    proto = build(model, Request(differentiate=("y",), wrt=("x1", "x2"), rules=rules))
    r = np.float32(R.standard_normal((1, 2, 2, 2)))
    got = _session(proto).run([GRAD.format("x1"), GRAD.format("x2")],
                              {"x1": x1, "x2": x2, COTANGENT.format("y"): r})
    a = np.maximum(x1, 0).astype(np.float64)
    s = a + x2
    p = s.reshape(1, 2, 2, 2, 2, 2).mean(axis=(3, 5))
    r_s = s * np.repeat(np.repeat(r / _stab(p), 2, 2), 2, 3) / 4
    expected = [a * r_s / _stab(s), x2 * r_s / _stab(s)]
    assert all(rel_err(g, e) <= 1e-5 for g, e in zip(got, expected))
    assert abs(sum(g.sum() for g in got) - r.sum()) <= 1e-4 * np.abs(r).sum()


# -- canonizer ------------------------------------------------------------------------------------------------------
def _with_batch_norms(proto):
    """`proto` with a BatchNormalization of random statistics after every Conv."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        nodes.append(node)
        if node.op_type != "Conv":
            continue
        c, out = weights[node.input[1]].shape[0], node.output[0]
        params = [R.uniform(0.5, 1.5, c), R.normal(0, 0.2, c), R.normal(0, 0.2, c), R.uniform(0.5, 2, c)]
        names = [f"{out}/bn_{k}" for k in ("scale", "bias", "mean", "var")]
        proto.graph.initializer.extend(numpy_helper.from_array(np.float32(v), n) for v, n in zip(params, names))
        node.output[0] = f"{out}/pre_bn"
        nodes.append(helper.make_node("BatchNormalization", [node.output[0], *names], [out], epsilon=1e-3))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _outputs(proto, x):
    return _session(proto).run(None, {proto.graph.input[0].name: x})[0]


def _batch_norms(proto):
    return sum(n.op_type == "BatchNormalization" for n in proto.graph.node)


@pytest.mark.parametrize("name", ZOO + ["mobilenet_v2"])
def test_fold_batch_norm_keeps_the_outputs(name):
    """A BatchNorm after every Conv folds into it (outputs within 1e-5); DenseNet's pre-activation BatchNorms, on a
    concatenation or on a Conv output that also feeds a concatenation, stay."""
    path = MOBILENET if name == "mobilenet_v2" else MODELS / "zoo" / f"{name}_dynamo.onnx"
    original = onnx.load(path)
    x = np.float32(R.standard_normal([d.dim_value or 2 for d in original.graph.input[0].type.tensor_type.shape.dim]))
    with_bn = _with_batch_norms(original)
    folded = fold_batch_norm(with_bn)
    assert _batch_norms(folded) == _batch_norms(original) and _batch_norms(with_bn) > _batch_norms(original)
    assert rel_err(_outputs(folded, x), _outputs(with_bn, x)) <= 1e-5
    assert fold_batch_norm(original) is original  # nothing to fold: DenseNet's 7 BatchNorms are all pre-activation


# -- properties -----------------------------------------------------------------------------------------------------
RELU_NETS = ("inception", "resnet", "vgg")  # ReLU, MaxPool, AveragePool, residual Add, Concat; no BatchNorm, no Mul


def _bias_free(proto):
    """`proto` with the biases of its Convs and Gemms zeroed."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    biases = {n.input[2] for n in proto.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}
    for t in proto.graph.initializer:
        if t.name in biases:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    return proto


def _sums(e):
    return e.attributions.reshape(len(e.attributions), -1).sum(axis=1)


@pytest.mark.parametrize("name", RELU_NETS)
def test_relevance_is_conserved_without_biases(name):
    """Without biases Σ R_input = y_c within 1e-5 for ε (ε = 1e-9), z⁺ with a flat first layer, γ with a z^B first
    layer, and αβ where every unit has positive and negative contributions (not in Inception's narrow 1×1 branches,
    where z⁻ = 0 makes a unit pass α·R). EBP's winning probabilities sum to 1, cEBP's to 0 at its layer."""
    ref = np.load(MODELS / "zoo" / f"{name}.npz")
    m = _zoo(name, proto=_bias_free(onnx.load(MODELS / "zoo" / f"{name}_dynamo.onnx")))
    kw = dict(target=ref["targets"].tolist())
    composites = ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"]
    composites += ["epsilon_alpha2_beta1"] if name != "inception" else []
    for composite in composites:
        e = onnxplain.explain(m, ref["x"], "lrp", composite=composite, epsilon=1e-9, **kw)
        assert np.abs(_sums(e) / e.scores - 1).max() <= 1e-5, composite
    assert np.abs(_sums(onnxplain.explain(m, ref["x"], "ebp", **kw)) - 1).max() <= 1e-5
    c = onnxplain.explain(m, ref["x"], "cebp", **kw)
    assert np.abs(_sums(c)).max() <= 1e-5 * np.abs(c.attributions).sum(axis=(1, 2, 3)).min()


@pytest.mark.parametrize("name", ["inception", "resnet"])
def test_epsilon_lrp_tends_to_gradient_times_input(name):
    """On ReLU nets LRP-0 is Gradient×Input (biases included): the gap shrinks with ε, in proportion once small
    (measured, resnet / inception: ε = 1e-2: 0.23 / 0.23, 1e-4: 0.08 / 0.05, 1e-6: 2e-3 / 2e-3, 1e-8: 2e-5 / 2e-5;
    vgg: 0.07, 0.03, 7e-4, 7e-6)."""
    ref = np.load(MODELS / "zoo" / f"{name}.npz")
    m, kw = _zoo(name), dict(target=ref["targets"].tolist())
    gi = onnxplain.explain(m, ref["x"], "gradxinput", **kw).attributions
    gaps = [rel_err(onnxplain.explain(m, ref["x"], "lrp", composite="epsilon", epsilon=eps, **kw).attributions, gi)
            for eps in (1e-2, 1e-4, 1e-6, 1e-8)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] <= 1e-4 and gaps[-2] <= 1e-2


# -- Zennit and Captum on the same weights --------------------------------------------------------------------------
try:
    import torch
    from torch import nn
except ImportError:  # the reference tests skip, the others run
    torch = None


@pytest.fixture(scope="module")
def zennit():
    """Zennit's attributor, composites, canonizer and rules. Zennit imports torchvision's ResNet blocks when it is
    imported; torchvision is no test dependency, so where it is absent a stand-in with those two classes is in
    sys.modules for the import only."""
    if torch is None:
        pytest.skip("reference tests need torch")
    stubs = {}
    try:
        import torchvision.models.resnet  # noqa: F401
    except ImportError:
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck, resnet.BasicBlock = (type(n, (nn.Module,), {}) for n in ("Bottleneck", "BasicBlock"))
        models = types.ModuleType("torchvision.models")
        models.resnet = resnet
        stubs = {"torchvision": types.ModuleType("torchvision"), "torchvision.models": models,
                 "torchvision.models.resnet": resnet}
        stubs["torchvision"].models = models
        sys.modules.update(stubs)
    try:
        pytest.importorskip("zennit", reason="reference tests need zennit")
        from zennit import attribution, canonizers, composites, layer, rules, types as ztypes
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(Gradient=attribution.Gradient, composites=composites, rules=rules, Sum=layer.Sum,
                                 merge=canonizers.SequentialMergeBatchNorm, types=ztypes)


def _torch_zoo(zennit, name):
    """The zoo model in float64, as Zennit must see it to apply the rules the ONNX graph gets (Zennit hooks modules
    only): residual adds through a zennit.layer.Sum (Norm, as its ResNetCanonizer does for torchvision's blocks)
    and functional global average pools as nn.AdaptiveAvgPool2d (Norm)."""
    import architectures as arch
    net = arch.load_zoo_torch(name).double()
    for block in net.modules():
        if isinstance(block, arch.BasicBlock):
            block.sum = zennit.Sum()
            block.forward = lambda x, b=block: torch.relu(b.sum(torch.stack([b.conv2(b.conv1(x)), b.shortcut(x)], -1)))
        elif isinstance(block, arch.MBBlock) and block.use_res_connect:
            block.sum = zennit.Sum()
            block.forward = lambda x, b=block: b.sum(torch.stack([x, b.body(x)], -1))
    features = {"resnet": lambda n, x: n.layer2(n.layer1(n.stem(x))),
                "mobilenetv3": lambda n, x: n.last_conv(n.block2(n.block1(n.stem(x)))),
                "inception": lambda n, x: n.mixed2(n.pool(n.mixed1(n.stem(x))))}
    if name in features:
        net.gap, head = nn.AdaptiveAvgPool2d(1), net.classifier if name == "mobilenetv3" else net.fc
        net.forward = lambda x: head(net.gap(features[name](net, x)).flatten(1))
    return net


def _relevance(zennit, net, composite, x, targets, scaled=True, layer=None):
    """Zennit's relevance at the input (or at the output of module `layer`) for R = one-hot (· y_c if scaled).
    Denormal float64s are flushed to zero, on one thread (the flag is per thread): they made runs 100× slower."""
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    seen = []

    def keep_gradient(module, args, out):
        out.register_hook(seen.append)
    hook = layer and layer.register_forward_hook(keep_gradient)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        with zennit.Gradient(net, composite) as attributor:
            y = net(x).detach()
            onehot = torch.eye(y.shape[1], dtype=y.dtype)[torch.tensor(targets)]
            _, r = attributor(x, onehot * y if scaled else onehot)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        if hook:
            hook.remove()
    return (seen[0] if layer is not None else r).numpy()


def _canonizers(zennit, name):
    """Zennit's BatchNorm merge, except on DenseNet: it merges by module order, and there each Conv is followed in
    that order by the next layer's pre-activation BatchNorm, which it does not feed alone (onnxplain leaves them)."""
    return [] if name == "densenet" else [zennit.merge()]


def _zennit_ebp(zennit, name):
    """Zennit's ExcitationBackprop with onnxplain's choices: no bias in z⁺ (the paper's, TorchRay's), activations
    and unfolded BatchNorms pass (as in the LRP composites; the same as the gradient at a ReLU)."""
    passes = [(zennit.types.Activation, zennit.rules.Pass()), (zennit.types.BatchNorm, zennit.rules.Pass())]
    return zennit.composites.ExcitationBackprop(zero_params=["bias"], layer_map=passes,
                                                canonizers=_canonizers(zennit, name))


@pytest.mark.parametrize("name", ZOO)
def test_composites_and_ebp_equal_zennit(zennit, name):
    """Zennit in float64 on the torch weights with its BatchNorm merge, onnxplain in float32 on the export, whose
    BatchNorms the exporter folded. Measured, the same on the legacy export: ≤ 3e-7 on VGG, ≤ 3.2e-5 on ResNet and
    Inception, ≤ 2.2e-4 on MobileNetV3 (squeeze-excite Mul through its plain gradient on both sides, HardSwish
    passing), ≤ 2.5e-4 on DenseNet (its unfolded BatchNorms pass; Zennit in float32 is as far from float64)."""
    ref = np.load(MODELS / "zoo" / f"{name}.npz")
    x, targets = ref["x"], ref["targets"].tolist()
    m, canonizers = _zoo(name), _canonizers(zennit, name)
    composites = {"epsilon_plus_flat": zennit.composites.EpsilonPlusFlat(canonizers=canonizers),
                  "epsilon_gamma_box": zennit.composites.EpsilonGammaBox(low=0.0, high=1.0, canonizers=canonizers),
                  "epsilon_alpha2_beta1": zennit.composites.EpsilonAlpha2Beta1(canonizers=canonizers)}
    for composite, reference in composites.items():
        expected = _relevance(zennit, _torch_zoo(zennit, name), reference, x, targets)
        got = onnxplain.explain(m, x, "lrp", target=targets, composite=composite).attributions
        assert rel_err(got, expected) <= 1e-3, composite
    expected = _relevance(zennit, _torch_zoo(zennit, name), _zennit_ebp(zennit, name), x, targets, scaled=False)
    assert rel_err(onnxplain.explain(m, x, "ebp", target=targets).attributions, expected) <= 1e-3


@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_contrastive_ebp_equals_zennit_class_minus_dual(zennit, name):
    """cEBP = EBP of the class minus EBP with the classifier's weights negated (TorchRay's two passes), at the
    default layer (the CAM layer's module output in torch) and at the input; the map is ReLU of the channel sum."""
    ref = np.load(MODELS / "zoo" / f"{name}.npz")
    x, targets, m = ref["x"], ref["targets"].tolist(), _zoo(name)
    for at_input in (False, True):
        expected = []
        for sign in (1, -1):
            net = _torch_zoo(zennit, name)
            classifier = [mod for mod in net.modules() if isinstance(mod, nn.Linear)][-1]
            classifier.weight.data *= sign
            layer = None if at_input else net.get_submodule(net.INFO["cam_layer"])
            expected.append(_relevance(zennit, net, _zennit_ebp(zennit, name), x, targets, False, layer))
        expected = expected[0] - expected[1]
        e = onnxplain.explain(m, x, "cebp", target=targets, layer=m.input if at_input else None)
        assert rel_err(e.attributions, expected) <= 1e-3
        if at_input:
            assert rel_err(e.maps, np.maximum(expected.sum(axis=1), 0)) <= 1e-3


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_epsilon_equals_captum(exporter):
    """Captum's LRP with its default rules (ε = 1e-9 on Conv, Linear and MaxPool; ReLU passes) on the sequential
    VGG, whose Flatten moves into forward (Captum has no rule for the module). Measured: 7e-7."""
    LRP = pytest.importorskip("captum.attr", reason="reference tests need captum").LRP
    import architectures as arch
    ref = np.load(MODELS / "zoo" / "vgg.npz")
    net = arch.load_zoo_torch("vgg").double()
    head = net.classifier = nn.Sequential(*net.classifier[1:])
    net.forward = lambda x: head(net.block2(net.block1(x)).flatten(1))
    expected = LRP(net).attribute(torch.tensor(ref["x"], dtype=torch.float64, requires_grad=True),
                                  target=torch.tensor(ref["targets"])).detach().numpy()
    e = onnxplain.explain(_zoo("vgg", exporter), ref["x"], "lrp", target=ref["targets"].tolist(), composite="epsilon",
                          epsilon=1e-9)
    assert rel_err(e.attributions, expected) <= 1e-3
    assert rel_err(e.maps, expected.sum(axis=1)) <= 1e-3


def test_box_bounds_come_from_the_preprocessing(zennit):
    """By default z^B's bounds are pixel values 0 and 255 after the model's preprocessing, per channel: with
    ImageNet's mean and std, EpsilonGammaBox equals Zennit's with those bounds as (1, 3, 1, 1) tensors."""
    ref = np.load(MODELS / "zoo" / "vgg.npz")
    m = onnxplain.load(MODELS / "zoo" / "vgg_dynamo.onnx", device="cpu", preprocessing="imagenet-noresize")
    mean, std = np.array(m.preprocessing.mean), np.array(m.preprocessing.std)
    low, high = onnxplain.methods.get("lrp").box(m.preprocessing)
    assert np.allclose(low, -mean / std) and np.allclose(high, (1 - mean) / std)
    bounds = [torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (low, high)]
    expected = _relevance(zennit, _torch_zoo(zennit, "vgg"), zennit.composites.EpsilonGammaBox(*bounds), ref["x"],
                          ref["targets"].tolist())
    e = onnxplain.explain(m, ref["x"], "lrp", target=ref["targets"].tolist(), composite="epsilon_gamma_box")
    assert rel_err(e.attributions, expected) <= 1e-3


# -- the bundled MobileNetV2 ----------------------------------------------------------------------------------------
def test_mobilenet_from_the_api_the_command_line_and_an_export(tmp_path, mobilenet):
    """LRP, EBP and cEBP from the API; LRP as an exported graph run alone by onnxruntime gives the API's maps; LRP
    with EpsilonGammaBox from the command line."""
    x, _ = as_batch(mobilenet, IMAGES)
    e = onnxplain.explain(mobilenet, x, "lrp")
    assert e.attributions.shape == x.shape and np.isfinite(e.attributions).all() and 281 <= e.targets[0] <= 285
    assert rel_err(e.maps, e.attributions.sum(axis=1)) <= 1e-6
    ebp = onnxplain.explain(mobilenet, x, "ebp", target=e.targets.tolist())
    assert (0 < _sums(ebp)).all() and (_sums(ebp) <= 1).all()  # units firing on their bias alone keep some mass
    c = onnxplain.explain(mobilenet, x, "cebp", target=e.targets.tolist())
    assert c.attributions.shape == (2, 1280, 7, 7) and c.maps.shape == (2, 224, 224) and (c.maps >= 0).all()
    assert (np.abs(_sums(c)) <= 1e-4 * np.abs(c.attributions).sum(axis=(1, 2, 3))).all()
    path = tmp_path / "lrp.onnx"
    export(mobilenet, "lrp", path)
    maps, used = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["maps", "target_used"], {mobilenet.input: x})
    assert (used == e.targets).all() and rel_err(maps, e.maps) <= 1e-5
    out = run("explain", MOBILENET, IMAGES[0], "-m", "lrp", "-p", "composite=epsilon_gamma_box", "-o", tmp_path)
    saved = np.load(tmp_path / "chelsea.lrp.npy")
    assert "chelsea.lrp.png" in out and saved.shape == (224, 224) and np.isfinite(saved).all()


@pytest.mark.parametrize("params, words", [
    ({"composite": "gamma"}, "unknown LRP composite"), ({"epsilon": 0}, "epsilon must be a number > 0"),
    ({"epsilon": "small"}, "epsilon must be a number"), ({"alpha": 3.0}, "alpha - beta must be 1"),
    ({"stabilizer": 0}, "stabilizer must be a number > 0"), ({"low": 1, "high": 0}, "low must be below high"),
    ({"low": "dark"}, "low must be a number or one number per channel"), ({"gamma": None}, "gamma must be a number"),
])
def test_bad_parameters_give_one_line(params, words):
    with pytest.raises(OnnxplainError, match=words) as error:
        onnxplain.methods.get("lrp", **params)
    assert "\n" not in str(error.value)


def test_bounds_for_another_channel_count_give_one_line():
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(OnnxplainError, match="z\\^B's bounds have 2 values for the 3 channels") as error:
        onnxplain.explain(_zoo("vgg"), x, "lrp", composite="epsilon_gamma_box", low=(-2, -2), high=(2, 2))
    assert "\n" not in str(error.value)


def test_bad_parameters_on_the_command_line(tmp_path, capsys):
    assert "unknown LRP composite" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-m", "lrp", "-p",
                                           "composite=zplus", "-o", tmp_path)
    assert "ebp's stabilizer must be" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-m", "ebp", "-p",
                                              "stabilizer=-1", "-o", tmp_path)
    assert "method 'cebp' has no parameter 'epsilon'" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-m", "cebp", "-p",
                                                      "epsilon=1", "-o", tmp_path)


def test_relevance_that_overflows_is_refused_saying_why_and_what_runs():
    """x → Gemm → ÷1e-20 → Gemm(×1e-20) → ÷1e-20 → Gemm(×1e-20): the scores are of order 1, but relevance passes
    each Div by its plain gradient (×1e20, as through a LayerNorm's ÷σ) and each Gemm conserves it, so it reaches
    1e40 at the first Gemm, beyond float32. The refusal names the map, the cause, and what to run instead."""
    w1 = R.standard_normal((8, 3 * 4 * 4)).astype(np.float32)
    w2, w3 = (R.standard_normal(s).astype(np.float32) * np.float32(1e-20) for s in ((8, 8), (10, 8)))
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w1"], ["h1"], transB=1),
             helper.make_node("Div", ["h1", "tiny"], ["g1"]), helper.make_node("Gemm", ["g1", "w2"], ["h2"], transB=1),
             helper.make_node("Div", ["h2", "tiny"], ["g2"]),
             helper.make_node("Gemm", ["g2", "w3"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                                                                [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in (("w1", w1), ("w2", w2), ("w3", w3),
                                                                          ("tiny", np.float32(1e-20)))])
    m = onnxplain.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
                       preprocessing="unit")
    x = R.standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert np.isfinite(onnxplain.explain(m, x, "saliency").maps).all()  # and the scores: explain checks them
    with pytest.raises(OnnxplainError) as error:
        onnxplain.explain(m, x, "lrp")
    assert str(error.value).startswith("the lrp map of image 0 has values that are NaN or infinite (1 of 1 images do); "
                                       "its relevance overflowed float32 through the rules")
    assert "-p composite=epsilon -p epsilon=1" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(OnnxplainError, match="ebp map .* overflowed float32 .*; use a gradient or black-box method"):
        onnxplain.explain(m, x, "ebp")
