"""Fuzzing (hypothesis): mutated model bytes, sidecar JSON and image files give a result or one OnnxplainError line.

The model is a tiny CNN built here (Conv, Relu, pooling, Gemm on 3×8×8), written with its sidecar and a PNG to a
temporary folder; each case mutates one of the three files and runs load and one method. Any other exception, a
message over several lines, or a non-finite map or score fails. The budget is fixed (max_examples per test, no
per-case deadline) so that the three tests take a few seconds; the seed is derandomised, so CI runs the same cases.
"""
import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxplain
from onnxplain.errors import OnnxplainError

BUDGET = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
METHODS = ("saliency", "gradcam", "occlusion")


def tiny_model() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], [w, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


MODEL = tiny_model()
SIDECAR = {"preprocessing": {"size": [8, 8], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "scale": 0.0039,
                             "layout": "NCHW"}, "labels": ["a", "b", "c", "d", "e"]}


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


IMAGE = png(np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8))


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with a few bytes replaced, inserted or deleted, or cut short."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(("replace", "insert", "delete", "truncate")))
        if kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def outcome(tmp_path, model: bytes = MODEL, sidecar: str | None = None, image: bytes = IMAGE, method="saliency"):
    """Write the three files and explain; returns the Explanation, or the OnnxplainError's message."""
    (tmp_path / "m.onnx").write_bytes(model)
    (tmp_path / "m.json").write_text(json.dumps(SIDECAR) if sidecar is None else sidecar, encoding="utf-8",
                                     errors="surrogatepass")
    (tmp_path / "x.png").write_bytes(image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = onnxplain.load(tmp_path / "m.onnx", device="cpu")
            e = onnxplain.explain(m, tmp_path / "x.png", method, **({"window": 4, "stride": 4}
                                                                     if method == "occlusion" else {}))
    except OnnxplainError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return str(exc).replace(str(tmp_path), "")
    assert np.isfinite(e.maps).all() and np.isfinite(e.scores).all(), "a non-finite result passed as a result"
    return e


def fuzz(tmp_path, **files):
    """`outcome`, noted for --hypothesis-show-statistics (which lists what share of the cases reached what)."""
    result = outcome(tmp_path, **files)
    event(f"refused: {result[:70]}" if isinstance(result, str) else "explained")


def test_the_unmutated_files_explain(tmp_path):
    for method in METHODS:
        assert not isinstance(outcome(tmp_path, method=method), str)


@st.composite
def edited(draw) -> bytes:
    """The model with a few fields changed (so that cases get past the parser and the checker to the rewrite and
    the run): a declared dimension, a weight, an attribute, an op type, an input's source, or a node dropped."""
    proto = onnx.load_from_string(MODEL)
    graph = proto.graph
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(("dim", "weight", "attribute", "op", "rewire", "drop")))
        node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
        if kind == "dim":
            value = draw(st.sampled_from([graph.input[0], graph.output[0]])).type.tensor_type.shape
            dim = value.dim[draw(st.integers(0, len(value.dim) - 1))]
            if draw(st.booleans()):
                dim.dim_param = draw(st.sampled_from(["N", "h", ""]))
            else:
                dim.dim_value = draw(st.sampled_from([0, 1, 2, 3, 7, 2**31, 2**62]))
        elif kind == "weight":
            t = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
            w = numpy_helper.to_array(t).copy()
            w.flat[draw(st.integers(0, w.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, 0.0]))
            t.CopyFrom(numpy_helper.from_array(w, t.name))
        elif kind == "attribute" and node.attribute:
            a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
            if a.ints:
                a.ints[draw(st.integers(0, len(a.ints) - 1))] = draw(st.integers(-3, 2**40))
            else:
                a.i = draw(st.integers(-3, 3))
        elif kind == "op":
            node.op_type = draw(st.sampled_from(("Relu", "Sigmoid", "Identity", "Conv", "Gemm", "MaxPool", "Softmax",
                                                 "Reshape", "Abs", "Floor", "Transpose", "If")))
        elif kind == "rewire":
            names = ["input", *(o for n in graph.node for o in n.output), *(t.name for t in graph.initializer)]
            node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names))
        elif len(graph.node) > 1:
            graph.node.remove(node)
    return proto.SerializeToString()


@BUDGET
@given(model=mutated(MODEL) | edited(), method=st.sampled_from(METHODS))
def test_mutated_model(tmp_path, model, method):
    fuzz(tmp_path, model=model, method=method)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
FIELDS = ("size", "mean", "std", "scale", "layout", "resize", "crop", "channel_order", "interpolation", "preset")


@st.composite
def sidecars(draw) -> str:
    """The sidecar with fields set to arbitrary JSON (known keys and others), or its text mutated."""
    if draw(st.booleans()):
        return draw(mutated(json.dumps(SIDECAR).encode())).decode("utf-8", errors="surrogateescape")
    data = json.loads(json.dumps(SIDECAR))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(("preprocessing", "top")))
        key = draw(st.sampled_from(FIELDS) | st.text(max_size=6))
        value = draw(JSON)
        if where == "top":
            data[draw(st.sampled_from(("labels", "labels_file", "output", "preprocessing", key)))] = value
        elif isinstance(data.get("preprocessing"), dict):
            data["preprocessing"][key] = value
    return json.dumps(data, allow_nan=True)


@BUDGET
@given(sidecar=sidecars(), method=st.sampled_from(METHODS))
def test_mutated_sidecar(tmp_path, sidecar, method):
    fuzz(tmp_path, sidecar=sidecar, method=method)


@BUDGET
@given(image=mutated(IMAGE) | st.builds(png, st.sampled_from([(1, 1, 3), (1, 40, 3), (40, 1, 3), (3, 3, 4), (5, 7)])
                                         .map(lambda s: np.full(s, 7, np.uint8))), method=st.sampled_from(METHODS))
def test_mutated_image(tmp_path, image, method):
    fuzz(tmp_path, image=image, method=method)
