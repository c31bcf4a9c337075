"""Input sizes and shapes: models with dynamic height and width are explained at the size given or the batch's own,
and graphs whose shapes ONNX's inference loses get them from a probe run; gradients checked against torch autograd."""
import io

import numpy as np
import onnx
import pytest
from conftest import IMAGES, rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(0)


def _net():
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()


@pytest.fixture(scope="module")
def dynamic():
    """A tiny CNN exported with dynamic batch, height and width, and the torch module it came from."""
    net, f = _net(), io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), f, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue()), net.double()


def autograd_x_grad(net, x, layout="NCHW"):
    """x ⊙ ∂y_c/∂x for each image's top-1 class c, in float64."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = net(t if layout == "NCHW" else t.permute(0, 3, 1, 2))
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    return (t * t.grad).detach().numpy()


def test_dynamic_size_from_option_or_batch(dynamic):
    proto, net = dynamic
    given = onnxplain.load(proto, device="cpu", preprocessing={"size": [8, 10]})
    unsized = onnxplain.load(proto, device="cpu")
    for m, size in ((given, (12, 12)), (unsized, (8, 10))):  # the batch's own size, whatever --size says
        x = RNG.random((2, 3, *size), np.float32)
        e = onnxplain.explain(m, x, "gradxinput")
        assert rel_err(e.attributions, autograd_x_grad(net, x)) <= 1e-4
    cam = onnxplain.explain(unsized, x, "gradcam")
    assert cam.layer == given.layers()[-1][0] and cam.maps.shape == (2, 8, 10)
    for size, half in (((12, 12), (6, 6)), ((8, 10), (4, 5))):  # listed per size
        assert {s[2:] for _, s in given.at_size(size).layers()} == {size, half}


def test_dynamic_size_needs_a_size_for_images(dynamic):
    m = onnxplain.load(dynamic[0], device="cpu")
    with pytest.raises(OnnxplainError, match="--size H W"):
        onnxplain.explain(m, IMAGES[:1], "saliency")
    assert onnxplain.explain(m.at_size((16, 16)), IMAGES[:1], "saliency").maps.shape == (1, 16, 16)


def test_fixed_size_refuses_other_sizes(dynamic):
    m = onnxplain.load(dynamic[0], device="cpu", preprocessing={"size": [8, 8]})
    m = onnxplain.load(m.graph, device="cpu")  # the graph at 8×8: a model with a fixed size
    with pytest.raises(OnnxplainError, match="takes N×3×8×8"):
        onnxplain.explain(m, RNG.random((1, 3, 8, 10), np.float32), "saliency")


def _lost_shapes_model():
    """NHWC input, transposed to NCHW; a nearest Resize to half the size computed from Shape in float (ONNX's shape
    inference loses every later shape); a squeeze-excite gate; a 2×2 AveragePool; back to NHWC for the head.
    Returns the model and its torch twin (float64)."""
    w1, w2 = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=(5, 4, 3, 3))
    w3, w4 = RNG.normal(size=(5, 5, 1, 1)), RNG.normal(size=(3, 5))
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in dict(w1=w1, w2=w2, w3=w3, w4=w4).items()]
    inits += [numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    inits += [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in dict(zero=0, two=2, four=4).items()]
    node = helper.make_node
    nodes = [
        node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        node("Conv", ["xt", "w1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["a"]),
        node("Shape", ["a"], ["s"]), node("Slice", ["s", "two", "four"], ["hw"]),
        node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT), node("Mul", ["hwf", "half"], ["hwh"]),
        node("Cast", ["hwh"], ["hwi"], to=TensorProto.INT64), node("Slice", ["s", "zero", "two"], ["nc"]),
        node("Concat", ["nc", "hwi"], ["sizes"], axis=0),
        node("Resize", ["a", "", "", "sizes"], ["r"], mode="nearest", coordinate_transformation_mode="asymmetric",
             nearest_mode="floor"),
        node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]), node("Relu", ["c2"], ["b"]),
        node("GlobalAveragePool", ["b"], ["se"]), node("Conv", ["se", "w3"], ["e"]), node("Sigmoid", ["e"], ["gate"]),
        node("Mul", ["b", "gate"], ["bg"]),
        node("AveragePool", ["bg"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Transpose", ["p"], ["pt"], perm=[0, 2, 3, 1]), node("ReduceMean", ["pt"], ["m"], axes=[1, 2],
                                                                  keepdims=0),
        node("Gemm", ["m", "w4"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "lost", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    f = torch.nn.functional
    t1, t2, t3, t4 = (torch.tensor(w) for w in (w1, w2, w3, w4))

    def twin(x):  # NCHW float64
        b = torch.relu(f.conv2d(f.interpolate(torch.relu(f.conv2d(x, t1, padding=1)), scale_factor=0.5), t2,
                                padding=1))
        b = b * torch.sigmoid(f.conv2d(b.mean((2, 3), keepdim=True), t3))
        return f.avg_pool2d(b, 2).mean((2, 3)) @ t4.T
    return model, twin


def test_shapes_lost_by_inference_come_from_a_probe():
    model, twin = _lost_shapes_model()
    m = onnxplain.load(model, device="cpu")
    assert m.shapes_note and "probe run" in m.shapes_note
    x = RNG.random((3, 8, 8, 3), np.float32)
    e = onnxplain.explain(m, x, "gradxinput")
    assert rel_err(e.attributions, autograd_x_grad(twin, x, "NHWC")) <= 1e-4
    assert onnxplain.explain(m, x, "gradcam").layer == "pt"  # the last tensor with spatial extent
    assert dict(m.layers())["pt"] == (None, 2, 2, 5)  # its shape, which only the probe tells


def test_tf_same_padding_computed_at_run_time():
    """timm's Conv2dSame pads by amounts computed from the input's size (Shape, Div, Cast in the export): shape
    inference loses the conv's input size; the probe tells it, and the pads fold to constants."""
    import math
    nn, f = torch.nn, torch.nn.functional

    class SameConv(nn.Conv2d):
        def forward(self, x):
            (ph, pw) = (max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0) for n in x.size()[-2:])
            return super().forward(f.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]))
    torch.manual_seed(0)
    net = nn.Sequential(SameConv(3, 4, 3, stride=2), nn.ReLU(), SameConv(4, 5, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 9, 11), buffer, dynamo=False, input_names=["x"], output_names=["y"])
    m = onnxplain.load(onnx.load_from_string(buffer.getvalue()), device="cpu")
    x = RNG.random((2, 3, 9, 11), np.float32)
    assert rel_err(onnxplain.explain(m, x, "gradxinput").attributions, autograd_x_grad(net.double(), x)) <= 1e-4


def test_resize_to_a_computed_size_keeps_the_batch():
    """GhostNetV2's gate: a pooled branch resized back to its trunk's size, the sizes sliced from Shape at run time.
    ONNX's inference knows the resized shape but names its batch afresh; the probe tells it is the batch, which the
    Resize rule needs to see that the batch axis is not resized."""
    nn, f = torch.nn, torch.nn.functional

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.branch, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Linear(4, 3)

        def forward(self, x):
            out = self.trunk(x)
            gate = torch.sigmoid(f.avg_pool2d(self.branch(x), 2))
            out = out * f.interpolate(gate, size=(out.shape[-2], out.shape[-1]), mode="nearest")
            return self.head(out.mean((2, 3)))
    torch.manual_seed(0)
    net = Gated().eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(2, 3, 8, 6), buffer, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    m = onnxplain.load(onnx.load_from_string(buffer.getvalue()), device="cpu")
    x = RNG.random((2, 3, 8, 6), np.float32)
    assert rel_err(onnxplain.explain(m, x, "gradxinput").attributions, autograd_x_grad(net.double(), x)) <= 1e-4


def test_inspect_says_where_shapes_came_from_and_explain_asks_for_a_size(dynamic, tmp_path, capsys):
    from test_cli import fail, run
    onnx.save(_lost_shapes_model()[0], tmp_path / "lost.onnx")
    assert "probe run of the model at 8x8" in run("inspect", tmp_path / "lost.onnx", "--preset", "unit")
    onnx.save(dynamic[0], tmp_path / "dynamic.onnx")
    out = run("inspect", tmp_path / "dynamic.onnx", "--preset", "unit")
    assert "any size  (height and width dynamic)" in out and "give the input size (--size H W)" in out
    assert "4/Relu_output_0" in run("inspect", tmp_path / "dynamic.onnx", "--preset", "unit", "--size", 16, 12)
    err = fail(capsys, "explain", tmp_path / "dynamic.onnx", IMAGES[0], "--device", "cpu", "-o", tmp_path / "out")
    assert "has no fixed height and width" in err


def test_shapes_are_inferred_once_and_the_probe_builds_one_session(dynamic, monkeypatch):
    """Load, the CAM layer search and the first gradient graph share one shape inference of the model at its size
    (three where the probe declares shapes: the graph as exported is inferred and probed, then folded and inferred
    again, as each graph was built before); the probe runs its batches 1 and 2 through one session, exposing only
    the shapes inference left open."""
    from types import SimpleNamespace

    from onnxplain.passes import probe
    from onnxplain.passes.opset import highest_opset
    highest_opset()  # (its probes of onnxruntime's opsets run once per process)
    model, twin = _lost_shapes_model()
    inferred, sessions = [], []
    infer, session = onnx.shape_inference.infer_shapes, probe.ort.InferenceSession
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: inferred.append(1) or infer(*a, **k))
    monkeypatch.setattr(probe, "ort", SimpleNamespace(InferenceSession=lambda b, **k: sessions.append(
        onnx.load_from_string(b)) or session(b, **k)))
    m = onnxplain.load(model, device="cpu")
    x = RNG.random((1, 8, 8, 3), np.float32)
    e = onnxplain.explain(m, x, "gradcam")
    assert len(inferred) == 3 and e.layer == "pt"
    assert len(sessions) == 1 and 0 < len(sessions[0].graph.output) - 1 < len(sessions[0].graph.node)
    assert rel_err(onnxplain.explain(m, x, "gradxinput").attributions, autograd_x_grad(twin, x, "NHWC")) <= 1e-4
    inferred.clear()
    d = onnxplain.load(dynamic[0], device="cpu", preprocessing="unit")
    onnxplain.explain(d, RNG.random((1, 3, 8, 8), np.float32), "gradcam")
    assert len(inferred) == 1 and d.at_size((8, 8)).shapes_note is None and not sessions[1:]

