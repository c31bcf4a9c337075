"""Deletion / insertion AUC and average drop / increase against their definitions, on a model with a known answer."""
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MODELS, rel_err, softmax, zoo
from test_perturbation import patch_matrix, patch_model

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.metrics import auc, confidence, curves, deletion, insertion, spearman, ssim
from onnxplain.perturb import gaussian_blur


@pytest.fixture(scope="module")
def two_class():
    """y₁ − y₀ = Σ_p v_p · mean(patch p) on 32×32, 4×4 patches; images with positive pixels."""
    rng = np.random.default_rng(0)
    w = np.stack([np.zeros((4, 4)), rng.normal(size=(4, 4)) * 3 + 1])
    x = rng.uniform(0.2, 1.0, (3, 3, 32, 32)).astype(np.float32)
    return patch_model(w), patch_matrix(w, 32), x


def test_auc_is_the_trapezoid_over_0_to_1():
    assert auc(np.linspace(1, 0, 11)) == pytest.approx(0.5)
    assert auc(np.full(5, 0.3)) == pytest.approx(0.3)
    assert auc(np.array([[0.0, 1.0], [1.0, 1.0]])).tolist() == pytest.approx([0.5, 1.0])


def test_blur_is_an_11_tap_gaussian_of_sigma_5_zero_padded():
    torch = pytest.importorskip("torch", reason="the reference convolution uses torch")
    x = np.random.default_rng(1).normal(size=(2, 3, 20, 24)).astype(np.float32)
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 5.0) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    weight = torch.tensor(np.tile(kernel, (3, 1, 1, 1)), dtype=torch.float32)
    expected = torch.nn.functional.conv2d(torch.tensor(x), weight, padding=5, groups=3).numpy()
    assert rel_err(gaussian_blur(x), expected) <= 1e-5


@pytest.mark.parametrize("mode, kind", [("deletion", "zero"), ("insertion", "mean"), ("insertion", "blur")])
def test_curves_follow_their_definition(two_class, mode, kind):
    """Point j changes the first min(j·step, H·W) pixels of the map's decreasing order: to the baseline (deletion)
    or from the baseline to the image (insertion); the score is the class probability."""
    m, mat, x = two_class
    maps = np.random.default_rng(2).normal(size=(3, 32, 32))
    step, c = 100, 1
    got = curves(m, x, maps, c, mode=mode, baseline_kind=kind, step=step, batch_size=8)
    n = int(np.ceil(32 * 32 / step))
    assert got.shape == (3, n + 1)
    for i in range(3):
        fill = {"zero": np.zeros_like(x[i]), "mean": np.broadcast_to(x[i].mean(axis=(1, 2), keepdims=True), x[i].shape),
                "blur": gaussian_blur(x[i])}[kind]
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for j in range(n + 1):
            changed = np.zeros(32 * 32, bool)
            changed[order[:min(j * step, 32 * 32)]] = True
            changed = changed.reshape(32, 32)
            image = np.where(changed, fill, x[i]) if mode == "deletion" else np.where(changed, x[i], fill)
            p = softmax(image.reshape(1, -1).astype(np.float64) @ mat)[0, c]
            assert abs(got[i, j] - p) < 1e-6
    aucs = (deletion if mode == "deletion" else insertion)(m, x, maps, c, baseline_kind=kind, step=step)
    assert rel_err(aucs, auc(got)) <= 1e-12


def test_a_perfect_map_beats_random_maps(two_class):
    """The perfect deletion order removes the pixels adding most to the class's logit first."""
    m, mat, x = two_class
    contribution = (x * (mat[:, 1] - mat[:, 0]).reshape(3, 32, 32)).sum(axis=1)   # each pixel's share of y₁ − y₀
    rng = np.random.default_rng(3)
    perfect_del = deletion(m, x, contribution, 1)
    perfect_ins = insertion(m, x, contribution, 1, baseline_kind="zero")
    for _ in range(3):
        noise = rng.normal(size=contribution.shape)
        assert (perfect_del < deletion(m, x, noise, 1)).all()
        assert (perfect_ins > insertion(m, x, noise, 1, baseline_kind="zero")).all()
    scored = onnxplain.evaluate(m, x, {"perfect": contribution, "random": rng.normal(size=contribution.shape)},
                                target=1, metrics=("deletion",))
    assert (scored["perfect"]["deletion"] < scored["random"]["deletion"]).all()
    assert rel_err(scored["perfect"]["deletion"], perfect_del) <= 1e-12


def test_average_drop_and_increase_follow_their_definition(two_class):
    """E = x ⊙ m, m the map min-max normalised; drop = max(0, Y − O)/Y·100, increase = 100·[O > Y]."""
    m, mat, x = two_class
    maps = np.random.default_rng(4).normal(size=(3, 32, 32))
    maps[0] = -np.abs(maps[0]) * 0.01 + 5          # an offset map: only its normalised shape matters
    c = np.array([0, 1, 1])
    drop, increase = confidence(m, x, maps, c)
    norm = (maps - maps.min(axis=(1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    y = softmax(x.reshape(3, -1).astype(np.float64) @ mat)[np.arange(3), c]
    o = softmax((x * norm[:, None]).reshape(3, -1).astype(np.float64) @ mat)[np.arange(3), c]
    assert np.abs(drop - np.maximum(0, y - o) / y * 100).max() < 1e-4
    assert increase.tolist() == ((o > y) * 100.0).tolist() and (o > y).any() and (o < y).any()


def test_evaluate_explains_then_scores():
    m, ref = zoo("resnet")
    x = ref["x"][:2]
    params = {"occlusion": {"window": 8, "stride": 8}, "rise": {"masks": 64}}
    calls = []
    res = onnxplain.evaluate(m, x, ["occlusion", "rise"], params=params, step=16,
                             progress=lambda d, n: calls.append((d, n)))
    assert set(res) == {"occlusion", "rise"} and calls and calls[-1][0] == calls[-1][1]
    for row in res.values():
        assert set(row) == {"deletion", "insertion", "drop", "increase"} and all(v.shape == (2,) for v in row.values())
        assert ((row["deletion"] >= 0) & (row["deletion"] <= 1)).all()
        assert ((row["drop"] >= 0) & (row["drop"] <= 100)).all()
    e = onnxplain.explain(m, x, "occlusion", window=8, stride=8)
    assert rel_err(res["occlusion"]["deletion"], deletion(m, x, e.maps, e.targets.tolist(), step=16)) <= 1e-12
    with pytest.raises(OnnxplainError, match="unknown metric"):
        onnxplain.evaluate(m, x, ["rise"], metrics=("pointing",))
    with pytest.raises(OnnxplainError, match="maps have shape"):
        deletion(m, x, np.zeros((3, 32, 32)))


def test_evaluate_command_prints_a_table_per_method():
    from onnxplain_cli.main import cli, main
    args = ["evaluate", str(MODELS / "mobilenet_v2.onnx"), str(IMAGES[0]), "-m", "rise", "-m", "occlusion",
            "-p", "masks=16", "-p", "window=112", "-p", "stride=112", "--step", "5000"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for method in ("rise", "occlusion"):
        at = lines.index(method)
        assert lines[at + 1].split() == ["image", "deletion", "insertion", "drop", "%", "increase", "%"]
        assert lines[at + 2].split()[0] == "chelsea.png" and lines[at + 3].split()[0] == "mean"
        assert all(0 <= float(v) <= 100 for v in lines[at + 2].split()[1:])
    with pytest.raises(SystemExit) as exit_:
        main(args[:5] + ["-p", "colour=3"])
    assert exit_.value.code == 2


def test_spearman_ranks_with_ties_averaged():
    x = np.random.default_rng(0).normal(size=(2, 5, 5))
    assert spearman(x, x ** 3) == pytest.approx(1) and spearman(x, -np.exp(x)) == pytest.approx(-1)
    # ranks (0, 1.5, 1.5, 3) and (0, 2, 1, 3): centred (−1.5, 0, 0, 1.5) and (−1.5, .5, −.5, 1.5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    with pytest.raises(OnnxplainError, match="same shape"):
        spearman(np.zeros(3), np.zeros(4))
    assert np.isnan(spearman(np.ones(4), [1, 2, 3, 4]))  # a constant map has no order


def ssim_by_windows(a, b, window=7):
    """SSIM (Wang et al. 2004) written out: every window × window square, its moments by plain sums."""
    r = max(a.max(), b.max()) - min(a.min(), b.min())
    c1, c2, n = (0.01 * r) ** 2, (0.03 * r) ** 2, window * window
    values = []
    for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
            x, y = a[i:i + window, j:j + window].ravel(), b[i:i + window, j:j + window].ravel()
            mx, my = sum(x) / n, sum(y) / n
            vx, vy = sum((x - mx) ** 2) / (n - 1), sum((y - my) ** 2) / (n - 1)
            cxy = sum((x - mx) * (y - my)) / (n - 1)
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


def test_ssim_follows_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 10)), rng.normal(size=(12, 10))
    assert ssim(a, b) == pytest.approx(ssim_by_windows(a, b), abs=1e-12)
    assert ssim(a, a + 0.3 * b) == pytest.approx(ssim_by_windows(a, a + 0.3 * b), abs=1e-12)
    assert ssim(a, a) == 1.0 and ssim(np.ones((8, 8)), np.ones((8, 8))) == 1.0
    # one 7×7 window of 0..48 against its reverse 48 − a: both means 24, both sample variances
    # σ² = Σ(a − 24)²/48 = 9800/48, covariance −σ², R = 48
    a7 = np.arange(49.0).reshape(7, 7)
    sigma2, c1, c2 = 9800 / 48, (0.01 * 48) ** 2, (0.03 * 48) ** 2
    expected = (2 * 24 * 24 + c1) * (-2 * sigma2 + c2) / ((2 * 24 ** 2 + c1) * (2 * sigma2 + c2))
    assert ssim(a7, 48 - a7) == pytest.approx(expected, abs=1e-12) and expected < -0.98
    # C1, C2 → 0: b = 2a gives the luminance term 2·24·48/(24² + 48²) = 0.8 and the structure term 2·2σ²/(σ² + 4σ²)
    assert ssim(a7, 2 * a7, data_range=1e-9) == pytest.approx(0.8 * 0.8, abs=1e-12)
    assert ssim(a7 - 24, 2 * (a7 - 24), data_range=1e-9) == pytest.approx(0.8, abs=1e-12)  # zero means: C1/C1


def test_ssim_equals_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the reference")
    rng = np.random.default_rng(1)
    for shape in [(7, 7), (16, 20), (64, 64)]:
        a, b = rng.normal(size=shape), rng.uniform(size=shape)
        r = max(a.max(), b.max()) - min(a.min(), b.min())
        assert ssim(a, b) == pytest.approx(metrics.structural_similarity(a, b, data_range=r), abs=1e-10)


@pytest.mark.parametrize("a, b, kwargs", [(np.zeros((8, 8)), np.zeros((8, 9)), {}),
                                          (np.zeros((6, 8)), np.zeros((6, 8)), {}),
                                          (np.zeros((8, 8)), np.zeros((8, 8)), {"window": 4}),
                                          (np.zeros((8, 8)), np.zeros((8, 8)), {"data_range": 0})])
def test_ssim_refuses_what_it_cannot_compare(a, b, kwargs):
    with pytest.raises(OnnxplainError, match="ssim"):
        ssim(a, b, **kwargs)
