"""Randomisation sanity checks: the initializer rewrite (`Model.with_initializers`), the layers the MPRT re-draws and
how, and the MPRT and random-logit checks on the ground-truth shapes model against their definitions."""
from dataclasses import replace

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import forward
from onnxplain.metrics import CHECKS, REGISTRY, Case, mprt_curves, spearman, ssim
from onnxplain.metrics.randomisation import other_classes, parameter_layers, randomised
from onnxplain.preprocess import to_input

LOCALISATION = MODELS / "localisation"


@pytest.fixture(scope="module")
def shapes():
    """The shapes model and its first 8 held-out scenes with their true classes."""
    m = onnxplain.load(LOCALISATION / "shapes.onnx", device="cpu")
    data = np.load(LOCALISATION / "heldout.npz")
    x = np.stack([to_input(view, m.preprocessing) for view in data["images"][:8]])
    return m, x, data["labels"][:8]


def initializers(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def test_with_initializers_replaces_the_named_tensors_only(shapes):
    """A zero classifier weight leaves the logits equal to its bias; every other tensor keeps its bytes; the model it
    was made from is unchanged, and what was loaded with it (preprocessing, score, labels) is kept."""
    m, x, _ = shapes
    before, logits = m.proto.SerializeToString(), forward(m, x)
    zero = m.with_initializers({"fc.weight": np.zeros((5, 64))})
    new, old = initializers(zero.proto), initializers(m.proto)
    assert (new["fc.weight"] == 0).all() and new["fc.weight"].dtype == np.float32
    assert all(new[k].tobytes() == v.tobytes() for k, v in old.items() if k != "fc.weight")
    np.testing.assert_array_equal(forward(zero, x), np.broadcast_to(old["fc.bias"], (len(x), 5)))
    assert m.proto.SerializeToString() == before and (forward(m, x) == logits).all()
    assert (zero.preprocessing, zero.score, zero.labels, zero.normalised) == (m.preprocessing, m.score, m.labels,
                                                                             m.normalised)


def test_with_initializers_keeps_a_score_head():
    """A segmentation model (its score a region head appended after the outputs): the rewrite reaches the graph with
    the head and the one without it, and the head keeps scoring: each class's sum over the image, now of the new
    convolution."""
    w = np.random.default_rng(0).normal(size=(3, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["seg"], name="conv")], "seg",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    m = onnxplain.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
                       preprocessing="unit", device="cpu")
    x = np.random.default_rng(1).uniform(size=(2, 3, 8, 8)).astype(np.float32)
    w2 = np.eye(3, dtype=np.float32)[::-1].reshape(3, 3, 1, 1)  # channels reversed
    new = m.with_initializers({"w": w2})
    assert new.head == m.head is not None and (initializers(new.bare)["w"] == w2).all()
    np.testing.assert_allclose(forward(new, x), x.sum(axis=(2, 3))[:, ::-1], rtol=1e-5)


@pytest.mark.parametrize("values, match", [({"nope": np.zeros(5)}, "no initializer 'nope'"),
                                           ({"fc.bias": np.zeros(4)}, r"shape \(5,\)"),
                                           ({"fc.bias": np.full(5, np.nan)}, "finite"),
                                           ({"fc.bias": np.array(["a"] * 5)}, "finite")])
def test_with_initializers_refuses_in_one_line(shapes, values, match):
    with pytest.raises(OnnxplainError, match=match):
        shapes[0].with_initializers(values)


def small_net():
    """Conv(3→4, 3×3, bias) → BatchNormalization → Relu → GlobalAveragePool → Flatten → MatMul(4→6) + Add(bias) →
    Relu → Gemm(6→5, transB=1): every kind of layer the MPRT re-draws, in the layouts torch exports."""
    rng = np.random.default_rng(0)
    tensors = {"cw": rng.normal(size=(4, 3, 3, 3)), "cb": rng.normal(size=4), "scale": rng.uniform(1, 2, 4),
               "shift": rng.normal(size=4), "mean": rng.normal(size=4), "var": rng.uniform(1, 2, 4),
               "mw": rng.normal(size=(4, 6)), "mb": rng.normal(size=6), "gw": rng.normal(size=(5, 6)),
               "gb": rng.normal(size=5)}
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "mw"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "mb"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Gemm", ["h", "gw", "gb"], ["logits"], transB=1, name="gemm")]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return onnxplain.load(proto, preprocessing="unit", device="cpu")


def test_layers_are_found_from_the_output_back_and_redrawn_as_pytorch_initialises_them():
    """Weights and biases uniform in ±1/√fan_in with torch's own fan_in of the layer's weight (in torch's layout:
    the MatMul's weight transposed), normalisations reset to the identity, layer k drawn from (seed, k)."""
    torch = pytest.importorskip("torch", reason="torch's fan_in is the reference")
    m = small_net()
    assert parameter_layers(m) == [("gemm", ("gw", "gb")), ("matmul", ("mw", "mb")),
                                   ("bn", ("scale", "shift", "mean", "var")), ("conv", ("cw", "cb"))]
    fan_in = {"gemm": torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(5, 6))[0],
              "matmul": torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(6, 4))[0],
              "conv": torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(4, 3, 3, 3))[0]}
    old, new = initializers(m.proto), initializers(randomised(m, seed=7).proto)
    for layer, params in parameter_layers(m):
        for name in params:
            if layer == "bn":
                expected = {"scale": 1, "shift": 0, "mean": 0, "var": 1}[name]
                assert (new[name] == expected).all()
                continue
            bound = 1 / np.sqrt(fan_in[layer])
            assert (np.abs(new[name]) <= bound).all() and (new[name] != old[name]).all(), name
    assert np.abs(new["cw"]).max() > 0.9 / np.sqrt(27) and np.abs(new["gw"]).max() > 0.8 / np.sqrt(6)  # spread
    top = initializers(randomised(m, 1, seed=7).proto)  # the cascade's first step: the Gemm's draw is the same
    assert (top["gw"] == new["gw"]).all() and all((top[k] == old[k]).all() for k in old if k not in ("gw", "gb"))
    assert not (initializers(randomised(m, 1, seed=8).proto)["gw"] == new["gw"]).any()


def test_the_cascade_rewrites_one_more_layer_per_step_and_changes_the_output(shapes):
    m, x, _ = shapes
    layers = parameter_layers(m)
    assert [name for name, _ in layers] == ["node_linear", "node_Conv_74", "node_Conv_72", "node_Conv_70",
                                            "node_Conv_68"]  # Gemm, then the four convolutions back to the input
    old, before, logits = initializers(m.proto), m.proto.SerializeToString(), forward(m, x)
    for k in range(1, len(layers) + 1):
        r = randomised(m, k)
        new = initializers(r.proto)
        drawn = {n for _, params in layers[:k] for n in params}
        assert all((new[n] != old[n]).all() for n in drawn)
        assert all(new[n].tobytes() == old[n].tobytes() for n in old if n not in drawn)
        assert np.abs(forward(r, x) - logits).max() > 0.1
    assert m.proto.SerializeToString() == before and randomised(m) is randomised(m)  # kept for later batches


def saliency_of(model, inputs, targets):
    return onnxplain.explain(model, inputs, "saliency", target=targets).maps


def edges(model, inputs, targets):
    """A map that never looks at the model: the image's gradient magnitude."""
    grey = inputs.mean(axis=1)
    return np.hypot(np.gradient(grey, axis=1), np.gradient(grey, axis=2))


def test_mprt_is_the_similarity_to_the_fully_randomised_models_map(shapes):
    """Per image: Spearman (default) or SSIM of |map| / max |map| against the same for the map of the model with
    every layer re-drawn; the last column of the cascade."""
    m, x, labels = shapes
    case = Case(m, x, saliency_of(m, x, labels), labels, explain=saliency_of)
    full = np.abs(saliency_of(randomised(m), x, labels).astype(np.float64))
    original = np.abs(case.maps.astype(np.float64))

    def scaled(a):
        return a / a.max()
    np.testing.assert_allclose(REGISTRY["mprt"](case), [spearman(a, b) for a, b in zip(original, full)], atol=1e-12)
    np.testing.assert_allclose(REGISTRY["mprt"](case, similarity="ssim"),
                               [ssim(scaled(a), scaled(b)) for a, b in zip(original, full)], atol=1e-12)
    curves = mprt_curves(case, layers=2)
    assert curves["layers"] == [name for name, _ in parameter_layers(m)][:2] and curves["spearman"].shape == (8, 2)
    np.testing.assert_allclose(mprt_curves(case)["spearman"][:, -1], REGISTRY["mprt"](case), atol=1e-12)


def test_mprt_check_passes_the_gradient_and_fails_maps_that_ignore_the_weights(shapes):
    """Saliency of the real model changes when its layers are re-drawn (README: mean Spearman 0.18 at the end on
    16 scenes); saliency that a fixed randomised copy computes whatever model it is given, and an edge map, do not
    change at all (Spearman 1 at every step): both fail."""
    m, x, labels = shapes
    real = CHECKS["mprt"](Case(m, x, saliency_of(m, x, labels), labels, explain=saliency_of))
    assert real["verdict"] == "pass" and real["spearman"][-1] < 0.5 and len(real["layers"]) == 5
    fixed = m.with_initializers({n: np.random.default_rng(1).normal(size=v.shape)
                                 for n, v in initializers(m.proto).items() if n.endswith("weight")})

    def on_the_fixed_model(model, inputs, targets):
        return saliency_of(fixed, inputs, targets)
    for explain in (on_the_fixed_model, edges):
        check = CHECKS["mprt"](Case(m, x, explain(m, x, labels), labels, explain=explain))
        assert check["verdict"] == "fail" and check["spearman"] == pytest.approx([1] * 5), explain.__name__
        assert check["reason"] == "the mean Spearman after randomising 5 layers is 1.000, beyond ±0.5: the maps survive"


def test_random_logit_compares_the_map_with_a_random_other_class(shapes):
    """The other class is uniform over the rest, drawn per image from its own bytes (the same in any batch); the score
    is the SSIM of the two maps each divided by its maximum |value|; Grad-CAM's maps depend on the class and pass,
    an edge map does not and fails."""
    m, x, labels = shapes
    others = other_classes(x, labels, 5)
    assert (others != labels).all() and (others >= 0).all() and (others < 5).all()
    assert (other_classes(x[::-1], labels[::-1], 5) == others[::-1]).all()
    many = other_classes(np.arange(4000, dtype=np.float32).reshape(4000, 1), np.zeros(4000, int), 5)
    assert np.abs(np.bincount(many, minlength=5)[1:] / 4000 - 0.25).max() < 0.03 and (many != 0).all()

    def gradcam(model, inputs, targets):
        return onnxplain.explain(model, inputs, "gradcam", target=targets).maps
    maps = gradcam(m, x, labels)
    case = Case(m, x, maps, labels, explain=gradcam)
    maps, other = maps.astype(np.float64), gradcam(m, x, others).astype(np.float64)
    expected = [ssim(a / np.abs(a).max(), b / np.abs(b).max()) for a, b in zip(maps, other)]
    np.testing.assert_allclose(REGISTRY["random_logit"](case), expected, atol=1e-12)
    assert CHECKS["random_logit"](case)["verdict"] == "pass"
    blind = CHECKS["random_logit"](Case(m, x, edges(m, x, labels), labels, explain=edges))
    assert blind["verdict"] == "fail" and blind["ssim"] == [1.0] and blind["layers"] == []


def test_constant_maps_have_no_rank_correlation_and_fail(shapes):
    """Spearman is undefined for a constant map (NaN per image, as scipy and Quantus give it); the check's means are
    then None (JSON has no NaN) and the verdict fails: nothing shows the maps depend on the weights."""
    m, x, labels = shapes

    def flat(model, inputs, targets):
        return np.ones((len(inputs), 64, 64))
    case = Case(m, x, flat(m, x, labels), labels, explain=flat)
    assert np.isnan(REGISTRY["mprt"](case)).all()
    check = CHECKS["mprt"](case, layers=2)
    assert check["spearman"] == [None, None] and check["ssim"] == [1.0, 1.0] and check["verdict"] == "fail"
    assert "undefined" in check["reason"]


def test_randomisation_refuses_in_one_line(shapes):
    m, x, labels = shapes
    case = Case(m, x, edges(m, x, labels), labels)
    with pytest.raises(OnnxplainError, match="mprt needs explain"):
        REGISTRY["mprt"](case)
    with pytest.raises(OnnxplainError, match="similarity must be one of spearman, ssim"):
        REGISTRY["mprt"](replace(case, explain=edges), similarity="pearson")
    with pytest.raises(OnnxplainError, match="one class per image among 5"):
        REGISTRY["random_logit"](replace(case, explain=edges, targets=labels + 5))
    with pytest.raises(OnnxplainError, match="seed must be a whole number"):
        REGISTRY["random_logit"](replace(case, explain=edges), seed=-1)
    with pytest.raises(OnnxplainError, match="threshold must be a similarity from 0 to 1"):
        CHECKS["random_logit"](replace(case, explain=edges), threshold="high")
    with pytest.raises(OnnxplainError, match="layers must be a whole number"):
        mprt_curves(replace(case, explain=edges), layers=0)
    with pytest.raises(OnnxplainError, match="re-explaining gave maps of shape"):
        REGISTRY["mprt"](replace(case, explain=lambda model, inputs, targets: np.zeros((1, 64, 64))))
    bare = onnx.helper.make_model(onnx.helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["logits"])], "none",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 2, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    weightless = onnxplain.load(bare, preprocessing={"size": [2, 1]}, device="cpu")
    with pytest.raises(OnnxplainError, match="no layer whose weights"):
        randomised(weightless)
