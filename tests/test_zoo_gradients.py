"""Every zoo model and the small ViT, from both torch exporters: onnxplain's input gradient equals torch
autograd's."""
import numpy as np
import pytest
from conftest import EXPORTERS, MODELS, TRANSFORMERS, ZOO, rel_err

import onnxplain
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request


MODELS_WITH_REFERENCES = [("zoo", n) for n in ZOO] + [("transformer", n) for n in TRANSFORMERS]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("folder, name", MODELS_WITH_REFERENCES)
def test_input_gradient_matches_autograd(folder, name, exporter):
    ref = np.load(MODELS / folder / f"{name}.npz")
    m = onnxplain.load(MODELS / folder / f"{name}_{exporter}.onnx", device="cpu", preprocessing="unit")
    sess = m.session(Request(differentiate=(m.score,), wrt=(m.input,)))
    onehot = np.eye(m.num_classes, dtype=np.float32)[ref["targets"]]
    for cotangent, expected in ((onehot, ref["grad_target"]), (ref["cotangent"], ref["grad_cotangent"])):
        logits, grad = sess.run([m.score, GRAD.format(m.input)],
                                {m.input: ref["x"], COTANGENT.format(m.score): cotangent})
        assert rel_err(logits, ref["logits"]) < 1e-4
        assert rel_err(grad, expected) <= 1e-4, f"{name}/{exporter}: gradient differs from autograd"


@pytest.mark.parametrize("folder, name", MODELS_WITH_REFERENCES)
def test_batch_is_dynamic_and_batching_splits_exactly(folder, name):
    """One image at a time and three at once give the same gradients."""
    ref = np.load(MODELS / folder / f"{name}.npz")
    m = onnxplain.load(MODELS / folder / f"{name}_legacy.onnx", device="cpu", preprocessing="unit")
    whole = onnxplain.explain(m, ref["x"], "saliency", target=ref["targets"].tolist())
    single = onnxplain.explain(m, ref["x"], "saliency", target=ref["targets"].tolist(), batch_size=1)
    assert rel_err(single.attributions, whole.attributions) < 1e-5
    assert rel_err(whole.attributions, np.abs(ref["grad_target"])) <= 1e-4
