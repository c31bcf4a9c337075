"""SISE (Sattarzadeh et al. 2021) step by step against numpy references written from the paper: the block-end layers
against the graph, α and the kept maps from exposed gradients, masks, scores from plain forwards of x ⊙ m_k, the
layer maps, Otsu's threshold against a brute-force search, and the cascading fusion."""
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET, MODELS, ZOO, exposed, rel_err, softmax, zoo
from onnxplain_cli.main import cli, main

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import candidate_layers, forward
from onnxplain.methods.sise import otsu
from onnxplain.perturb import bilinear_weights
from onnxplain.preprocess import to_input
from onnxplain.rewrite.graph import infer_shapes

LOCALISATION = MODELS / "localisation"


def _minmax(v):
    return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)


def _brute_otsu(v, bins=256):
    """The edge j/bins maximising the between-class variance of the binned values (each at its bin's centre), the
    classes computed from the pixels themselves."""
    centre = (np.minimum(np.floor(v.ravel() * bins), bins - 1) + 0.5) / bins
    best, at = -1.0, None
    for j in range(1, bins):
        low, high = centre[centre < j / bins], centre[centre >= j / bins]
        between = 0.0 if not (low.size and high.size) else \
            low.size * high.size / centre.size ** 2 * (low.mean() - high.mean()) ** 2
        if between > best + 1e-15:
            best, at = between, j / bins
    return at


def _sise(m, x, targets, layers, mu=0.0):
    """SISE from its definition: (V N×L×H×W, fused map, kept counts), scoring each mask by a plain forward."""
    acts, grads = exposed(m, x, layers, targets)
    views = np.zeros((len(x), len(layers), *m.input_size))
    kept = np.zeros((len(x), len(layers)), int)
    for i, l in np.ndindex(*kept.shape):
        alpha = grads[l][i].mean(axis=(1, 2))
        rows, cols = (bilinear_weights(n, big) for n, big in zip(acts[l].shape[2:], m.input_size))
        num = 0
        for k in np.flatnonzero(alpha > mu * alpha.max()):
            if acts[l][i, k].max() > acts[l][i, k].min():
                mask = _minmax(rows.astype(np.float64) @ acts[l][i, k] @ cols.T)
                s = softmax(forward(m, x[i:i + 1] * mask[None, None].astype(np.float32)).astype(np.float64))
                num, kept[i, l] = num + s[0, targets[i]] * mask / mask.sum(), kept[i, l] + 1
        views[i, l] = _minmax(num)
    fused = views[:, 0]
    for l in range(1, len(layers)):
        fused = np.stack([(f + v) * (v >= _brute_otsu(v)) for f, v in zip(fused, views[:, l])])
    return views, np.stack([_minmax(f) for f in fused]), kept


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_sise_follows_its_definition(name):
    m, ref = zoo(name)
    x, targets = ref["x"], ref["targets"]
    layers = candidate_layers(m)
    views, fused, kept = _sise(m, x, targets, layers)
    e = onnxplain.explain(m, x, "sise", target=targets.tolist(), batch_size=4)
    assert e.attributions.shape == (3, len(layers), 32, 32) and e.maps.shape == (3, 32, 32)
    assert (e.info["kept"] == kept).all() and (e.info["layers"] == layers).all() and kept.min() > 0
    assert rel_err(e.attributions, views) <= 1e-4 and rel_err(e.maps, fused) <= 1e-4
    assert e.maps.min() == 0 and (e.maps.max(axis=(1, 2)) == 1).all()


def test_otsu_is_the_between_class_variance_maximum():
    rng = np.random.default_rng(0)
    bimodal = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.7, 0.1, 300)]).clip(0, 1)
    cases = [rng.uniform(size=(16, 16)), rng.uniform(size=(32, 32)) ** 3, bimodal, np.array([0.0, 1.0, 1.0])]
    for v in cases:
        assert otsu(v) == _brute_otsu(v)
    assert 0.3 < otsu(bimodal) < 0.5 and otsu(np.array([0.0, 1.0, 1.0])) == 1 / 256  # the first maximising edge


def test_automatic_layers_are_the_inputs_of_each_down_sampling_and_the_last_spatial_tensor():
    """In every zoo model and MobileNetV2: each automatic layer but the last is read by a node whose output is
    smaller in height and width, one layer per resolution; the last is the last spatial tensor."""
    for path in [*(MODELS / "zoo" / f"{n}_dynamo.onnx" for n in ZOO), MOBILENET]:
        m = onnxplain.load(path, device="cpu")
        layers, found = candidate_layers(m), m.layers()
        proto = infer_shapes(m.proto)
        hw = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)[2:] for vi in proto.graph.value_info}
        for name in layers[:-1]:
            outs = [o for n in proto.graph.node if name in n.input for o in n.output]
            assert any(len(hw.get(o, ())) == 2 and np.prod(hw[o]) < np.prod(hw[name]) for o in outs), (path, name)
        assert layers[-1] == found[-1][0] and len(layers) == len({s[2:] for _, s in found})
    assert len(layers) == 5  # MobileNetV2: 112, 56, 28, 14 and 7 pixels


def test_layers_and_mu_are_overridable():
    m, ref = zoo("resnet")
    x, targets = ref["x"][:2], ref["targets"][:2]
    layers = candidate_layers(m)[1:]
    views, fused, kept = _sise(m, x, targets, layers, mu=0.5)
    e = onnxplain.explain(m, x, "sise", target=targets.tolist(), layers=",".join(layers), mu=0.5)
    assert (e.info["layers"] == layers).all() and (e.info["kept"] == kept).all()
    assert rel_err(e.attributions, views) <= 1e-4 and rel_err(e.maps, fused) <= 1e-4
    full = onnxplain.explain(m, x, "sise", target=targets.tolist())
    assert (kept < full.info["kept"][:, 1:]).all()  # μ = 0.5 keeps fewer maps than μ = 0


def test_sise_on_mobilenet(mobilenet):
    e = onnxplain.explain(mobilenet, IMAGES[:1], "sise", mu=0.5)
    assert 281 <= e.targets[0] <= 285 and e.attributions.shape == (1, 5, 224, 224) and e.maps.shape == (1, 224, 224)
    assert np.isfinite(e.maps).all() and e.maps.min() == 0 and e.maps.max() == 1 and (e.info["kept"] > 0).all()


def test_cli_runs_sise_and_refuses_bad_parameters(tmp_path, capsys):
    result = CliRunner().invoke(cli, ["explain", str(MOBILENET), str(IMAGES[1]), "-o", str(tmp_path), "-m", "sise",
                                      "-p", "mu=0.9", "-p", "layers=hardtanh_26,hardtanh_34"], catch_exceptions=False)
    assert result.exit_code == 0 and "espresso" in result.output, result.output
    assert np.load(tmp_path / "coffee.sise.npy").shape == (224, 224)
    for param, message in [("mu=1", "sise: mu must be a number in [0, 1), not 1"),
                           ("mu=abc", "sise: mu must be a number in [0, 1), not 'abc'"),
                           ("bins=1", "sise: bins must be a whole number, at least 2, not 1"),
                           ("layers=nope", "sise: 'nope' is not a tensor with spatial extent")]:
        with pytest.raises(SystemExit):
            main(["explain", str(MOBILENET), str(IMAGES[0]), "-m", "sise", "-p", param, "-o", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(OnnxplainError, match="method 'sise' has no parameter 'gamma'"):
        onnxplain.explain(onnxplain.load(MOBILENET), IMAGES[0], "sise", gamma=2)


@pytest.mark.skipif(not (LOCALISATION / "heldout.npz").exists(), reason="the localisation model is not built yet")
def test_sise_localises_at_least_as_well_as_gradcam():
    """Energy-based pointing game of the true class on the held-out shapes (first 50): SISE ≥ Grad-CAM."""
    from onnxplain.metrics import energy_pointing_game
    m = onnxplain.load(LOCALISATION / "shapes.onnx", device="cpu")
    data = np.load(LOCALISATION / "heldout.npz")
    x = np.stack([to_input(view, m.preprocessing) for view in data["images"][:50]])
    labels, masks = data["labels"][:50], np.unpackbits(data["masks"][:50], axis=-1).astype(bool)
    energy = {method: energy_pointing_game(onnxplain.explain(m, x, method, target=labels).maps, masks).mean()
              for method in ("sise", "gradcam")}
    assert energy["sise"] >= energy["gradcam"], energy
