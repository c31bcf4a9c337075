"""FGVis (Wagner et al. 2019): its gradient filter as a rule and in a whole network, and the games it plays.

- The filter rule on one-node graphs against its definition, dx = plain dx ⊙ 1[a ≤ a⁰].
- In a zoo ResNet: with a⁰ = the image's own activations the filtered gradient is exactly the plain one; lowering
  a⁰ at the last activation zeroes exactly the entries it puts below a.
- The deletion game flips the class with a small deleted fraction, and its explanation is a valid model input whose
  recomputed score is the reported one; the filter lowers the activation mass the mask adds over the image's.
- On MobileNetV2 the default slack lets the deletion game flip chelsea's class, where the paper's exact bound
  (slack 0) starves the gradient; the slack bound blocks where a exceeds a⁰ + σ·max(a⁰ of the channel).
- The command line on the bundled MobileNetV2, and bad parameters in one line.
"""
import numpy as np
import onnxruntime as ort
import pytest
from conftest import IMAGES, MOBILENET, rel_err, zoo
from gradcheck import one_node_model
from test_cli import fail, run

import onnxplain
from onnxplain import perturb
from onnxplain.errors import OnnxplainError
from onnxplain.explain import forward
from onnxplain.rewrite.graph import COTANGENT, GRAD, TARGET, Request, build
from onnxplain.rewrite.modified.fgvis import FILTER, REFERENCE, filtered_tensors

R = np.random.default_rng(0)


def _run(proto, feeds, outputs):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


@pytest.mark.parametrize("op, attrs, consts, opset, cap", [
    ("Relu", {}, None, 17, np.inf),
    ("Clip", {}, {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, 17, 6),   # ReLU6
    ("Clip", {"min": 0.0, "max": 6.0}, None, 7, 6),
])
def test_filter_rule_is_its_definition(op, attrs, consts, opset, cap):
    """dx = dy·1[0 < x < cap]·1[min(a⁰, 0) ≤ a ≤ max(a⁰, 0)], a = the op's output, a⁰ the fed reference."""
    x = np.float32(R.uniform(-3, 8, (2, 40)))
    a = np.clip(x, 0, cap)
    a0 = np.float32(np.where(R.random(x.shape) < 0.5, a + R.uniform(0, 1, x.shape), a - R.uniform(0, 1, x.shape)))
    a0[0, :5] = a[0, :5]                                          # equality passes
    dy = np.float32(R.standard_normal(x.shape))
    proto = build(one_node_model(op, {"x": x}, attrs, consts, opset=opset, dtype=np.float32),
                  Request(differentiate=("y0",), wrt=("x",), rules=FILTER))
    dx = _run(proto, {"x": x, COTANGENT.format("y0"): dy, REFERENCE.format("y0"): a0}, [GRAD.format("x")])[0]
    within = (np.minimum(a0, 0) <= a) & (a <= np.maximum(a0, 0))
    assert (dx == dy * ((x > 0) & (x < cap)) * within).all()


def test_filter_leaves_other_clips_plain():
    """A Clip that is not ReLU-like (hardtanh) keeps its plain rule and gets no reference input."""
    x = np.float32([[-2, -0.5, 0.5, 2]])
    proto = build(one_node_model("Clip", {"x": x}, constants={"lo": np.array(-1, np.float32),
                                                               "hi": np.array(1, np.float32)}, dtype=np.float32),
                  Request(differentiate=("y0",), wrt=("x",), rules=FILTER))
    assert [i.name for i in proto.graph.input] == ["x", COTANGENT.format("y0")]
    dx = _run(proto, {"x": x, COTANGENT.format("y0"): np.ones_like(x)}, [GRAD.format("x")])[0]
    assert dx.tolist() == [[0, 1, 1, 0]]


def test_filter_in_a_network_passes_the_plain_gradient_where_a_is_below_a0():
    """ResNet (zoo): the filtered gradient at the input equals the plain one when a⁰ = a (e = x); at the
    pre-activation of the last filtered ReLU it is the plain one ⊙ 1[a ≤ a⁰] when that a⁰ is lowered in places."""
    model, ref = zoo("resnet")
    x = ref["x"].astype(np.float32)
    names = filtered_tensors(model.proto, model.input, model.score)
    a0 = dict(zip(names, forward_exposed(model, x, names)))
    last = names[-1]
    pre = next(n.input[0] for n in model.proto.graph.node if last in n.output)
    feeds = {model.input: x, "target": np.array([3, 1, 7])}
    refs = {REFERENCE.format(k): v for k, v in a0.items()}

    def grads(rules, **changed):
        req = Request(differentiate=(model.score,), wrt=(model.input, pre), seed="target", keep_outputs=False,
                      rules=rules)
        return model.session(req).run([GRAD.format(model.input), GRAD.format(pre)], dict(feeds, **changed))

    plain_dx, plain_dpre = grads(None)
    dx, dpre = grads(FILTER, **refs)
    assert rel_err(dx, plain_dx) == 0 and rel_err(dpre, plain_dpre) == 0
    lowered = np.where(R.random(a0[last].shape) < 0.5, a0[last] - 0.1, a0[last]).astype(np.float32)
    _, dpre = grads(FILTER, **dict(refs, **{REFERENCE.format(last): lowered}))
    assert (dpre == plain_dpre * (a0[last] <= lowered)).all() and (dpre != plain_dpre).any()


def forward_exposed(model, x, names):
    return model.session(Request(expose=tuple(names), keep_outputs=False)).run(list(names), {model.input: x})


@pytest.fixture(scope="module")
def resnet():
    model, ref = zoo("resnet")
    return model, ref["x"].astype(np.float32)


def test_deletion_game_flips_the_class_with_a_valid_explanation(resnet):
    model, x = resnet
    e = onnxplain.explain(model, x, "fgvis", iterations=40)
    m, info = e.attributions, e.info
    assert info["flipped"].all() and (info["deleted_fraction"] < 0.05).all() and (info["iterations"] < 40).all()
    assert m.shape == x.shape and m.min() >= 0 and m.max() <= 1
    assert rel_err(info["explanation"], x * m) <= 1e-6                      # r = 0: e = x ⊙ m
    assert rel_err(info["deleted_fraction"], (1 - m).mean(axis=(1, 2, 3))) <= 1e-6
    assert rel_err(e.maps, (1 - m).mean(axis=1)) <= 1e-6
    y = forward(model, info["explanation"])
    assert rel_err(y[np.arange(3), e.targets], info["score"]) <= 1e-5
    assert (y.argmax(axis=1) != e.targets).all() and (e.targets == forward(model, x).argmax(axis=1)).all()


def test_preservation_game_keeps_the_score_with_a_smaller_mask(resnet):
    model, x = resnet
    e = onnxplain.explain(model, x, "fgvis", game="preservation", iterations=30, reference="blur")
    r = perturb.references(x, model.layout, "blur", "fgvis")
    assert rel_err(e.info["explanation"], r + (x - r) * e.attributions) <= 1e-6
    assert (e.info["score"] >= e.scores).all() and (e.info["deleted_fraction"] > 0.05).all()
    assert rel_err(forward(model, e.info["explanation"])[np.arange(3), e.targets], e.info["score"]) <= 1e-5


def test_filter_lowers_the_activations_the_mask_adds(resnet):
    """Preservation, same iterations: the activation mass of the explanation above the image's, Σ max(a(e) − a⁰, 0)
    / Σ a⁰ over the filtered tensors, is lower with the filter than without, for every image."""
    model, x = resnet
    names = filtered_tensors(model.proto, model.input, model.score)
    a0 = forward_exposed(model, x, names)

    def excess(filter):
        e = onnxplain.explain(model, x, "fgvis", game="preservation", iterations=40, filter=filter)
        ae = forward_exposed(model, e.info["explanation"], names)
        return sum(np.maximum(b - a, 0).sum(axis=(1, 2, 3)) for a, b in zip(a0, ae)) / sum(
            a.sum(axis=(1, 2, 3)) for a in a0)

    on, off = excess(True), excess(False)
    assert (on < off).all(), (on, off)


def test_slack_lets_the_deletion_game_flip_mobilenet():
    model = onnxplain.load(MOBILENET, device="cpu")
    loose = onnxplain.explain(model, IMAGES[0], "fgvis", iterations=60)
    exact = onnxplain.explain(model, IMAGES[0], "fgvis", iterations=60, slack=0)
    assert loose.info["flipped"][0] and loose.info["deleted_fraction"][0] < 0.01, loose.info
    assert not exact.info["flipped"][0] and exact.info["iterations"][0] == 60, exact.info


def test_slack_is_the_bound_the_filter_reads(resnet):
    """Two deletion steps (λ = 0) against a numpy loop over the filtered session fed a⁰ + σ·max(a⁰ of the channel):
    at m = 1 every activation is a⁰, so the slack shows from the second step on."""
    model, x = resnet
    names = filtered_tensors(model.proto, model.input, model.score)
    a0 = forward_exposed(model, x, names)
    targets = forward(model, x).argmax(axis=1)
    sess = model.session(Request(expose=(model.score,), differentiate=(model.score,), wrt=(model.input,),
                                 seed="target", keep_outputs=False, rules=FILTER))
    sigma, lr = 0.3, 0.02

    def step(m, bounds):
        dy = sess.run([GRAD.format(model.input)], {model.input: x * m, TARGET: targets,
                                                   **{REFERENCE.format(k): b for k, b in zip(names, bounds)}})[0]
        g = x * dy
        return np.clip(m - lr * g / np.abs(g).reshape(len(x), -1).max(axis=1).reshape(-1, 1, 1, 1), 0, 1)

    m1 = step(np.ones_like(x), a0)
    m2 = step(m1, [a + sigma * a.max(axis=(2, 3), keepdims=True) for a in a0])
    e = onnxplain.explain(model, x, "fgvis", iterations=2, lr=lr, lambda_=0, slack=sigma)
    assert not e.info["flipped"].any() and rel_err(e.attributions, m2) <= 1e-5
    assert rel_err(step(m1, a0), m2) > 1e-3                                   # the slack changed what passed


def test_command_line_on_mobilenet_and_bad_parameters(tmp_path, capsys):
    out = run("explain", MOBILENET, IMAGES[0], "-m", "fgvis", "-p", "iterations=2", "-o", tmp_path, "--device", "cpu")
    assert (tmp_path / "chelsea.fgvis.png").exists() and np.load(tmp_path / "chelsea.fgvis.npy").shape == (224, 224)
    assert "Egyptian cat" in out or "tabby" in out
    assert "game must be deletion or preservation" in fail(capsys, "explain", MOBILENET, IMAGES[0], "-m", "fgvis",
                                                           "-p", "game=hide", "-o", tmp_path / "b")
    for params, message in (({"iterations": 0}, "iterations ≥ 1"), ({"lr": -1}, "lr > 0"),
                            ({"filter": "yes"}, "filter must be"), ({"slack": -0.1}, "slack ≥ 0"), ({"reference": "nope"}, "baseline must be"),
                            ({"steps": 3}, "has no parameter 'steps'")):
        with pytest.raises(OnnxplainError, match=message) as error:
            onnxplain.explain(onnxplain.load(MOBILENET, device="cpu"), IMAGES[0], "fgvis", **params)
        assert "\n" not in str(error.value)
