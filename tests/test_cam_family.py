"""The CAM family against independent numpy references from the exposed activation A and gradient ∂y_c/∂A.

pytorch-grad-cam needs torchvision, so each formula is written out here in float64 from the paper, and compared at
the default layer and at an earlier block end, where the gradient varies over space (at the last layer of a
GAP→linear head it does not, and Grad-CAM, XGrad-CAM and HiResCAM coincide).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import EXPORTERS, IMAGES, MOBILENET, MODELS, ZOO, exposed, rel_err, softmax, zoo
from onnx import TensorProto, helper, numpy_helper
from onnxplain_cli.main import cli, main

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import as_batch, cam_layer, candidate_layers, forward
from onnxplain.export import export
from onnxplain.perturb import bilinear_weights
from onnxplain.rewrite.graph import Request

CAMS = ("gradcam", "cam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "fem", "scorecam",
        "ablationcam")


def _up(cam, size):
    return np.einsum("hi,nij,wj->nhw", bilinear_weights(cam.shape[1], size[0]), cam,
                     bilinear_weights(cam.shape[2], size[1]))


def _relu_sum(w, a):
    return np.maximum((w * a).sum(axis=1), 0)


def _gradcampp(a, g):
    g2 = g ** 2
    den = 2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g ** 3
    alpha = np.divide(g2, den, out=np.zeros_like(g), where=den != 0)
    return _relu_sum((alpha * np.maximum(g, 0)).sum(axis=(2, 3), keepdims=True), a)


def _xgradcam(a, g):
    total = a.sum(axis=(2, 3), keepdims=True)
    w = np.divide((a * g).sum(axis=(2, 3), keepdims=True), total, out=np.zeros_like(total), where=total != 0)
    return _relu_sum(w, a)


def _eigencam(a):
    """pytorch-grad-cam's get_2d_projection (SVD of the centred h·w × K matrix), sign by correlation with the mean
    activation, then ReLU."""
    out = []
    for ai in a:
        mat = ai.reshape(len(ai), -1).T
        mat = mat - mat.mean(axis=0)
        proj = mat @ np.linalg.svd(mat, full_matrices=False)[2][0]
        mean = ai.mean(axis=0).ravel()
        out.append(np.sign(np.dot(proj, mean - mean.mean())) * proj.reshape(ai.shape[1:]))
    return np.maximum(np.array(out), 0)


def _fem(a, k=2.0):
    mu, sigma = a.mean(axis=(2, 3), keepdims=True), a.std(axis=(2, 3), keepdims=True)
    fem = (mu * (a > mu + k * sigma)).sum(axis=1)
    top = fem.max(axis=(1, 2), keepdims=True)
    return fem / np.where(top > 0, top, 1)


FORMULAS = {
    "gradcam": lambda a, g: _relu_sum(g.mean(axis=(2, 3), keepdims=True), a),
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": lambda a, g: _relu_sum(np.maximum(g, 0), a),
    "hirescam": lambda a, g: _relu_sum(g, a),
    "eigencam": lambda a, g: _eigencam(a),
    "fem": lambda a, g: _fem(a),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ZOO)
def test_one_graph_cams_follow_their_definition(name, exporter):
    """At the default layer; for the dynamo exports also at the block end before it."""
    m, ref = zoo(name, exporter)
    x, targets = ref["x"], ref["targets"]
    blocks = candidate_layers(m)
    for layer in (cam_layer(m, None), blocks[-2])[:2 if exporter == "dynamo" else 1]:
        (a,), (g,) = exposed(m, x, [layer], targets)
        assert np.ptp(g, axis=(2, 3)).max() > 0 or layer == blocks[-1]
        for method, formula in FORMULAS.items():
            e = onnxplain.explain(m, x, method, target=targets.tolist(), layer=layer)
            expected = formula(a, g)
            assert expected.max() > 0, (method, layer)
            assert rel_err(e.attributions, expected) <= 1e-4, (method, layer)
            assert rel_err(e.maps, _up(expected, m.input_size)) <= 1e-4, (method, layer)


def _gemm_rows(m):
    """classes×K of the model's last Gemm, read from the file (transB as exported by torch)."""
    gemm = [n for n in m.proto.graph.node if n.op_type == "Gemm"][-1]
    weights = {t.name: numpy_helper.to_array(t) for t in m.proto.graph.initializer}
    return weights[gemm.input[1]].astype(np.float64)


@pytest.mark.parametrize("name", ["resnet", "densenet", "inception"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cam_is_the_linear_layers_row_and_the_gradients_spatial_sum(name, exporter):
    m, ref = zoo(name, exporter)
    e = onnxplain.explain(m, ref["x"], "cam", target=ref["targets"].tolist())
    (a,), (g,) = exposed(m, ref["x"], [e.layer], ref["targets"])
    rows = _gemm_rows(m)[ref["targets"]]
    assert rel_err(g.sum(axis=(2, 3)), rows) <= 1e-5  # Zhou's weights are the spatial sum of the gradient here
    expected = _relu_sum(rows[:, :, None, None], a)
    assert rel_err(e.attributions, expected) <= 1e-4 and rel_err(e.maps, _up(expected, m.input_size)) <= 1e-4


@pytest.mark.parametrize("name", ["vgg", "mobilenetv3"])
def test_cam_refuses_a_model_without_a_pooled_linear_head(name, capsys, tmp_path):
    m, ref = zoo(name)
    with pytest.raises(OnnxplainError) as err:
        onnxplain.explain(m, ref["x"], "cam")
    assert len(str(err.value).splitlines()) == 1 and "global average pooling" in str(err.value)
    path = MODELS / "zoo" / f"{name}_dynamo.onnx"
    with pytest.raises(SystemExit):
        main(["explain", str(path), str(IMAGES[0]), "-m", "cam", "--preset", "unit", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cam (Zhou 2016) needs layer" in err


def _tiny(h, w, layout="NCHW", spatial=None):
    """A layer written by hand: x (the "image", 3 channels, in `layout`) → Relu → A [⊙ spatial, an h×w map that
    makes ∂y/∂A vary over space] → mean over space → Gemm → 2 scores."""
    nchw = layout == "NCHW"
    nodes, pooled, weights = [helper.make_node("Relu", ["x"], ["a"])], "a", [
        numpy_helper.from_array(np.array([[1, -0.5, 2], [0.3, 1, -1]], np.float32), "W")]
    if spatial is not None:
        weights.append(numpy_helper.from_array(spatial.reshape((h, w) if nchw else (h, w, 1)).astype(np.float32), "S"))
        nodes.append(helper.make_node("Mul", ["a", "S"], ["weighted"]))
        pooled = "weighted"
    nodes += [helper.make_node("ReduceMean", [pooled], ["p"], axes=[2, 3] if nchw else [1, 2], keepdims=0),
              helper.make_node("Gemm", ["p", "W"], ["logits"], transB=1)]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, h, w] if nchw else ["N", h, w, 3])
    graph = helper.make_graph(nodes, "tiny", [image], [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                     ["N", 2])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnxplain.load(proto, device="cpu", preprocessing="unit")


def test_fem_on_hand_built_activations():
    """Channel 0: one spot of 16 on 4×4 zeros (μ = 1, σ = √15, threshold 8.7): B₀ = that spot, weight 1. Channel 1:
    a spot of 32 (μ = 2): weight 2 at its spot. Channel 2: constant 5 (σ = 0, nothing above μ). FEM = 1 and 2 at
    the spots, divided by the maximum 2."""
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 0, 0, 0], x[0, 1, 3, 2], x[0, 2] = 16, 32, 5
    e = onnxplain.explain(_tiny(4, 4), x, "fem", layer="a")
    expected = np.zeros((1, 4, 4))
    expected[0, 0, 0], expected[0, 3, 2] = 0.5, 1.0
    assert np.array_equal(e.attributions, expected) and np.array_equal(e.maps, expected)
    x[0, 1] = 0  # one spot left: FEM = 1 there; no spot at all: FEM = 0 everywhere (no division by 0)
    assert onnxplain.explain(_tiny(4, 4), x, "fem", layer="a").maps[0, 0, 0] == 1
    assert not onnxplain.explain(_tiny(4, 4), np.full_like(x, 3), "fem", layer="a").maps.any()
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, size=(4, 3, 12, 12)).astype(np.float32)
    e = onnxplain.explain(_tiny(12, 12), x, "fem", layer="a")
    assert rel_err(e.maps, _fem(x.astype(np.float64))) <= 1e-6


def test_nhwc_layers_give_the_nchw_maps():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    for spatial in (None, rng.uniform(size=(6, 6))):
        nchw, nhwc = _tiny(6, 6, "NCHW", spatial), _tiny(6, 6, "NHWC", spatial)
        assert nhwc.layout == "NHWC"
        for method in (c for c in CAMS if spatial is None or c != "cam"):  # the weighted head is no CAM head
            expected = onnxplain.explain(nchw, x, method, target=[0, 1], layer="a")
            e = onnxplain.explain(nhwc, x.transpose(0, 2, 3, 1), method, target=[0, 1], layer="a")
            assert expected.maps.max() > 0 and rel_err(e.maps, expected.maps) <= 1e-5, method


@pytest.mark.parametrize("layer", [-1, -2])
def test_scorecam_equals_a_loop_over_channels(layer):
    """Each channel upsampled, min-max normalised, multiplied into the image and scored alone by a plain forward."""
    m, ref = zoo("resnet")
    x, targets = ref["x"], ref["targets"]
    name = candidate_layers(m)[layer]
    (a,), _ = exposed(m, x, [name], targets)
    weights = np.zeros(a.shape[:2])
    for i, k in np.ndindex(*a.shape[:2]):
        up = _up(a[i, k][None], m.input_size)[0]
        if up.max() > up.min():
            mask = ((up - up.min()) / (up.max() - up.min())).astype(np.float32)
            weights[i, k] = softmax(forward(m, x[i:i + 1] * mask).astype(np.float64))[0, targets[i]]
    expected = _relu_sum(weights[:, :, None, None], a)
    e = onnxplain.explain(m, x, "scorecam", target=targets.tolist(), layer=name, batch_size=7)
    assert rel_err(e.attributions, expected) <= 1e-4 and rel_err(e.maps, _up(expected, m.input_size)) <= 1e-4
    top = np.argsort(-a[0].var(axis=(1, 2)), kind="stable")[:5]  # channels=5: the 5 of largest variance only
    e = onnxplain.explain(m, x[:1], "scorecam", target=int(targets[0]), layer=name, channels=5)
    assert rel_err(e.attributions, _relu_sum(weights[:1, top, None, None], a[:1, top])) <= 1e-4


@pytest.mark.parametrize("layer", [-1, -2])
def test_ablationcam_equals_a_loop_over_channels(layer):
    """Each channel zeroed in a copy of A, fed alone to the graph cut at the layer: w_k = (y_c − y_c^k) / y_c."""
    m, ref = zoo("resnet")
    x, targets = ref["x"], ref["targets"]
    name = candidate_layers(m)[layer]
    (a,), _ = exposed(m, x, [name], targets)
    upper = m.session(Request(expose=(m.score,), keep_outputs=False, cut=(name,)))
    y = forward(m, x).astype(np.float64)[np.arange(3), targets]
    weights = np.zeros(a.shape[:2])
    for i, k in np.ndindex(*a.shape[:2]):
        ablated = a[i:i + 1].astype(np.float32)
        ablated[0, k] = 0
        weights[i, k] = (y[i] - upper.run([m.score], {name: ablated})[0][0, targets[i]]) / y[i]
    expected = _relu_sum(weights[:, :, None, None], a)
    e = onnxplain.explain(m, x, "ablationcam", target=targets.tolist(), layer=name, batch_size=5)
    assert rel_err(e.attributions, expected) <= 1e-4 and rel_err(e.maps, _up(expected, m.input_size)) <= 1e-4


def test_a_layer_that_a_residual_branch_bypasses_cannot_be_cut():
    """Inside a ResNet block the skip connection reaches the score past the layer: the upper graph would still need
    the image, which onnxruntime reported as a missing input."""
    m, ref = zoo("resnet")
    inner = "getitem_3"  # the first block's first convolution (BatchNorm folded), which its skip connection bypasses
    assert inner in dict(m.layers())
    for method in ("ablationcam", "evidence_hidden"):
        with pytest.raises(OnnxplainError) as e:
            onnxplain.explain(m, ref["x"][:1], method, layer=inner)
        assert f"cannot be cut at {inner}: its outputs also depend on 'input'" in str(e.value)
        assert "\n" not in str(e.value)


def test_layercam_fuses_layers_as_the_paper():
    """Each layer's LayerCAM scaled to tanh(2·M / max M), upsampled to the input, fused by the element-wise max."""
    m, ref = zoo("densenet")
    x, targets = ref["x"], ref["targets"]
    layers = candidate_layers(m)
    fused = []
    for name in layers:
        (a,), (g,) = exposed(m, x, [name], targets)
        cam = FORMULAS["layercam"](a, g)
        fused.append(_up(np.tanh(2 * cam / cam.max(axis=(1, 2), keepdims=True)), m.input_size))
    expected = np.max(fused, axis=0)
    e = onnxplain.explain(m, x, "layercam", target=targets.tolist(), layers=",".join(layers[:-1]))
    assert e.attributions.shape == e.maps.shape == (3, 32, 32) and rel_err(e.maps, expected) <= 1e-4
    assert rel_err(onnxplain.explain(m, x, "layercam", target=targets.tolist(), layers="blocks").maps, expected) <= 1e-4
    with pytest.raises(OnnxplainError, match="no tensor named 'nope'"):
        onnxplain.explain(m, x, "layercam", layers="nope")


@pytest.mark.parametrize("method", CAMS)
def test_several_targets_equal_single_target_runs(method):
    m, ref = zoo("resnet")
    x = ref["x"][:2]
    both = onnxplain.explain(m, x, method, target=[[3, 7]])
    assert both.maps.shape == (2, 2, 32, 32) and (both.targets == [3, 7]).all()
    for j, c in enumerate((3, 7)):
        single = onnxplain.explain(m, x, method, target=c)
        assert rel_err(both.maps[:, j], single.maps) <= 1e-6 and rel_err(both.scores[:, j], single.scores) <= 1e-6


@pytest.mark.parametrize("method", CAMS)
def test_every_cam_on_mobilenet(method, mobilenet):
    params = {"channels": 48} if method == "scorecam" else {}
    e = onnxplain.explain(mobilenet, IMAGES, method, **params)
    assert 281 <= e.targets[0] <= 285 and e.layer == "hardtanh_34"
    assert e.attributions.shape == (2, 7, 7) and e.maps.shape == (2, 224, 224)
    assert np.isfinite(e.maps).all() and e.maps.min() >= 0 and (e.maps.max(axis=(1, 2)) > 0).all()
    if method == "fem":
        assert (e.attributions.max(axis=(1, 2)) == 1).all()


def test_cli_runs_cams(tmp_path, capsys):
    runner = CliRunner()
    for args in ["-m", "gradcampp"], ["-m", "scorecam", "-p", "channels=16"], ["-m", "layercam", "-p", "layers=blocks"]:
        result = runner.invoke(cli, ["explain", str(MOBILENET), str(IMAGES[1]), "-o", str(tmp_path), *args],
                               catch_exceptions=False)
        assert result.exit_code == 0 and "espresso" in result.output, result.output
        assert np.load(tmp_path / f"coffee.{args[1]}.npy").shape == (224, 224)
    with pytest.raises(SystemExit):
        main(["explain", str(MOBILENET), str(IMAGES[0]), "-m", "scorecam", "-p", "channels=0", "-o", str(tmp_path)])
    assert capsys.readouterr().err.strip() == "error: scorecam: channels must be a whole number, at least 1"
    with pytest.raises(SystemExit):
        main(["export", str(MOBILENET), "-m", "ablationcam", "-o", str(tmp_path / "a.onnx")])
    assert "runs several passes" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["cam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "fem"])
def test_exported_cam_graph_equals_the_api(tmp_path, method):
    m, ref = zoo("inception")
    path = tmp_path / f"{method}.onnx"
    result = CliRunner().invoke(cli, ["export", str(MODELS / "zoo" / "inception_dynamo.onnx"), "-m", method,
                                      "--preset", "unit", "-o", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {m.input: ref["x"], "target": np.array([1, 4, 9])}
    maps, used = sess.run(["maps", "target_used"], feeds)
    e = onnxplain.explain(m, ref["x"], method, target=[1, 4, 9])
    assert (used == [1, 4, 9]).all() and rel_err(maps, e.maps) <= 1e-6
    maps, used = sess.run(["maps", "target_used"], {m.input: ref["x"]})
    e = onnxplain.explain(m, ref["x"], method)
    assert (used == e.targets).all() and rel_err(maps, e.maps) <= 1e-6


def test_exported_mobilenet_gradcampp_equals_the_api(tmp_path, mobilenet):
    path = tmp_path / "gradcampp.onnx"
    export(mobilenet, "gradcampp", path)
    x, _ = as_batch(mobilenet, IMAGES)
    maps, = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["maps"], {"input": x})
    assert rel_err(maps, onnxplain.explain(mobilenet, x, "gradcampp").maps) <= 1e-6


def _transposed_in(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` fed an N×H×W×C image that one Transpose makes N×C×H×W, as tf2onnx exports Keras models: the input
    is NHWC, every layer inside NCHW."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    inp = m.graph.input[0]
    n, c, h, w = inp.type.tensor_type.shape.dim
    nhwc = helper.make_tensor_value_info("image_nhwc", TensorProto.FLOAT, [n.dim_param or n.dim_value, h.dim_value,
                                                                          w.dim_value, c.dim_value])
    m.graph.node.insert(0, helper.make_node("Transpose", ["image_nhwc"], [inp.name], perm=[0, 3, 1, 2]))
    m.graph.input.remove(inp)
    m.graph.input.insert(0, nhwc)
    return m


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "sise"])
def test_layer_methods_read_nchw_layers_inside_an_nhwc_model(method):
    """A layer's channel axis comes from the ops around it, not from the input: with an NHWC input transposed once
    (tf2onnx), the layers are NCHW, and the maps equal those of the NCHW model. They were read as NHWC: the wrong
    default layer or a striped map (open_nsfw from tf2onnx)."""
    m, ref = zoo("resnet")
    wrapped = onnxplain.load(_transposed_in(m.proto), preprocessing="unit", device="cpu")
    assert wrapped.layout == "NHWC" and cam_layer(wrapped, None) == cam_layer(m, None)
    params = {"layer": cam_layer(m, None)} if method != "sise" else {}
    a = onnxplain.explain(m, ref["x"], method, target=ref["targets"].tolist(), **params)
    b = onnxplain.explain(wrapped, ref["x"].transpose(0, 2, 3, 1), method, target=ref["targets"].tolist(), **params)
    assert rel_err(b.maps, a.maps) <= 1e-5


def test_layercam_fuses_each_layer_in_its_own_layout():
    """LayerCAM fusing an NCHW block end with the NHWC image of a tf2onnx-style model reads each in its own layout,
    and equals the NCHW model's fusion of the same block end with its NCHW image. It read every layer in the first
    one's layout: the image's height was taken for its channels."""
    m, ref = zoo("resnet")
    wrapped = onnxplain.load(_transposed_in(m.proto), preprocessing="unit", device="cpu")
    layer, targets = cam_layer(m, None), ref["targets"].tolist()
    a = onnxplain.explain(m, ref["x"], "layercam", target=targets, layer=layer, layers=m.input)
    b = onnxplain.explain(wrapped, ref["x"].transpose(0, 2, 3, 1), "layercam", target=targets, layer=layer,
                          layers="image_nhwc")
    assert wrapped.layout_of("image_nhwc") == "NHWC" and wrapped.layout_of(layer) == "NCHW"
    assert rel_err(b.maps, a.maps) <= 1e-5
