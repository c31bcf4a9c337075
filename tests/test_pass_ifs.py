"""Control flow: If nodes on a constant condition are folded at load (tf2onnx 1.x wraps every Keras BatchNorm in an
If on the learning-phase flag, stored as False); the batch is made dynamic inside subgraphs too; and a gradient
through a control-flow node names it."""
import numpy as np
import pytest
from conftest import rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain import UnsupportedOpError

X = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
RNG = np.random.default_rng(1)
WEIGHTS = [numpy_helper.from_array(a, n) for n, a in [
    ("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
    ("fc", RNG.standard_normal((10, 256)).astype(np.float32) / 16),
    ("shape", np.array([1, 256])),
    ("scale", RNG.uniform(0.5, 2, 4).astype(np.float32)), ("bias", RNG.standard_normal(4).astype(np.float32)),
    ("mean", RNG.standard_normal(4).astype(np.float32)), ("var", RNG.uniform(0.5, 2, 4).astype(np.float32)),
    ("learning_phase", np.array(False)), ("zero", np.array(0, np.float32))]]
BN = ["scale", "bias", "mean", "var"]


def _branch(name, nodes, out):
    """A branch declaring batch 1, as tf2onnx writes them; the same inner names in every If."""
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])])


def keras_cnn(wrapped=True, condition="learning_phase"):
    """image → Conv → BatchNorm → Relu → BatchNorm → Reshape([1, 256]) → Gemm, batch 1; `wrapped`: each
    BatchNorm inside an If on `condition`, whose then-branch (training) differs and whose else-branch is the
    BatchNorm."""
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    if condition != "learning_phase":  # a condition computed from the image: the If stays
        nodes += [helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
                  helper.make_node("Greater", ["peak", "zero"], [condition])]
    for i, (x, y) in enumerate([("c", "b1"), ("r", "b2")]):
        bn = helper.make_node("BatchNormalization", [x, *BN], ["bn" if wrapped else y])
        if wrapped:
            train = _branch("train", [helper.make_node("Relu", [x], ["bn"])], "bn")
            nodes.append(helper.make_node("If", [condition], [y], name=f"bn{i}/cond", then_branch=train,
                                          else_branch=_branch("infer", [bn], "bn")))
        else:
            nodes.append(bn)
        if i == 0:
            nodes.append(helper.make_node("Relu", ["b1"], ["r"], name="relu"))
    nodes += [helper.make_node("Reshape", ["b2", "shape"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "keras", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], WEIGHTS)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_ifs_are_folded_into_their_taken_branch():
    """Saliency and Grad-CAM equal the unwrapped model's; on main the gradient said 'the score does not depend on
    tensor image' (false) and no CAM layer was found."""
    plain = onnxplain.load(keras_cnn(wrapped=False), preprocessing="unit", device="cpu")
    m = onnxplain.load(keras_cnn(), preprocessing="unit", device="cpu")
    assert dict(m.normalised)["ifs"] == "2 If nodes on a constant condition folded into the branch taken"
    assert not any(n.op_type == "If" for n in m.proto.graph.node)
    assert [name for name, _ in m.layers()] == ["c", "bn0/cond/bn", "b1", "r", "bn1/cond/bn", "b2"]
    for method, layer in [("saliency", None), ("gradcam", "b2")]:
        expected = onnxplain.explain(plain, X, method, layer=layer).maps
        assert rel_err(onnxplain.explain(m, X, method, layer=layer).maps, expected) < 1e-6


def test_ifs_on_the_input_keep_a_dynamic_batch_and_name_themselves():
    """An If on a condition computed from the image stays: occlusion runs a batch of 3 through its branches, which
    declare batch 1 (onnxruntime failed 'while running If node'), and a gradient names the If, not 'the score does
    not depend on tensor image'."""
    plain = onnxplain.load(keras_cnn(wrapped=False), preprocessing="unit", device="cpu")
    m = onnxplain.load(keras_cnn(condition="positive"), preprocessing="unit", device="cpu")
    x = np.abs(X)  # positive images: the If takes its training branch, a Relu
    assert "ifs" not in dict(m.normalised)
    assert onnxplain.explain(m, x, "occlusion", window=4, stride=4).maps.shape == (3, 8, 8)
    assert not np.allclose(onnxplain.explain(m, x, "occlusion", window=4, stride=4).maps,
                           onnxplain.explain(plain, x, "occlusion", window=4, stride=4).maps)
    with pytest.raises(UnsupportedOpError, match=r"^no gradient through the subgraphs of control flow for If "
                                                 r"\(node 'bn1/cond', opset 17\)") as e:
        onnxplain.explain(m, x, "saliency")
    assert "\n" not in str(e.value)
