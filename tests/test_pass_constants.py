"""The constants pass: weights held by Constant nodes (Paddle) or listed among the graph inputs (IR 3, Caffe2's
conversions) are plain initializers at load."""
import numpy as np
import onnx
from conftest import rel_err
from onnx import helper
from test_load import tiny_cnn

import onnxplain

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def as_constant_nodes(model):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    for node in reversed(nodes):
        model.graph.node.insert(0, node)
    return model


def as_ir3(model):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    listed = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in model.graph.initializer]
    model.graph.input.extend(listed)
    model.ir_version = 3
    return model


def test_weights_become_initializers():
    """The same maps as from the model with initializers; with the weights listed as inputs (IR 3), saliency failed
    with onnxruntime's 'Invalid input name: target' and EigenCAM with a TypeError."""
    plain = onnxplain.load(tiny_cnn(), preprocessing="unit", device="cpu")
    for variant, note in [(as_constant_nodes, "3 Constant nodes made initializers"),
                          (as_ir3, "3 initializers removed from the graph inputs")]:
        m = onnxplain.load(variant(tiny_cnn()), preprocessing="unit", device="cpu")
        assert dict(m.normalised)["constants"] == note
        assert not {i.name for i in m.proto.graph.input} & {"w", "fc", "shape"}
        for method in ("saliency", "eigencam"):
            expected = onnxplain.explain(plain, X, method, target=[0, 1]).maps
            assert rel_err(onnxplain.explain(m, X, method, target=[0, 1]).maps, expected) < 1e-6


def test_passes_that_act_share_one_copy_and_leave_the_given_model_alone(monkeypatch):
    """A model that three passes change (weights in Constant nodes, a uint8 image input, a declared -1 dim) is
    copied once by them all, and the caller's model is unchanged; outside `normalise` a pass copies as before."""
    from onnx import TensorProto

    from onnxplain.passes import normalise
    model = as_constant_nodes(tiny_cnn(reshape_batch=False))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    model.graph.node.insert(0, helper.make_node("Cast", ["image"], ["float_image"], to=TensorProto.FLOAT))
    for node in model.graph.node[1:]:
        node.input[:] = ["float_image" if i == "image" else i for i in node.input]
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = -1
    given = model.SerializeToString()
    copies, parse = [], onnx.ModelProto.FromString
    monkeypatch.setattr(onnx.ModelProto, "FromString", staticmethod(lambda b: copies.append(1) or parse(b)))
    normalised, notes = normalise(model)
    assert [name for name, _ in notes] == ["dims", "constants", "input"] and len(copies) == 1
    assert model.SerializeToString() == given and normalised is not model
    assert not [n for n in normalised.graph.node if n.op_type == "Constant"]
