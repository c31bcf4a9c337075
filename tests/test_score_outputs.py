"""Class scores that are not one N×classes output (issue 13, class 2): Caffe-style N×C×1×1 heads, a symbolic class
dim, several outputs (chosen by output=, listed in the error)."""
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import rel_err
from onnx import TensorProto, helper, numpy_helper
from onnxplain_cli.main import cli

import onnxplain
from onnxplain import OnnxplainError
from onnxplain.explain import forward
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request

RNG = np.random.default_rng(3)
X = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)


def caffe_head(softmax=False, opset=17, classes=10, extra=()):
    """image → Conv → Tanh → 1×1 Conv to `classes` channels → GlobalAveragePool (→ Softmax over channels): the
    score is N×classes×1×1, with no Flatten. `extra`: more (name, node, dims) outputs."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    head = rng.standard_normal((10, 6, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "head"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["pooled"])]
    out = "pooled"
    if softmax == "converted":  # onnx's version converter's form of an opset-9 Softmax over channels
        nodes += [helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
                  helper.make_node("Softmax", ["flat"], ["p2"], axis=-1),
                  helper.make_node("Reshape", ["p2", "shape"], ["prob"])]
        out = "prob"
    elif softmax:
        nodes.append(helper.make_node("Softmax", ["pooled"], ["prob"], axis=1))
        out = "prob"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, classes, 1, 1])]
    for name, node, dims in extra:
        nodes.append(node)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(nodes, "caffe", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(head, "head"),
                                        numpy_helper.from_array(np.array([1, 10, 1, 1]), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _logit(proto, x, c, name="pooled"):
    """Class c's logit per image, from onnxruntime running the original file (the N×C×1×1 tensor exposed)."""
    proto = type(proto).FromString(proto.SerializeToString())
    if name not in [o.name for o in proto.graph.output]:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], {"image": xi[None]})[0] for xi in x])[:, c, 0, 0]


def input_gradient(m, x, c):
    """∂y_c/∂x from a plain gradient session (cotangent: the one-hot of class c)."""
    sess = m.session(Request(differentiate=(m.score,), wrt=(m.input,)))
    cotangent = np.eye(m.num_classes, dtype=np.float32)[[c] * len(x)]
    return sess.run([GRAD.format(m.input)], {m.input: x, COTANGENT.format(m.score): cotangent})[0]


@pytest.mark.parametrize("softmax,opset", [(False, 17), (True, 17), (True, 11), ("converted", 17)])
def test_nc11_heads_are_flattened_and_their_logits_differentiated(softmax, opset):
    proto = caffe_head(softmax, opset)
    m = onnxplain.load(proto, preprocessing="unit")
    assert (m.num_classes, m.softmax_output) == (10, bool(softmax)) and "flattened" in dict(m.normalised)["head"]
    logits = forward(m, X)  # (the methods' heads need opset 13 for Resize at the time of writing)
    assert logits.shape == (2, 10) and rel_err(logits[:, 4], _logit(proto, X, 4)) < 1e-5
    v = RNG.standard_normal(X.shape).astype(np.float32)
    grad = input_gradient(m, X, 4)
    eps = 3e-3
    fd = (_logit(proto, X + eps * v, 4) - _logit(proto, X - eps * v, 4)) / (2 * eps)
    assert rel_err((grad * v).sum(axis=(1, 2, 3)), fd) < 1e-3
    if opset >= 13:
        e = onnxplain.explain(m, X, "occlusion", target=4, window=4, stride=4, score="probability")
        assert e.maps.shape == (2, 8, 8) and rel_err(e.logits, logits) < 1e-6


def test_symbolic_class_dim_is_counted_by_one_run():
    proto = caffe_head()
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    m = onnxplain.load(proto, preprocessing="unit")
    assert m.num_classes == 10 and "10 classes from one run" in m.score_why
    e = onnxplain.explain(m, X, "gradcam")
    assert e.targets.tolist() == e.logits.argmax(axis=1).tolist() and e.maps.shape == (2, 8, 8)
    lrp = onnxplain.explain(m, X, "lrp", composite="epsilon")  # its one-hot reads the class count in the graph
    assert lrp.attributions.shape == X.shape


def test_several_outputs_are_listed_chosen_by_name_and_the_softmax_one_by_default():
    features = ("features", helper.make_node("Flatten", ["r"], ["features"]), [1, 384])
    proto = caffe_head(extra=[features])
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(proto, preprocessing="unit")
    message = str(e.value)
    assert "several N×classes outputs" in message and "features[1, 384]" in message and "--output" in message
    m = onnxplain.load(proto, preprocessing="unit", output="pooled")
    assert (m.output, m.num_classes, m.score_why) == ("pooled", 10, "chosen by output=")
    with pytest.raises(OnnxplainError, match=r"no output 'nope'; its outputs: pooled\[1, 10\], features"):
        onnxplain.load(proto, preprocessing="unit", output="nope")
    probs = ("probs", helper.make_node("Softmax", ["pooled"], ["probs"], axis=1), [1, 10, 1, 1])
    m = onnxplain.load(caffe_head(extra=[probs]), preprocessing="unit")
    assert (m.output, m.score, m.score_why) == ("probs", "pooled", "the N×classes output behind a Softmax")


def test_inspect_and_explain_take_output(tmp_path):
    import onnx
    features = ("features", helper.make_node("Flatten", ["r"], ["features"]), [1, 384])
    onnx.save(caffe_head(extra=[features]), tmp_path / "two.onnx")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "two.onnx"), "--preset", "unit", "--output", "pooled"])
    assert result.exit_code == 0, result.output
    assert "output     pooled  10 classes (chosen by output=)" in result.output
    assert "  pooled[1, 10]  class scores (logits): class targets" in result.output
    assert "  features[1, 384]  a vector per image (scores or an embedding): output targets" in result.output
    assert "'pooled' [1, 10, 1, 1] flattened to N×classes" in result.output


def test_fully_convolutional_classifier_at_its_size():
    """MTCNN P-Net's form: a free-size image to an N×2×H'×W' map of face/non-face scores (a Softmax over channels),
    1×1 only at its training size. With that size in the preprocessing, the input is fixed to it (said in inspect),
    the head flattened, and class c's gradient is the Conv's kernel for c, by definition; at another size it stays
    free (and is read as a map)."""
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["s"]), helper.make_node("Softmax", ["s"], ["prob"], axis=1)], "fcn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2, "H2", "W2"])], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    at5 = onnxplain.load(proto, device="cpu", preprocessing={"preset": "unit", "size": [5, 5]})
    assert "size" not in dict(at5.normalised) and not at5.fixed_size  # 3×3 maps there: not a classifier
    m = onnxplain.load(proto, device="cpu", preprocessing={"preset": "unit", "size": [3, 3]})
    assert m.num_classes == 2 and m.fixed_size and "fixed to 3x3" in dict(m.normalised)["size"]
    x = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    for c in (0, 1):
        np.testing.assert_allclose(input_gradient(m, x, c), np.broadcast_to(w[c], x.shape), rtol=1e-6)
    np.testing.assert_allclose(forward(m, x), np.einsum("nchw,kchw->nk", x, w), rtol=1e-5, atol=1e-5)
