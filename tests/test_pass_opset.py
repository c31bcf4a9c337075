"""The opset pass: old exports are converted to the opset the gradient rules need at load, and only when the
conversion is proven; opsets newer than onnx and onnxruntime know are refused at load."""
import numpy as np
import onnx
import pytest
from conftest import rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain import OnnxplainError, UnsupportedOpError
from onnxplain.passes import opset as opset_pass
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request

X = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)


def pooled_cnn(opset, ir3=False):
    """image → Conv → Relu → MaxPool 3×3 stride 2 (overlapping windows) → Reshape([1, 64]) → Gemm, batch 1,
    as an opset-`opset` exporter writes it; `ir3`: initializers also listed as graph inputs, as Caffe2's
    conversions do."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 64)).astype(np.float32) / 8, "fc"),
             numpy_helper.from_array(np.array([1, 64]), "shape"),
             numpy_helper.from_array(np.zeros(5, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], name="pool"),
             helper.make_node("Reshape", ["p", "shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc", "b"], ["logits"], transB=1, name="fc")]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 9, 9])]
    if ir3:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(nodes, "pooled", inputs, [helper.make_tensor_value_info("logits", 1, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=3 if ir3 else 7)


def input_gradient(m, u):
    (grad,) = m.session(Request(differentiate=(m.score,), wrt=(m.input,))).run(
        [GRAD.format(m.input)], {m.input: X, COTANGENT.format(m.score): u})
    return grad


@pytest.mark.parametrize("opset, ir3", [(7, False), (9, True), (11, False), (15, False)])
def test_old_opset_is_converted_at_load_and_differentiated(opset, ir3):
    """Opsets 7-15 (and Caffe2's IR-3 listing of weights as inputs): the MaxPool gradient, which needs opset 16,
    equals the one of the same graph exported at opset 17; on main the converter failed on our rewritten graph."""
    u = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    old = onnxplain.load(pooled_cnn(opset, ir3), preprocessing="unit", device="cpu")
    assert dict(old.normalised)["opset"] == (f"opset {opset} converted to 16 for the gradients of MaxPool "
                                             "(outputs checked)")
    assert old.opset == 16
    new = onnxplain.load(pooled_cnn(17), preprocessing="unit", device="cpu")
    assert rel_err(input_gradient(old, u), input_gradient(new, u)) < 1e-6
    assert np.abs(input_gradient(old, u)).max() > 0


def test_unproven_conversion_keeps_the_original(monkeypatch):
    """A conversion whose outputs differ from the original's is not used: the opset-11 model is kept, forward-only
    and black-box methods run on it, and the MaxPool gradient fails in one line naming the op, node and opset."""
    real = opset_pass.version_converter.convert_version

    def wrong(model, target):  # a converter that changes what the model computes
        converted = real(model, target)
        w = next(t for t in converted.graph.initializer if t.name == "w")
        w.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(w), "w"))
        return converted

    monkeypatch.setattr(opset_pass.version_converter, "convert_version", wrong)
    m = onnxplain.load(pooled_cnn(11), preprocessing="unit", device="cpu")
    assert m.opset == 11 and dict(m.normalised)["opset"].startswith(
        "opset 11 kept, converting it to opset 16 failed (the converted model's outputs differ")
    assert np.isfinite(onnxplain.explain(m, X, "eigencam").maps).all()
    assert np.isfinite(onnxplain.explain(m, X, "occlusion", window=3, stride=3).maps).all()
    with pytest.raises(UnsupportedOpError, match=r"the gradient needs opset 16.* for MaxPool \(node 'pool', "
                                                 r"opset 11\)") as e:
        onnxplain.explain(m, X, "saliency")
    assert "\n" not in str(e.value)


def test_legacy_torch_export_at_old_opsets(tmp_path):
    """torch's TorchScript exporter at opsets 9 and 11 (max pooling with overlapping windows, BatchNorm, a flatten):
    the input gradient equals torch autograd's."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
                        nn.Linear(36, 5)).eval()
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 9, 9)).astype(np.float32))
    u = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    x.requires_grad_()
    (net(x) * torch.from_numpy(u)).sum().backward()
    for opset in (9, 11):
        path = tmp_path / f"net{opset}.onnx"
        torch.onnx.export(net, (torch.zeros(1, 3, 9, 9),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"])
        m = onnxplain.load(path, preprocessing="unit", device="cpu")
        assert onnx.load(str(path)).opset_import[0].version == opset and m.opset == 16
        (grad,) = m.session(Request(differentiate=(m.score,), wrt=(m.input,))).run(
            [GRAD.format(m.input)], {m.input: x.detach().numpy(), COTANGENT.format(m.score): u})
        assert rel_err(grad, x.grad.numpy()) < 1e-5


def test_opset_newer_than_the_runtime_is_refused_at_load():
    """`inspect` loaded an opset-999 model that `explain` then refused at its first session."""
    with pytest.raises(OnnxplainError, match=r"imports opset 999, newer than .* support \(opset \d+ at most\)"):
        onnxplain.load(pooled_cnn(999), preprocessing="unit")
