"""Finite-difference checks of the spatial VJP rules: Conv, ConvTranspose, pooling, LRN and Resize."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import gradcheck
from gradcheck import check_vjp
from onnxplain.errors import OnnxplainError
from onnxplain.rewrite.graph import Request, build
from onnxplain.rewrite.rules import conv as conv_rules

RNG = np.random.default_rng(0)
F32 = {"rtol": 1e-3, "atol": 1e-4}  # ops ORT runs in float32 only get coarser finite differences


def randn(*shape):
    return RNG.standard_normal(shape)


@pytest.fixture
def int64_indices(monkeypatch):
    """check_vjp types every output like the input: MaxPool's Indices output is int64."""
    make = gradcheck.one_node_model

    def one_node_model(*args, **kwargs):
        model = make(*args, **kwargs)
        for out in model.graph.output[1:]:
            out.type.tensor_type.elem_type = onnx.TensorProto.INT64
        return model
    monkeypatch.setattr(gradcheck, "one_node_model", one_node_model)


# -- Conv ------------------------------------------------------------------------------------------------------------
CONV = {  # x shape, w shape, attributes
    "plain": ((2, 3, 5, 4), (4, 3, 3, 3), {}),
    "stride-remainder": ((1, 3, 8, 7), (2, 3, 3, 3), {"strides": [2, 3]}),
    "pads-dilations": ((1, 2, 7, 8), (3, 2, 3, 2), {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}),
    "pads-past-kernel": ((1, 2, 5, 5), (3, 2, 2, 2), {"pads": [3, 0, 0, 3]}),
    "groups-same-upper": ((1, 4, 8, 8), (6, 2, 3, 3), {"group": 2, "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "depthwise": ((1, 4, 7, 6), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "depthwise-s1": ((2, 3, 6, 5), (3, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    "multiplier-same-lower": ((1, 2, 6, 6), (4, 1, 2, 2), {"group": 2, "strides": [3, 3], "auto_pad": "SAME_LOWER"}),
    "valid": ((1, 3, 6, 7), (2, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    "resnet-stem": ((1, 1, 12, 12), (2, 1, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    "1d": ((2, 4, 9), (6, 2, 3), {"group": 2, "strides": [2], "pads": [4, 0], "dilations": [2]}),
    "3d": ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), {"strides": [2, 1, 2], "pads": [0, 1, 0, 1, 0, 1]}),
}


@pytest.fixture(params=["conv", "conv_transpose"])
def conv_path(request, monkeypatch):
    """Force one formulation of the Conv input gradient."""
    monkeypatch.setattr(conv_rules, "use_conv_transpose", lambda *args: request.param == "conv_transpose")
    return request.param


@pytest.mark.parametrize("case", CONV.values(), ids=CONV)
def test_conv_input_grad(case, conv_path):
    xs, ws, attrs = case
    check_vjp("Conv", {"x": randn(*xs)}, attrs, {"w": randn(*ws)}, **F32)


@pytest.mark.parametrize("case", CONV.values(), ids=CONV)
def test_conv_weight_and_bias_grad(case, conv_path):
    xs, ws, attrs = case
    check_vjp("Conv", {"x": randn(*xs), "w": randn(*ws), "b": randn(ws[0])}, attrs, **F32)


@pytest.mark.parametrize("case", CONV.values(), ids=CONV)
def test_conv_paths_agree(case, monkeypatch):
    xs, ws, attrs = case
    x, w = randn(*xs).astype(np.float32), randn(*ws).astype(np.float32)
    model = gradcheck.one_node_model("Conv", {"x": x}, attrs, {"w": w}, dtype=np.float32)
    dy = randn(*gradcheck._session(model).run(None, {"x": x})[0].shape).astype(np.float32)
    grads = []
    for conv_transpose in (False, True):
        monkeypatch.setattr(conv_rules, "use_conv_transpose", lambda *args: conv_transpose)
        grads += gradcheck.exact_vjp(model, {"x": x}, {"y0": dy}, ["x"])
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xs, ws, attrs", [
    ((1, 3, 16, 16), (4, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),  # ResNet's stem
    ((1, 4, 14, 14), (4, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # its strided 3×3s
    ((1, 4, 15, 15), (4, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # odd size: nothing to add back
    ((1, 4, 14, 14), (4, 4, 1, 1), {"strides": [2, 2]}),                        # its 1×1 shortcuts
])
def test_strided_conv_gradient_pads_are_equal(xs, ws, attrs):
    """onnxruntime's CUDA ConvTranspose takes only equal begin and end paddings, and runs a node with unequal ones on
    the CPU (4 of ResNet-50's 7 gradient ConvTransposes were, measured on an H200): the gradients of the strided
    convolutions of common CNNs are emitted with equal ones."""
    model = gradcheck.one_node_model("Conv", {"x": randn(*xs)}, attrs, {"w": randn(*ws)}, dtype=np.float32)
    grad = build(model, Request(differentiate=("y0",), wrt=("x",)))
    (node,) = [n for n in grad.graph.node if n.op_type == "ConvTranspose"]
    pads = next(a.ints for a in node.attribute if a.name == "pads")
    assert pads[:2] == pads[2:], pads


# -- ConvTranspose ---------------------------------------------------------------------------------------------------
CONV_TRANSPOSE = {  # x shape, w shape, attributes
    "pads-output-padding": ((2, 4, 5, 4), (4, 3, 3, 3), {"strides": [2, 3], "pads": [1, 0, 2, 1], "dilations": [1, 2],
                                                         "output_padding": [1, 1]}),
    "output-shape-larger": ((1, 4, 5, 4), (4, 3, 3, 3), {"strides": [2, 3], "output_shape": [12, 13]}),
    "output-shape-cropped": ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [8, 7]}),
    "depthwise-same-upper": ((1, 4, 5, 4), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "groups-same-lower": ((1, 4, 5, 4), (4, 2, 3, 3), {"group": 2, "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "valid": ((1, 2, 3, 4), (2, 2, 2, 3), {"auto_pad": "VALID", "strides": [3, 2]}),
    "1d": ((1, 4, 5), (4, 2, 3), {"group": 2, "strides": [2], "output_shape": [8]}),
}


@pytest.mark.parametrize("case", CONV_TRANSPOSE.values(), ids=CONV_TRANSPOSE)
def test_conv_transpose(case):
    xs, ws, attrs = case
    bias = randn(ws[1] * attrs.get("group", 1))
    check_vjp("ConvTranspose", {"x": randn(*xs), "w": randn(*ws), "b": bias}, attrs, **F32)


# -- pooling ---------------------------------------------------------------------------------------------------------
MAX_POOL = {  # x shape, attributes, outputs
    "3x3-stride-2": ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2]}, 1),
    "ceil-pads": ((1, 2, 6, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, 1),
    "dilations": ((1, 2, 7, 7), {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]}, 1),
    "same-upper-indices": ((1, 2, 5, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 2),
    "column-major-indices": ((1, 2, 5, 6), {"kernel_shape": [3, 2], "strides": [2, 1], "storage_order": 1}, 2),
    "1d": ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 1),
}


@pytest.mark.usefixtures("int64_indices")
@pytest.mark.parametrize("case", MAX_POOL.values(), ids=MAX_POOL)
def test_max_pool(case):
    xs, attrs, n_outputs = case
    check_vjp("MaxPool", {"x": randn(*xs)}, attrs, n_outputs=n_outputs, wrt=["x"])


AVERAGE_POOL = {  # x shape, attributes
    "3x3-stride-2": ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2]}),
    "ceil-pads": ((1, 2, 6, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 1, 1, 0], "ceil_mode": 1}),
    "same-upper": ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same-lower": ((1, 2, 7, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "dilations": ((1, 2, 8, 8), {"kernel_shape": [2, 3], "strides": [1, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    "dilations-ceil": ((1, 2, 8, 8), {"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [2, 2],
                                      "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "1d": ((2, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 2]}),
}


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", AVERAGE_POOL.values(), ids=AVERAGE_POOL)
def test_average_pool(case, count_include_pad, conv_path):
    xs, attrs = case
    check_vjp("AveragePool", {"x": randn(*xs)}, dict(attrs, count_include_pad=count_include_pad), opset=19, **F32)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 3], "strides": [3, 3], "pads": [0, 1, 0, 1], "ceil_mode": 1},  # ORT drops a window
    {"kernel_shape": [3, 2], "strides": [2, 2], "dilations": [2, 1], "pads": [1, 0, 2, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 3], "auto_pad": "SAME_LOWER"},
])
def test_pool_window_sizes_match_ort(attrs):
    x = randn(1, 1, 8, 8).astype(np.float32)
    model = gradcheck.one_node_model("AveragePool", {"x": x}, attrs, opset=19, dtype=np.float32)
    y = gradcheck._session(model).run(None, {"x": x})[0]
    node = gs.import_onnx(model).nodes[0]
    assert conv_rules.window(node, attrs["kernel_shape"]).outs == list(y.shape[2:])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7)], ids=["2d", "1d"])
def test_global_pool(op, shape):
    spread = RNG.permutation(np.prod(shape)).reshape(shape) * 0.05  # no two values within the float32 step 1e-2
    check_vjp(op, {"x": spread}, **F32)


@pytest.mark.parametrize("attrs", [{"size": 3}, {"size": 3, "alpha": 0.2}, {"size": 1, "alpha": 0.3, "beta": 1.0},
                                   {"size": 5, "alpha": 0.5, "beta": 0.6, "bias": 2.0}])
def test_lrn(attrs):
    check_vjp("LRN", {"x": randn(2, 6, 3, 3)}, attrs, rtol=1e-2, atol=1e-3)


# -- Resize ----------------------------------------------------------------------------------------------------------
RESIZE = {  # opset, x shape, attributes, roi, scales, sizes
    "nearest-x2": (13, (1, 2, 3, 4), {"mode": "nearest"}, None, [1, 1, 2, 2], None),
    "nearest-floor-asymmetric": (11, (1, 2, 3, 4), {"mode": "nearest", "nearest_mode": "floor",
                                 "coordinate_transformation_mode": "asymmetric"}, [], [1, 1, 1.5, 0.5], None),
    "nearest-ceil-align-corners": (11, (1, 2, 5, 4), {"mode": "nearest", "nearest_mode": "ceil",
                                   "coordinate_transformation_mode": "align_corners"}, [], [], [1, 2, 3, 7]),
    "nearest-prefer-ceil": (13, (1, 2, 5, 4), {"mode": "nearest", "nearest_mode": "round_prefer_ceil",
                            "coordinate_transformation_mode": "pytorch_half_pixel"}, None, None, [1, 2, 8, 3]),
    "linear-x2": (13, (1, 2, 3, 4), {"mode": "linear"}, None, [1, 1, 2, 2], None),
    "linear-align-corners": (13, (1, 2, 3, 4), {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
                             None, None, [1, 2, 7, 5]),
    "linear-antialias": (18, (1, 2, 5, 6), {"mode": "linear", "antialias": 1}, None, [1, 1, 0.6, 0.5], None),
    "cubic": (13, (1, 2, 4, 5), {"mode": "cubic"}, None, [1, 1, 2, 1.5], None),
    "cubic-antialias": (18, (1, 2, 5, 6), {"mode": "cubic", "antialias": 1, "cubic_coeff_a": -0.5,
                        "exclude_outside": 1}, None, [1, 1, 0.6, 0.5], None),
    "crop-and-resize": (13, (1, 2, 4, 5), {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                        "extrapolation_value": 3.0}, [0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], None, [1, 2, 6, 7]),
    "half-pixel-symmetric": (19, (1, 2, 4, 5), {"mode": "linear",
                             "coordinate_transformation_mode": "half_pixel_symmetric"}, None, [1, 1, 1.7, 0.6], None),
    "axes": (18, (1, 2, 4, 5), {"mode": "linear", "axes": [3, 2]}, None, [0.6, 1.7], None),
    "all-axes-5d": (13, (2, 3, 4, 3, 2), {"mode": "nearest"}, None, [2, 1, 2, 1, 3], None),
    "1d-linear": (13, (2, 3, 4), {"mode": "linear"}, None, [1, 1, 2.5], None),
    "resize-10": (10, (1, 2, 4, 5), {"mode": "linear"}, None, [1, 1, 2, 3], None),
}


@pytest.mark.parametrize("case", RESIZE.values(), ids=RESIZE)
def test_resize(case):
    opset, xs, attrs, roi, scales, sizes = case
    given = {"roi": roi, "scales": scales, "sizes": sizes} if opset >= 11 else {"scales": scales}
    constants = {name: np.array(v, np.int64 if name == "sizes" else np.float32) for name, v in given.items()
                 if v is not None}
    order = ["x"] + [name if v is not None else "" for name, v in given.items()]
    while not order[-1]:
        order.pop()
    check_vjp("Resize", {"x": randn(*xs)}, attrs, constants, opset=opset, order=order, **F32)


@pytest.mark.parametrize("opset, attrs, constants", [
    (9, {"mode": "nearest"}, {"scales": np.array([1, 1, 2, 3], np.float32)}),
    (7, {"mode": "linear", "scales": [1.0, 1.0, 2.0, 1.5]}, {}),
], ids=["upsample-9", "upsample-7"])
def test_upsample(opset, attrs, constants):
    check_vjp("Upsample", {"x": randn(1, 2, 3, 4)}, attrs, constants, opset=opset, **F32)


def test_resize_needs_constant_scales():
    model = gradcheck.one_node_model("Resize", {"x": randn(1, 1, 2, 2), "scales": np.ones(4, np.float32)},
                                     {"mode": "nearest"}, order=["x", "", "scales"], opset=13, dtype=np.float32)
    with pytest.raises(OnnxplainError, match="constant"):
        build(model, Request(differentiate=("y0",), wrt=("x",)))


@pytest.mark.parametrize("op, constants", [("Conv", {"w": np.ones((2, 3, 3, 3))}), ("AveragePool", {})])
def test_dynamic_spatial_size_is_a_clear_error(op, constants):
    model = gradcheck.one_node_model(op, {"x": randn(1, 3, 8, 8)}, {"kernel_shape": [3, 3]}, constants)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    with pytest.raises(OnnxplainError, match="static spatial size of its input"):
        build(model, Request(differentiate=("y0",), wrt=("x",)))


def test_a_conv_weight_that_is_no_kernel_is_refused_in_one_line():
    """The ONNX checker does not check ranks: a Conv whose weight is a matrix (as a mutated file can have) failed in
    onnx.helper with 'Could not infer attribute strides type' while building its gradient (found by test_fuzz)."""
    import onnxplain
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
         helper.make_node("GlobalAveragePool", ["y"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = onnxplain.load(model, preprocessing="unit", device="cpu")
    with pytest.raises(onnxplain.OnnxplainError, match="Conv node 'conv' has a weight 'w' of shape \\[4, 3\\]"):
        onnxplain.explain(m, np.zeros((1, 3, 8, 8), np.float32), "saliency", target=0)
