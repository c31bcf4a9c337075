"""The output-shapes pass: outputs declared with no shape, rank 0 or non-positive dims get the shape onnxruntime
computes (a Paddle export of PP-LCNet declares its N×2 scores as a scalar)."""
import numpy as np
import onnx
import pytest
from conftest import rel_err
from test_load import tiny_cnn

import onnxplain

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("declared, shown", [([], "[]"), ([-1, -1], "[-1, -1]")])
@pytest.mark.parametrize("batch", ["batch", -1])
def test_misdeclared_output_gets_the_computed_shape(declared, shown, batch):
    """On main: 'the model has no class-score output (N×classes)'. A batch declared -1 (Paddle) is symbolic."""
    model = tiny_cnn(reshape_batch=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if batch == -1:
        dim.dim_value = -1
    else:
        dim.dim_param = batch
    out = model.graph.output[0].type.tensor_type
    out.shape.Clear()
    out.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in declared)
    m = onnxplain.load(model, preprocessing="unit", device="cpu")
    assert dict(m.normalised)["output_shapes"] == (f"output 'logits' declared {shown}, computed ['N', 10]: shapes "
                                                   "set from onnxruntime")
    assert m.num_classes == 10
    plain = onnxplain.load(tiny_cnn(reshape_batch=False), preprocessing="unit", device="cpu")
    expected = onnxplain.explain(plain, X, "saliency", target=[3, 4]).maps
    assert rel_err(onnxplain.explain(m, X, "saliency", target=[3, 4]).maps, expected) < 1e-6
