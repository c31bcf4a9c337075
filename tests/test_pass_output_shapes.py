"""Declared shapes: outputs declared with no shape or rank 0 get the shape onnxruntime computes (a Paddle export of
PP-LCNet declares its N×2 scores as a scalar), and dims declared -1 (Paddle) become symbolic."""
import numpy as np
import onnx
import pytest
from conftest import rel_err
from test_load import tiny_cnn

import onnxplain
from onnxplain.rewrite.graph import Request, build

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _declare(value_info, dims):
    shape = value_info.type.tensor_type.shape
    shape.Clear()
    shape.dim.extend(onnx.TensorShapeProto.Dimension(**({"dim_value": d} if isinstance(d, int) else {"dim_param": d}))
                     for d in dims)


def _same_saliency(m):
    plain = onnxplain.load(tiny_cnn(reshape_batch=False), preprocessing="unit", device="cpu")
    expected = onnxplain.explain(plain, X, "saliency", target=[3, 4]).maps
    assert rel_err(onnxplain.explain(m, X, "saliency", target=[3, 4]).maps, expected) < 1e-6


@pytest.mark.parametrize("batch", ["batch", -1])
def test_scalar_declared_output_gets_the_computed_shape(batch):
    """On main: 'the model has no class-score output (N×classes); its outputs: logits[]'."""
    model = tiny_cnn(reshape_batch=False)
    _declare(model.graph.input[0], [batch, 3, 8, 8])
    _declare(model.graph.output[0], [])
    m = onnxplain.load(model, preprocessing="unit", device="cpu")
    assert dict(m.normalised)["output_shapes"] == ("output 'logits' declared [], computed [N, 10]: shapes set "
                                                   "from onnxruntime")
    assert m.num_classes == 10
    _same_saliency(m)


def test_negative_dims_are_symbolic():
    """A Paddle-style -1 batch and class count become symbolic (on PP-OCR's classifier, the -1 reached a folded
    Shape and the built graph failed with 'Invalid Target shape product of 0')."""
    model = tiny_cnn(reshape_batch=False)
    _declare(model.graph.input[0], [-1, 3, 8, 8])
    _declare(model.graph.output[0], [-1, -1])
    m = onnxplain.load(model, preprocessing="unit", device="cpu")
    assert dict(m.normalised)["dims"] == "3 declared dims of -1 made symbolic (image, logits)"
    assert m.num_classes == 10
    built = build(m.proto, Request())
    assert [d.dim_param for d in built.graph.input[0].type.tensor_type.shape.dim][:1] == ["image_d0"]
    _same_saliency(m)
