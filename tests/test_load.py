"""Loading: inputs, outputs, layout, preprocessing, dynamic batch; and one clear error for every bad input."""
import json

import numpy as np
import onnx
import pytest
from conftest import IMAGES, MOBILENET, rel_err, softmax
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain import OnnxplainError, UnsupportedOpError
from onnxplain.explain import as_batch

RNG = np.random.default_rng(0)


def tiny_cnn(batch=1, softmax=False, op=None, layout="NCHW", reshape_batch=True):
    """input → Conv → Relu → (op) → Reshape([batch, -1]) → Gemm (→ Softmax), exported with a fixed batch; the same
    weights at every call."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((10, 4 * 8 * 8)).astype(np.float32) / 16
    shape = [batch, 3, 8, 8] if layout == "NCHW" else [batch, 8, 8, 3]
    nodes = [] if layout == "NCHW" else [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2])]
    nodes += [helper.make_node("Conv", ["nchw" if layout == "NHWC" else "image", "w"], ["c"], pads=[1, 1, 1, 1],
                               name="conv"),
              helper.make_node("Relu", ["c"], ["r"], name="relu")]
    last = "r"
    if op is not None:
        nodes.append(helper.make_node(op[1], ["r"], ["u"], domain=op[0], name="mystery"))
        last = "u"
    nodes += [helper.make_node("Reshape", [last, "shape"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1, name="fc")]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 10])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"),
                               numpy_helper.from_array(np.array([batch if reshape_batch else -1, 256]), "shape")])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(op[0], 1)] if op and op[0] else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_bundled_model_is_read_with_its_sidecar():
    m = onnxplain.load(MOBILENET)
    assert (m.input, m.output, m.score, m.num_classes, m.layout, m.input_size) == (
        "input", "logits", "logits", 1000, "NCHW", (224, 224))
    assert m.preprocessing.resize == 256 and m.label(281) == "tabby"


def test_hard_coded_batch_becomes_dynamic():
    """An export with batch 1 baked into its Reshape runs a batch of 4, each image's gradient as if alone."""
    m = onnxplain.load(tiny_cnn(batch=1), preprocessing="unit")
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    batched = onnxplain.explain(m, x, "saliency", target=[0, 1, 2, 3])
    alone = np.concatenate([onnxplain.explain(m, x[i:i + 1], "saliency", target=i).attributions for i in range(4)])
    assert batched.attributions.shape == x.shape and rel_err(batched.attributions, alone) < 1e-6


def test_softmax_model_explains_logits_unless_probabilities_are_asked_for():
    proto = tiny_cnn(softmax=True)
    m = onnxplain.load(proto, preprocessing="unit")
    assert (m.output, m.score) == ("probs", "logits")
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    e = onnxplain.explain(m, x, "gradxinput")
    p = onnxplain.load(proto, preprocessing="unit", probabilities=True)
    assert p.score == "probs"
    ep = onnxplain.explain(p, x, "gradxinput", target=e.targets.tolist())
    assert rel_err(ep.scores, softmax(e.logits)[np.arange(2), e.targets]) < 1e-5
    assert not np.allclose(ep.attributions, e.attributions)


def test_nhwc_models_are_recognised():
    m = onnxplain.load(tiny_cnn(layout="NHWC"), preprocessing="unit")
    assert m.layout == "NHWC"
    e = onnxplain.explain(m, RNG.standard_normal((1, 8, 8, 3)).astype(np.float32), "saliency")
    assert e.maps.shape == (1, 8, 8)


# -- bad input: one clear sentence each ------------------------------------------------------------------------------
def _one_line(excinfo, *words):
    text = str(excinfo.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(tmp_path / "nope.onnx")
    _one_line(e, "not found")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(MOBILENET.read_bytes()[:300_000])
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(truncated)
    _one_line(e, str(truncated))
    text = tmp_path / "notes.onnx"
    text.write_text("these are not the weights you are looking for\n")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(text)
    _one_line(e, str(text))


def test_non_image_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 20])])
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    _one_line(e, "no image input", "x[1, 20]")


def test_hostile_graphs_fail_in_one_line_and_nothing_else_on_stderr(capfd):
    proto = tiny_cnn()  # logits + the sum of 4 TB of zeros, sized at run time: the run cannot allocate it
    proto.graph.initializer.append(numpy_helper.from_array(np.array([1e6, 1e6], np.float32), "huge"))
    proto.graph.node[-1].output[0] = "fc_out"
    proto.graph.node.extend([helper.make_node("ReduceMax", ["image"], ["top"], keepdims=0),
                             helper.make_node("Mul", ["top", "zero"], ["nil"]),
                             helper.make_node("Add", ["huge", "nil"], ["sized"]),
                             helper.make_node("Cast", ["sized"], ["dims"], to=TensorProto.INT64),
                             helper.make_node("ConstantOfShape", ["dims"], ["zeros"]),
                             helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=0),
                             helper.make_node("Add", ["fc_out", "total"], ["logits"])])
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    m = onnxplain.load(proto, preprocessing="unit")
    capfd.readouterr()
    for method in ("saliency", "occlusion"):
        with pytest.raises(OnnxplainError) as e:
            onnxplain.explain(m, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), method)
        _one_line(e, "onnxruntime failed to run the model", "allocate")
    assert capfd.readouterr().err == ""  # onnxruntime's and onnx-graphsurgeon's own logs are muted
    cyclic = tiny_cnn()
    cyclic.graph.node[0].input[0] = "r"  # conv reads the relu it feeds
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(cyclic, preprocessing="unit")
    _one_line(e, "topologically sorted", "is not output of any previous nodes")


def test_tensors_larger_than_memory_are_refused_before_onnxruntime_allocates(monkeypatch):
    """A 10^12-element Expand: sized by a constant, refused at load (before a load pass runs the model); sized from
    the input's shape, refused once shape inference at the input size tells it, before a session is built."""
    from onnxplain import runtime
    constant = tiny_cnn()  # logits + the mean of the image broadcast to 10^6 × 10^6
    constant.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 10**6, 10**6], np.int64), "huge"))
    constant.graph.node[-1].output[0] = "fc_out"
    constant.graph.node.extend([helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=1),
                                helper.make_node("Expand", ["mean", "huge"], ["big"], name="broadcast"),
                                helper.make_node("ReduceMean", ["big"], ["total"], keepdims=0),
                                helper.make_node("Add", ["fc_out", "total"], ["logits"])])
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(constant, preprocessing="unit")
    _one_line(e, "Expand node 'broadcast'", "1e+12 elements", "memory available")
    computed = onnx.ModelProto()  # the same, the size made of the input's height: 8 · 125 000 = 10^6
    computed.CopyFrom(constant)
    computed.graph.initializer.pop(-1)
    computed.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("two", [2]), ("k", [125_000]), ("ones", [1, 1]), ("million", [10**6]))])
    computed.graph.node.insert(0, helper.make_node("Shape", ["image"], ["hw"]))
    computed.graph.node.insert(1, helper.make_node("Gather", ["hw", "two"], ["h"]))
    computed.graph.node.insert(2, helper.make_node("Mul", ["h", "k"], ["side"]))
    computed.graph.node.insert(3, helper.make_node("Concat", ["ones", "side", "million"], ["huge"], axis=0))
    m = onnxplain.load(computed, preprocessing="unit")
    monkeypatch.setattr(runtime.ort, "InferenceSession", None)  # no session may start
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(m, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), "saliency")
    _one_line(e, "Expand node 'broadcast'", "1e+12 elements per image", "memory available")


def test_unknown_op_names_op_node_and_the_black_box_path():
    m = onnxplain.load(tiny_cnn(op=("com.example", "Swizzle")), preprocessing="unit")
    with pytest.raises(UnsupportedOpError) as e:
        onnxplain.explain(m, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32), "saliency")
    _one_line(e, "Swizzle", "'mystery'", "opset", "occlusion")


def _quantised(proto, activations: bool):
    """int8 weights through DequantizeLinear; with `activations`, the Relu output through QuantizeLinear too."""
    w = next(t for t in proto.graph.initializer if t.name == "w")
    values = numpy_helper.to_array(w)
    scale = np.float32(np.abs(values).max() / 127)
    proto.graph.initializer.remove(w)
    proto.graph.initializer.extend([numpy_helper.from_array(np.round(values / scale).astype(np.int8), "wq"),
                                    numpy_helper.from_array(np.array(scale), "ws"),
                                    numpy_helper.from_array(np.array(0.05, np.float32), "as"),
                                    numpy_helper.from_array(np.array(0, np.uint8), "az")])
    proto.graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]))
    if activations:
        relu = next(n for n in proto.graph.node if n.op_type == "Relu")
        relu.output[0] = "r0"
        at = list(proto.graph.node).index(relu) + 1
        proto.graph.node.insert(at, helper.make_node("QuantizeLinear", ["r0", "as", "az"], ["rq"], name="q1"))
        proto.graph.node.insert(at + 1, helper.make_node("DequantizeLinear", ["rq", "as", "az"], ["r"]))
    return proto


def test_quantised_weights_are_differentiated_and_quantised_activations_named():
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    proto, quantised = tiny_cnn(), _quantised(tiny_cnn(), activations=False)
    q, scale = (numpy_helper.to_array(next(t for t in quantised.graph.initializer if t.name == n)) for n in ("wq", "ws"))
    w = next(t for t in proto.graph.initializer if t.name == "w")
    w.CopyFrom(numpy_helper.from_array(q.astype(np.float32) * scale, "w"))  # the same model with float weights
    e = onnxplain.explain(onnxplain.load(quantised, preprocessing="unit"), x, "gradxinput", target=3)
    reference = onnxplain.explain(onnxplain.load(proto, preprocessing="unit"), x, "gradxinput", target=3)
    assert rel_err(e.maps, reference.maps) < 1e-6
    m = onnxplain.load(_quantised(tiny_cnn(), activations=True), preprocessing="unit", quantized="exact")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(m, x, "saliency")
    _one_line(e, "QuantizeLinear 'q1'", "gradient is zero", "occlusion")
    assert onnxplain.explain(m, x, "occlusion", window=4, stride=4).maps.shape == (2, 8, 8)


def _rounded(proto, dtype, io=False):
    """(`proto` computing in `dtype`: its float weights and inner tensors, and with `io` its input and outputs; the
    float32 `proto` with the same rounded weights)."""
    half, rounded = (onnx.ModelProto.FromString(proto.SerializeToString()) for _ in range(2))
    for h, r in zip(half.graph.initializer, rounded.graph.initializer):
        if h.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(h).astype(dtype)
            h.CopyFrom(numpy_helper.from_array(a, h.name))
            r.CopyFrom(numpy_helper.from_array(a.astype(np.float32), r.name))
    code = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for v in (*half.graph.value_info, *((*half.graph.input, *half.graph.output) if io else ())):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = code
    return half, rounded


def test_half_precision_models_are_explained_in_float32(mobilenet):
    half, rounded = _rounded(mobilenet.proto, np.float16, io=True)  # deployed in float16
    with pytest.warns(UserWarning, match="float16; it is explained in float32"):
        m = onnxplain.load(half, preprocessing=mobilenet.preprocessing)
    assert m.promoted_from == "float16"
    x, _ = as_batch(m, IMAGES)
    e = onnxplain.explain(m, x, "saliency")
    reference = onnxplain.explain(onnxplain.load(rounded, preprocessing=mobilenet.preprocessing), x, "saliency")
    assert rel_err(e.attributions, reference.attributions) < 1e-6
    import onnxruntime as ort  # the float16 model as deployed scores the same classes, up to its rounding
    deployed = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = deployed.run(None, {m.input: x.astype(np.float16)})[0]
    assert list(e.targets) == list(logits.argmax(1)) and rel_err(e.logits, logits) < 1e-3

    import ml_dtypes
    bf16 = tiny_cnn()  # float32 in and out, bfloat16 inside, between two Casts
    bf16.graph.node[-1].output[0] = "half_logits"
    bf16.graph.node.insert(0, helper.make_node("Cast", ["image"], ["half_image"], to=TensorProto.BFLOAT16))
    bf16.graph.node[1].input[0] = "half_image"
    bf16.graph.node.append(helper.make_node("Cast", ["half_logits"], ["logits"], to=TensorProto.FLOAT))
    with pytest.warns(UserWarning, match="bfloat16"):
        m = onnxplain.load(_rounded(bf16, ml_dtypes.bfloat16)[0], preprocessing="unit")
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    e = onnxplain.explain(m, x, "gradxinput", target=4)
    rounded = onnxplain.load(_rounded(tiny_cnn(), ml_dtypes.bfloat16)[1], preprocessing="unit")
    reference = onnxplain.explain(rounded, x, "gradxinput", target=4)
    assert rel_err(e.attributions, reference.attributions) < 1e-6


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(4 * 3 * 3 * 3, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    proto = tiny_cnn()
    w = next(t for t in proto.graph.initializer if t.name == "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    onnx.save(proto, folder / "m.onnx")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(folder / "m.onnx")
    _one_line(e, "outside the model's folder")


def test_16_bit_grey_images_read_by_their_full_range_and_32_bit_pixels_refused(tmp_path, mobilenet):
    from PIL import Image
    grey = np.asarray(Image.open(IMAGES[0]).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # Pillow's convert("RGB") gives white
    p = mobilenet.preprocessing
    view8, x8 = onnxplain.preprocess.read_image(tmp_path / "g8.png", p)
    view16, x16 = onnxplain.preprocess.read_image(tmp_path / "g16.png", p)
    assert view16.std() > 20 and np.array_equal(view16, view8) and np.array_equal(x16, x8)
    for name, a in (("i32.tif", grey.astype(np.int32)), ("f32.tif", grey.astype(np.float32))):
        Image.fromarray(a).save(tmp_path / name)
        with pytest.raises(OnnxplainError) as e:
            onnxplain.explain(mobilenet, [tmp_path / name])
        _one_line(e, "cannot read image", "no defined range")


def test_wrong_shapes_targets_images_and_sidecars(tmp_path, mobilenet):
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, np.zeros((1, 3, 100, 100), np.float32))
    _one_line(e, "(1, 3, 100, 100)", "N×3×224×224")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, IMAGES, target=[1, 2, 3])
    _one_line(e, "3 targets for 2 images")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, IMAGES[:1], target=1000)
    _one_line(e, "target 1000")
    corrupt = tmp_path / "cat.png"
    corrupt.write_bytes(IMAGES[0].read_bytes()[:2000])
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, [corrupt])
    _one_line(e, "cannot read image", str(corrupt))
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, IMAGES[:1], method="magic")
    _one_line(e, "unknown method 'magic'")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, IMAGES[:1], method="gradcam", layer="no_such_tensor")
    _one_line(e, "no tensor named 'no_such_tensor'")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, IMAGES[:1], method="gradcam", layer=mobilenet.score)
    _one_line(e, f"layer '{mobilenet.score}' has shape ['batch', 1000]", "channels, height and width")
    x = np.zeros((2, 3, 224, 224), np.float32)
    x[1, 0, 5, 5] = np.nan
    with pytest.raises(OnnxplainError) as e:
        onnxplain.explain(mobilenet, x)
    _one_line(e, "input image 1 has values that are NaN or infinite")
    for empty in ([], x[:0]):
        with pytest.raises(OnnxplainError) as e:
            onnxplain.explain(mobilenet, empty)
        _one_line(e, "nothing to explain")
    model = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), model)
    model.with_suffix(".json").write_text("{ broken")
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(model)
    _one_line(e, "not valid JSON")
    model.with_suffix(".json").write_text(json.dumps({"preprocessing": {"size": [5, 5]}}))
    with pytest.raises(OnnxplainError) as e:  # a fixed size is freed only where the model runs at the one asked for
        onnxplain.load(model)
    _one_line(e, "input 'image' is declared 8x8 and the model does not run at 5x5: ")


def _sequence_model(declared, transpose, pooled=False):
    """Grey N×1×8×W images → a per-column score: N×W, or W×N×1 when `transpose` (an OCR model's time-major output),
    declared `declared` as an exporter wrote it; `pooled`: the columns' mean over the batch too (W×1×1 however
    many images)."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("ReduceMean", ["x"], ["cols"], axes=[0, 1, 2] if pooled else [1, 2],
                              keepdims=int(pooled))]
    if pooled:
        nodes += [helper.make_node("Reshape", ["cols", "column"], ["t"]),
                  helper.make_node("Unsqueeze", ["t", "axis"], ["y"])]
    elif transpose:
        nodes += [helper.make_node("Transpose", ["cols"], ["t"], perm=[1, 0]),
                  helper.make_node("Unsqueeze", ["t", "axis"], ["y"])]
    else:
        nodes += [helper.make_node("Identity", ["cols"], ["y"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)],
                              [helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
                               helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_symbolic_second_axis_that_is_not_classes_is_a_flat_head_or_refused():
    """A symbolic class count is read from one run; an axis that grows with the image (OCR time steps) is not a class
    axis: its elements become the targets (a flat head, one score per column at the size explained). An output whose
    first computed axis is not the batch (ddddocr's CRNN declares 1×seqlen and computes T×1×8210) holds its images on
    the axis that doubles from one image to two, and gives the same attributions; one with no such axis is refused
    in one line with its computed shapes, instead of a 'classifier' whose occlusion crashed."""
    pre = {"size": [8, 16], "mean": [0.5], "std": [0.5]}
    m = onnxplain.load(_sequence_model(["N", "seq"], False), preprocessing=pre, device="cpu")
    assert isinstance(m.head, onnxplain.targets.Flat) and m.num_classes == 16
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 16)).astype(np.float32)
    e = onnxplain.explain(m, x, "gradxinput", target=5)  # column 5's mean over rows 0..7: gradient 1/8 there
    assert np.allclose(e.attributions[:, 0, :, 5], x[:, 0, :, 5] / 8) and not e.attributions[:, :, :, 6:].any()
    time_major = onnxplain.load(_sequence_model([1, "seq"], True), preprocessing=pre, device="cpu")
    assert time_major.head == onnxplain.targets.Flat("y", 1, 3) and time_major.num_classes == 16
    assert np.array_equal(onnxplain.explain(time_major, x, "gradxinput", target=5).attributions, e.attributions)
    with pytest.raises(onnxplain.OnnxplainError, match=r"computes \[16, 1, 1\] for one image and \[16, 1, 1\] for "
                                                       r"two: no one axis holds the images"):
        onnxplain.load(_sequence_model([1, "seq"], True, pooled=True), preprocessing=pre)
