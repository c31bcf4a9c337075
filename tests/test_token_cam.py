"""CAM methods on vision transformers (issue 13, class 11): token tensors N×T×C laid out on the patch grid, found from
the patch embedding's output size and the number of extra (class) tokens, as pytorch-grad-cam's reshape_transform."""
import numpy as np
import pytest
from conftest import EXPORTERS, MODELS, exposed, rel_err

import onnxplain
from onnxplain import OnnxplainError
from onnxplain.explain import candidate_layers

X = np.random.default_rng(11).random((2, 3, 32, 32)).astype(np.float32)


def on_grid(t, grid):
    """The reference reshape_transform: drop the extra tokens, N×Gh×Gw×C → N×C×Gh×Gw."""
    patches = t[:, t.shape[1] - grid[0] * grid[1]:]
    return patches.reshape(len(t), *grid, -1).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cam_methods_read_a_vits_tokens_on_its_patch_grid(exporter):
    m = onnxplain.load(MODELS / "transformer" / f"vit_{exporter}.onnx", preprocessing="unit", device="cpu")
    tokens = m.tokens()
    assert tokens.grid == (4, 4) and tokens.default == tokens.norms[-3]  # the last block's norm1, 17 = 1 + 4·4 tokens
    assert tokens.default in candidate_layers(m)
    e = onnxplain.explain(m, X, "gradcam")
    assert e.layer == tokens.default and e.attributions.shape == (2, 4, 4) and e.maps.shape == (2, 32, 32)
    (a,), (da,) = exposed(m, X, [e.layer], e.targets)
    a, da = on_grid(a, tokens.grid), on_grid(da, tokens.grid)
    gradcam = np.maximum((da.mean(axis=(2, 3), keepdims=True) * a).sum(axis=1), 0)
    assert gradcam.max() > 0 and rel_err(e.attributions, gradcam) < 1e-5
    hires = onnxplain.explain(m, X, "hirescam", target=e.targets.tolist(), layer=tokens.norms[0])
    (a,), (da,) = exposed(m, X, [tokens.norms[0]], e.targets)
    reference = np.maximum((on_grid(a, tokens.grid) * on_grid(da, tokens.grid)).sum(axis=1), 0)
    assert rel_err(hires.attributions, reference) < 1e-5
    for method in ("gradcampp", "eigencam") if exporter == "dynamo" else ():  # the others share Grad-CAM's base
        assert np.isfinite(onnxplain.explain(m, X, method).maps).all()
    with pytest.raises(OnnxplainError, match="vision transformer's tokens"):
        onnxplain.explain(m, X, "scorecam")


def test_cnns_have_no_tokens(mobilenet):
    assert mobilenet.tokens() is None


def test_layercam_fuses_token_layers_each_on_its_grid():
    """LayerCAM's extra layers may be token tensors: each is laid out on its patch grid before the paper's fusion
    (tanh(2·M / max M), upsampled bilinearly, element-wise max), as the default layer is."""
    from test_cam_family import _up
    m = onnxplain.load(MODELS / "transformer" / "vit_dynamo.onnx", preprocessing="unit", device="cpu")
    tokens = m.tokens()
    layers = [tokens.default, tokens.norms[0]]
    e = onnxplain.explain(m, X, "layercam", layers=tokens.norms[0])
    fused = []
    for name in layers:
        (a,), (da,) = exposed(m, X, [name], e.targets)
        cam = np.maximum((np.maximum(on_grid(da, tokens.grid), 0) * on_grid(a, tokens.grid)).sum(axis=1), 0)
        fused.append(_up(np.tanh(2 * cam / cam.max(axis=(1, 2), keepdims=True)), m.input_size))
    assert e.layer == tokens.default and rel_err(e.maps, np.max(fused, axis=0)) < 1e-5
