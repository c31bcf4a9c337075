"""Shape and data-movement VJP rules against finite differences (gradcheck.py), and a symbolic-batch check."""
import numpy as np
import onnxruntime as ort
import pytest
from gradcheck import check_vjp, exact_vjp, one_node_model
from onnx import TensorProto

from onnxplain.errors import OnnxplainError
from onnxplain.rewrite.graph import Request, build

R = np.random.default_rng(1)
BIG = np.iinfo(np.int64).max


def rand(*shape):
    return R.standard_normal(shape)


def ints(*values):
    return np.array(values, np.int64)


@pytest.mark.parametrize("op, shape, attrs, consts, opset", [
    ("Reshape", (2, 3, 4), {}, {"shape": ints(4, -1)}, 13), ("Reshape", (2, 3, 4), {}, {"shape": ints(0, 12)}, 13),
    ("Flatten", (2, 3, 4), {"axis": 0}, {}, 11), ("Flatten", (2, 3, 4), {}, {}, 13),
    ("Flatten", (2, 3, 4), {"axis": -1}, {}, 13),
    ("Squeeze", (2, 1, 3, 1), {"axes": [1]}, {}, 11), ("Squeeze", (2, 1, 3, 1), {}, {"axes": ints(-1)}, 13),
    ("Squeeze", (2, 1, 3, 1), {}, {}, 13),
    ("Unsqueeze", (2, 3), {"axes": [0, 3]}, {}, 11), ("Unsqueeze", (2, 3), {}, {"axes": ints(-1, 1)}, 13),
    ("Transpose", (2, 3, 4), {"perm": [2, 0, 1]}, {}, 13), ("Transpose", (2, 3, 4), {}, {}, 13),
    ("Expand", (3, 1), {}, {"shape": ints(2, 3, 4)}, 13), ("Expand", (2, 3), {}, {"shape": ints(3, 1, 1)}, 13),
    ("Tile", (2, 3), {}, {"repeats": ints(2, 1)}, 13), ("Tile", (2, 1, 3), {}, {"repeats": ints(2, 3, 2)}, 13),
    ("Identity", (2, 3), {}, {}, 13), ("Dropout", (2, 3), {"ratio": 0.3}, {}, 7),
    ("Dropout", (2, 3), {}, {"ratio": np.array(0.3)}, 13), ("Cast", (2, 3), {"to": TensorProto.DOUBLE}, {}, 13),
])
def test_unary(op, shape, attrs, consts, opset):
    check_vjp(op, {"x": rand(*shape)}, attrs, consts, opset=opset)


def test_dropout_mask_and_cast_back():
    """Dropout's mask output is off the path; a float32 Cast of a float64 input sends a float64 gradient back."""
    x, u = rand(2, 3), rand(2, 3).astype(np.float32)
    model = one_node_model("Dropout", {"x": x}, n_outputs=2, opset=13)
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.BOOL
    np.testing.assert_array_equal(exact_vjp(model, {"x": x}, {"y0": u.astype(x.dtype)}, ["x"])[0], u)
    for op, attrs, consts in (("Cast", {"to": TensorProto.FLOAT}, {}),
                              ("CastLike", {}, {"like": np.zeros(1, np.float32)})):
        model = one_node_model(op, {"x": x}, attrs, consts, opset=15, dtype=np.float32)
        (dx,) = exact_vjp(model, {"x": x}, {"y0": u}, ["x"])
        assert dx.dtype == np.float64
        np.testing.assert_array_equal(dx, u)


@pytest.mark.parametrize("shapes, axis", [([(2, 3, 4), (2, 1, 4), (2, 2, 4)], 1), ([(2, 3), (2, 1)], -1),
                                          ([(1, 3), (2, 3)], 0), ([(2, 3)], 1)])
@pytest.mark.parametrize("opset", [11, 13])
def test_concat(shapes, axis, opset):
    check_vjp("Concat", {f"x{i}": rand(*s) for i, s in enumerate(shapes)}, {"axis": axis}, opset=opset)


@pytest.mark.parametrize("opset, attrs, consts, n", [
    (11, {"split": [1, 2, 3]}, {}, 3), (13, {"axis": 1}, {"split": ints(1, 3)}, 2), (13, {}, {}, 3),
    (18, {"num_outputs": 3}, {}, 3),
])
def test_split(opset, attrs, consts, n):
    check_vjp("Split", {"x": rand(6, 4)}, attrs, consts, n_outputs=n, opset=opset)


def test_split_some_outputs_off_path():
    x, u = rand(6, 4), rand(2, 4)
    model = one_node_model("Split", {"x": x}, n_outputs=3, opset=13)
    (dx,) = exact_vjp(model, {"x": x}, {"y1": u}, ["x"])
    np.testing.assert_array_equal(dx, np.concatenate([np.zeros((2, 4)), u, np.zeros((2, 4))]))


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([1], [2], [0], None), ([-4], [-2], [1], None), ([0, 2], [BIG, -1], None, None), ([4], [0], [2], [-1]),
    ([-1], [-BIG], [1], [-2]), ([0, 1], [100, 6], [2, 0], [2, 1]), ([1, 5, -2], [3, 0, 0], [-3, 1, 2], [1, -3, -1]),
])
@pytest.mark.parametrize("runtime_bounds", [False, True])
def test_slice(starts, ends, axes, steps, runtime_bounds):
    """Bounds (negative, clamped, steps above 1 and below 0) as constants, and as graph inputs: computed at run time,
    as legacy exports of Swin or PiT compute them from shapes."""
    bounds = {"starts": ints(*starts), "ends": ints(*ends)}
    bounds.update({k: ints(*v) for k, v in (("axes", axes), ("steps", steps)) if v is not None})
    order = ["x", "starts", "ends"] + (["axes"] if axes else [""] * (steps is not None)) + (["steps"] if steps else [])
    inputs = {"x": rand(4, 5, 6), **(bounds if runtime_bounds else {})}
    check_vjp("Slice", inputs, constants={} if runtime_bounds else bounds, order=order, opset=13)


def test_slice_runtime_bounds_int32_and_symbolic_size():
    """int32 bounds from a Shape-computed offset, on an input whose sliced axis is symbolic."""
    x = rand(3, 7)
    model = one_node_model("Slice", {"x": x, "starts": np.array([-5], np.int32), "ends": np.array([6], np.int32),
                                     "axes": np.array([1], np.int32)}, opset=13)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "w"
    u = rand(3, 4)
    (dx,) = exact_vjp(model, {"x": x, "starts": np.array([-5], np.int32), "ends": np.array([6], np.int32),
                              "axes": np.array([1], np.int32)}, {"y0": u}, ["x"])
    expected = np.zeros_like(x)
    expected[:, 2:6] = u
    np.testing.assert_array_equal(dx, expected)


def test_slice_attribute_form():
    check_vjp("Slice", {"x": rand(4, 5)}, {"starts": [1, -3], "ends": [3, BIG], "axes": [0, 1]}, opset=9)


@pytest.mark.parametrize("axis, indices", [(0, ints(2, 0, 2)), (1, np.array(3)), (-1, ints([0, 2], [-1, 1])),
                                           (2, ints([[1]]))])
@pytest.mark.parametrize("runtime_indices", [False, True])
def test_gather(axis, indices, runtime_indices):
    inputs, consts = ({"x": rand(4, 5, 3)}, {"indices": indices})
    if runtime_indices:
        inputs, consts = dict(inputs, indices=indices.astype(np.int32)), {}
    check_vjp("Gather", inputs, {"axis": axis}, consts)


@pytest.mark.parametrize("mode, pads, opset", [
    ("constant", [0, 1, 2, 1, 0, 1], 13), ("constant", [0, -1, 1, 0, 1, -2], 13), ("reflect", [0, 1, 2, 0, 2, 1], 13),
    ("edge", [1, 0, 3, 0, 2, 1], 13), ("wrap", [0, 2, 4, 1, 0, 5], 19),
])
def test_pad(mode, pads, opset):
    check_vjp("Pad", {"x": rand(2, 3, 4)}, {"mode": mode}, {"pads": ints(*pads), "value": np.array(0.5)},
              opset=opset, order=["x", "pads"] + (["value"] if mode == "constant" else []))


@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_pad_axes_and_value_on_path(mode):
    inputs = {"x": rand(2, 3, 4), **({"value": rand(1)} if mode == "constant" else {})}
    check_vjp("Pad", inputs, {"mode": mode}, {"pads": ints(1, 2), "axes": ints(-2)}, opset=18,
              order=["x", "pads", "value" if mode == "constant" else "", "axes"])


def test_pad_computed_pads():
    """Pads computed at run time (as torch's legacy exporter writes them) are fine in constant mode."""
    check_vjp("Pad", {"x": rand(2, 3), "pads": ints(1, -1, 0, 2)}, opset=13)


def test_pad_attribute_form():
    check_vjp("Pad", {"x": rand(2, 3)}, {"pads": [0, 1, 1, 0], "value": 0.5}, opset=9)


def _symbolic_batch(model):
    for vi in model.graph.input:
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    return model


@pytest.mark.parametrize("op, shapes, attrs, consts", [
    ("Concat", {"a": (3,), "b": (3,)}, {"axis": 0}, {}),
    ("Concat", {"a": (3,), "b": (2,)}, {"axis": 1}, {}),
    ("Tile", {"x": (3,)}, {}, {"repeats": ints(2, 2)}),
    ("Reshape", {"x": (3, 4)}, {}, {"shape": ints(0, -1)}),
    ("Flatten", {"x": (3, 4)}, {}, {}),
    ("ReduceMean", {"x": (3,)}, {"axes": [0], "keepdims": 0}, {}),
    ("MatMul", {"a": (3, 4)}, {}, {"b": rand(4, 2)}),
    ("Gemm", {"a": (4,)}, {}, {"b": rand(4, 2), "c": rand(2)}),
    ("Add", {"a": (3,), "b": (1,)}, {}, {}),
    ("Slice", {"x": (5,)}, {}, {"starts": ints(1), "ends": ints(4), "axes": ints(1)}),
    ("Slice", {"x": (2,)}, {}, {"starts": ints(-1, 0), "ends": ints(-BIG, 1), "axes": ints(0, 1),
               "steps": ints(-2, 1)}),
    ("Gather", {"x": (5,)}, {"axis": 1}, {"indices": ints(1, 1, 3)}),
    ("Gather", {"x": (2,)}, {}, {"indices": ints(0, -1, 0)}),
    ("Split", {"x": (4,)}, {"axis": 1}, {}),
    ("BatchNormalization", {"x": (3, 2)}, {}, {"s": rand(3), "b": rand(3), "m": rand(3), "v": rand(3) ** 2 + 1}),
])
def test_symbolic_batch(op, shapes, attrs, consts):
    """A graph built for batch 'N' gives, at batch 1 and 3, the gradients of the graph built for that batch."""
    n_outputs = 2 if op == "Split" else 1
    for batch in (1, 3):
        inputs = {name: rand(batch, *s) for name, s in shapes.items()}
        static = one_node_model(op, inputs, attrs, consts, n_outputs)
        ys = ort.InferenceSession(static.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
        us = {f"y{i}": rand(*y.shape) for i, y in enumerate(ys)}
        expected = exact_vjp(static, inputs, us, list(inputs))
        dynamic = _symbolic_batch(one_node_model(op, inputs, attrs, consts, n_outputs))
        for got, want in zip(exact_vjp(dynamic, inputs, us, list(inputs)), expected):
            np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("axis, indices", [(0, np.array([[1, 0, 1], [2, 2, 0]])),
                                           (1, np.array([[0, 0], [2, -1], [1, 1]]))])
def test_gather_elements(axis, indices):
    """Repeated indices (and a negative one) sum their cotangents (ScatterElements with reduction: opset 16)."""
    check_vjp("GatherElements", {"x": rand(3, 3)}, {"axis": axis}, {"indices": indices}, opset=16)


@pytest.mark.parametrize("indices", [np.array([[0, 1], [2, 0], [0, 1]]), np.array([[1], [1]]),
                                     np.array([[[0, 2, 1]], [[1, 0, 3]]]), np.array([[-1, 0], [2, -3]])])
def test_gather_nd(indices):
    check_vjp("GatherND", {"x": rand(3, 3, 4)}, {}, {"indices": indices}, opset=16)


def test_gather_nd_sums_many_repeated_indices_exactly():
    """64 rows of 20 000 values gathered from 4 places: the cotangents of each place are all summed. The rule used
    ScatterND with reduction add, which onnxruntime 1.31's CPU kernel runs in parallel, losing updates to repeated
    indices in some runs (3 of 20); np.add.at is the reference, over 10 runs."""
    x = rand(4, 20_000).astype(np.float32)
    idx = np.random.default_rng(3).integers(0, 4, (64, 1))
    model = one_node_model("GatherND", {"x": x}, {}, {"indices": idx}, opset=16, dtype=np.float32)
    dy = np.random.default_rng(4).normal(size=(64, 20_000)).astype(np.float32)
    want = np.zeros((4, 20_000), np.float64)
    np.add.at(want, idx[:, 0], dy)
    for _ in range(10):
        got, = exact_vjp(model, {"x": x}, {"y0": dy}, ["x"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("attrs, k", [({}, 2), ({"axis": 0, "largest": 0}, 1), ({"axis": 1, "sorted": 0}, 3)])
def test_top_k(attrs, k):
    """Values only: the indices output is not differentiable."""
    check_vjp("TopK", {"x": rand(3, 4)}, attrs, {"k": ints(k)}, n_outputs=2, opset=11, wrt=["x"])


@pytest.mark.parametrize("attrs", [{}, {"exclusive": 1}, {"reverse": 1}, {"exclusive": 1, "reverse": 1}])
@pytest.mark.parametrize("axis", [1, -3])
def test_cumsum(attrs, axis):
    check_vjp("CumSum", {"x": rand(3, 4, 2)}, attrs, {"axis": ints(axis)}, opset=14)


@pytest.mark.parametrize("op, shape, attrs", [("DepthToSpace", (2, 8, 2, 3), {"blocksize": 2}),
                                              ("DepthToSpace", (2, 8, 2, 3), {"blocksize": 2, "mode": "CRD"}),
                                              ("DepthToSpace", (1, 18, 1, 2), {"blocksize": 3, "mode": "CRD"}),
                                              ("SpaceToDepth", (2, 3, 4, 6), {"blocksize": 2})])
def test_depth_to_space(op, shape, attrs):
    check_vjp(op, {"x": rand(*shape)}, attrs, opset=13)


@pytest.mark.parametrize("equation, shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("nchw,dc->ndhw", [(2, 3, 2, 2), (4, 3)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("ij,jk", [(2, 3), (3, 4)]), ("ij->", [(2, 3)]), ("ijk->ki", [(2, 3, 4)]), ("i,j->ij", [(3,), (2,)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 3, 4, 2)]), ("ij,j->i", [(3, 4), (4,)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("abc,cd,de->ae", [(2, 3, 2), (2, 3), (3, 2)]),
])
def test_einsum(equation, shapes):
    """Letters summed in one operand only (ij->, abc: b) broadcast back; an ellipsis broadcast (size 1) sums back."""
    check_vjp("Einsum", {f"x{i}": rand(*s) for i, s in enumerate(shapes)}, {"equation": equation}, opset=12)


@pytest.mark.parametrize("op, inputs, attrs, consts, message", [
    ("Einsum", {"x": rand(3, 3)}, {"equation": "ii->i"}, {}, "takes a diagonal of operand 0"),
    ("GatherND", {"x": rand(2, 3)}, {"batch_dims": 1}, {"indices": np.array([[1], [0]])}, "batch_dims 0 only"),
])
def test_unsupported_forms_are_refused_in_one_line(op, inputs, attrs, consts, message):
    with pytest.raises(OnnxplainError, match=message):
        check_vjp(op, inputs, attrs, consts, opset=16)


@pytest.mark.parametrize("op, consts", [("Add", {"b": rand(3)}), ("Softmax", {}), ("Transpose", {})])
def test_lost_rank_is_refused_in_one_line(op, consts):
    """Where ONNX shape inference loses a rank (an opset-11 export's Reshape to a shape computed from Shape/Slice/
    Concat), a rule that needs it names the node and the tensor; it raised a ValueError or TypeError before."""
    model = one_node_model(op, {"x": rand(2, 3)}, {}, consts, opset=13)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model.graph.node[0].name = "n"
    with pytest.raises(OnnxplainError, match=f"the gradient of {op} 'n' needs the rank of 'x', which ONNX shape"):
        build(model, Request(differentiate=("y0",), wrt=("x",)))


def test_a_rule_bug_on_a_shapeless_node_is_not_called_a_lost_rank(monkeypatch):
    """Only a rule's own request for a rank (`shape_of`, `rank_of`) becomes the one line about shape inference: any
    other TypeError or ValueError of a rule is a bug, raised as it is, also on a node whose shapes are unknown."""
    from onnxplain.rewrite.rules import RULES

    def buggy(node, dys, g):
        return [None] * len(node.inputs[0])  # a TypeError of the rule itself
    monkeypatch.setitem(RULES, "Softmax", buggy)
    model = one_node_model("Softmax", {"x": rand(2, 3)}, {}, {}, opset=13)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(TypeError, match="has no len"):
        build(model, Request(differentiate=("y0",), wrt=("x",)))
