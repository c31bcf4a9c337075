"""Complexity, faithfulness correlation, ROAD and max-sensitivity against their definitions, each with an
independent reference written here, and on models whose answer is known."""
import math

import numpy as np
import pytest
from conftest import MODELS, rel_err, softmax
from test_perturbation import patch_matrix, patch_model

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.metrics import (REGISTRY, Case, complexity, deletion, faithfulness_correlation, linear_imputation, road,
                               max_sensitivity, road_curves, sparseness)
from onnxplain.preprocess import to_input

LOCALISATION = MODELS / "localisation"


# -- complexity ------------------------------------------------------------------------------------------------------
def test_sparseness_is_the_gini_index_by_the_pairwise_formula():
    """G = Σ_i Σ_j |a_i − a_j| / (2 n Σ a), a = |m| / max|m| + 1e-7 (Quantus's normalisation and shift)."""
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 6, 7)) * np.array([1, 10, 0.01])[:, None, None]
    maps[2, :3] = 0
    for got, m in zip(sparseness(maps), maps):
        a = np.abs(m).ravel() / np.abs(m).max() + 1e-7
        assert got == pytest.approx(np.abs(a[:, None] - a[None]).sum() / (2 * a.size * a.sum()), rel=1e-12)
    one_hot = np.zeros((8, 8))
    one_hot[3, 4] = -2.0
    assert sparseness(np.ones((8, 8)))[0] == pytest.approx(0, abs=1e-12)
    assert sparseness(one_hot)[0] == pytest.approx(1 - 1 / 64, abs=1e-5)     # the Gini of one in n: 1 − 1/n
    assert sparseness(np.zeros((8, 8)))[0] == pytest.approx(0, abs=1e-12)    # +1e-7 makes it uniform
    assert sparseness(maps[1] * 7.5)[0] == pytest.approx(sparseness(maps[1])[0], rel=1e-12)


def test_complexity_is_the_entropy_of_the_fractional_contributions():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 5, 9))
    for got, m in zip(complexity(maps), maps):
        p = [abs(v) / np.abs(m).sum() for v in m.ravel()]
        assert got == pytest.approx(-sum(q * math.log(q) for q in p if q > 0), rel=1e-9)
    one_hot = np.zeros((4, 4))
    one_hot[1, 1] = 3
    assert complexity(one_hot)[0] == pytest.approx(0, abs=1e-9)
    assert complexity(np.full((4, 4), -0.5))[0] == pytest.approx(math.log(16), rel=1e-9)
    assert np.isnan(complexity(np.zeros((4, 4)))[0])                          # 0/0: undefined


@pytest.mark.parametrize("bad, message", [(np.zeros((2, 2, 3, 3)), "maps have shape"), ("map", "array of numbers"),
                                          (np.full((1, 3, 3), np.nan), "map 0 has values that are NaN")])
def test_complexity_metrics_refuse_bad_maps_in_one_line(bad, message):
    for metric in (sparseness, complexity):
        with pytest.raises(OnnxplainError, match=message):
            metric(bad)


def test_registered_with_their_direction():
    expected = {"sparseness": ("complexity", "higher"), "complexity": ("complexity", "lower"),
                "faithfulness_correlation": ("faithfulness", "higher"), "road": ("faithfulness", "lower"),
                "road_lerf": ("faithfulness", "higher"), "max_sensitivity": ("robustness", "lower")}
    for name, (group, better) in expected.items():
        assert (REGISTRY[name].group, REGISTRY[name].better) == (group, better) and REGISTRY[name].paper
    maps = np.random.default_rng(2).normal(size=(2, 4, 4))
    assert REGISTRY["sparseness"](Case(None, None, maps, None)).tolist() == sparseness(maps).tolist()


# -- faithfulness correlation ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def linear():
    """Logits vec(x) · mat on 32×32 (4×4 patches of weights per class); positive images."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 4))
    x = rng.uniform(0.1, 1.0, (3, 3, 32, 32)).astype(np.float32)
    return patch_model(w), patch_matrix(w, 32), x


def contribution(x, mat, c):
    """Each pixel's share of logit c of the linear model: Σ_channels w ⊙ x."""
    return (x * mat[:, c].reshape(3, 32, 32)).sum(axis=-3)


def test_faithfulness_correlation_is_one_for_the_exact_contributions_of_a_linear_model(linear):
    """f(x) − f(x_S←0) = Σ_{i∈S} (w ⊙ x)_i for logits linear in x: the correlation is exactly 1, for any subsets."""
    m, mat, x = linear
    c = np.array([0, 1, 2])
    maps = np.stack([contribution(xi, mat, ci) for xi, ci in zip(x, c)])
    got = faithfulness_correlation(m, x, maps, c, runs=50, subset=40, seed=3)
    assert np.abs(got - 1).max() < 1e-5
    assert (faithfulness_correlation(m, x, -maps, c, runs=50, subset=40, seed=3) + 1 < 1e-5).all()


def test_faithfulness_correlation_follows_its_definition(linear):
    """Pearson over runs r of (Σ_{i∈S_r} m_i, f_c(x) − f_c(x_{S_r}←baseline)); S_r drawn as documented: run r takes
    default_rng(seed).choice(H·W, subset, replace=False), r-th call, for every image."""
    m, mat, x = linear
    maps = np.random.default_rng(4).normal(size=(3, 32, 32))
    runs, subset, c = 20, 100, 1
    got = faithfulness_correlation(m, x, maps, c, runs=runs, subset=subset, seed=7, baseline_kind="mean",
                                   batch_size=7)
    rng = np.random.default_rng(7)
    subsets = [rng.choice(32 * 32, subset, replace=False) for _ in range(runs)]
    for i in range(3):
        fill = x[i].mean(axis=(1, 2), keepdims=True)
        sums, falls = [], []
        for s in subsets:
            removed = np.zeros(32 * 32, bool)
            removed[s] = True
            perturbed = np.where(removed.reshape(32, 32), fill, x[i]).astype(np.float64)
            falls.append((x[i].astype(np.float64).ravel() - perturbed.ravel()) @ mat[:, c])
            sums.append(maps[i].ravel()[s].sum())
        assert got[i] == pytest.approx(np.corrcoef(sums, falls)[0, 1], abs=1e-4)   # float32 logits
    alone = faithfulness_correlation(m, x[2:], maps[2:], c, runs=runs, subset=subset, seed=7, baseline_kind="mean")
    assert alone[0] == got[2]                     # an image's value does not depend on the images scored with it
    assert np.isnan(faithfulness_correlation(m, x[:1], np.ones((1, 32, 32)), c, runs=runs, subset=subset))[0]


@pytest.mark.parametrize("options, message", [({"runs": 1}, "runs must be"), ({"subset": 0}, "subset must be"),
                                              ({"subset": 32 * 32}, "subset must be"),
                                              ({"baseline_kind": "noise"}, "baseline must be")])
def test_faithfulness_correlation_refuses_bad_options_in_one_line(linear, options, message):
    m, _, x = linear
    with pytest.raises(OnnxplainError, match=message):
        faithfulness_correlation(m, x, np.ones((3, 32, 32)), **options)
    with pytest.raises(OnnxplainError, match="maps have shape"):
        faithfulness_correlation(m, x, np.ones((3, 16, 16)))


# -- ROAD ------------------------------------------------------------------------------------------------------------
def imputed_by_dense_solve(image, removed):
    """Reference noisy-linear imputation without noise: one equation per removed pixel i,
    Σ_j w_ij (u_i − v_j) = 0 over its neighbours j inside the image (1/6 across an edge, 1/12 across a corner),
    assembled entry by entry and solved densely."""
    h, w = removed.shape
    ys, xs = np.nonzero(removed)
    var = {(y, x): k for k, (y, x) in enumerate(zip(ys, xs))}
    a, b = np.zeros((len(ys), len(ys))), np.zeros((len(ys), len(image)))
    for k, (y, x) in enumerate(zip(ys, xs)):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0) or not (0 <= y + dy < h and 0 <= x + dx < w):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                a[k, k] += weight
                if removed[y + dy, x + dx]:
                    a[k, var[y + dy, x + dx]] -= weight
                else:
                    b[k] += weight * image[:, y + dy, x + dx]
    out = image.astype(np.float64).copy()
    out[:, ys, xs] = np.linalg.solve(a, b).T
    return out


@pytest.mark.parametrize("shape, share", [((13, 17), 0.8), ((32, 32), 0.3), ((5, 40), 0.95), ((1, 30), 0.5)])
def test_linear_imputation_solves_the_neighbour_mean_equations(shape, share):
    rng = np.random.default_rng(5)
    image = rng.normal(size=(3, *shape))
    removed = rng.random(shape) < share
    removed.flat[0] = False                                   # at least one pixel kept
    exact = imputed_by_dense_solve(image, removed)
    assert np.abs(linear_imputation(image, removed, tol=1e-6) - exact).max() < 1e-5
    got = linear_imputation(image, removed)                   # the default tolerance: relative residual 1e-4
    assert (got[:, ~removed] == image[:, ~removed]).all() and np.abs(got - exact).max() < 1e-3


def test_linear_imputation_of_a_large_hole_is_smooth_and_accurate():
    """A disc of 74 % of a 96×96 image removed: the solution of the equations (checked by their residual, each
    pixel's value against the weighted mean of its neighbours) to within 1e-3 of a unit-range image."""
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[:96, :96]
    image = np.stack([np.sin(yy / 7), np.cos(xx / 11), yy / 96]) + rng.normal(size=(3, 96, 96)) * 0.1
    removed = (yy - 45) ** 2 + (xx - 50) ** 2 < 47 ** 2
    got = linear_imputation(image, removed, tol=1e-6)
    pad = np.pad(got, ((0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((96, 96)), 1)
    means = sum(wt * pad[:, 1 + dy:97 + dy, 1 + dx:97 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                for wt in [(1 / 12 if dy and dx else 1 / 6) * ((dy, dx) != (0, 0))])
    weights = sum((1 / 12 if dy and dx else 1 / 6) * ((dy, dx) != (0, 0)) * inside[1 + dy:97 + dy, 1 + dx:97 + dx]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert np.abs((got - means / weights)[:, removed]).max() < 1e-5
    assert np.abs(linear_imputation(image, removed) - got).max() < 1e-3


def test_road_curves_follow_their_definition(linear):
    """Without noise, point p of the curve is the class probability of the image whose ⌊p·H·W/100⌋ most (MoRF) or
    least (LeRF) relevant pixels are linearly imputed; "accuracy" is 1 while the class stays the top one."""
    m, mat, x = linear
    maps = np.random.default_rng(7).normal(size=(3, 32, 32))
    c = np.array([0, 2, 1])
    percentages = (10, 45, 90)
    for order in ("morf", "lerf"):
        got = road_curves(m, x, maps, c, order=order, percentages=percentages, noise=0, batch_size=4)
        acc = road_curves(m, x, maps, c, order=order, percentages=percentages, noise=0, score="accuracy")
        for i in range(3):
            ranked = np.argsort(-maps[i].ravel() if order == "morf" else maps[i].ravel(), kind="stable")
            for j, p in enumerate(percentages):
                removed = np.zeros(32 * 32, bool)
                removed[ranked[:int(p * 32 * 32 / 100)]] = True
                logits = imputed_by_dense_solve(x[i], removed.reshape(32, 32)).reshape(1, -1) @ mat
                assert got[i, j] == pytest.approx(softmax(logits)[0, c[i]], abs=1e-3)
                assert acc[i, j] == float(logits.argmax() == c[i]) or abs(np.sort(logits[0])[-2:] @ [1, -1]) < 1e-3
    assert rel_err(road(m, x, maps, c, percentages=percentages, noise=0), road_curves(
        m, x, maps, c, percentages=percentages, noise=0).mean(axis=1)) <= 1e-12


def test_road_noise_is_drawn_per_percentage_and_seed_not_per_batch(linear):
    """The noise has the documented standard deviation in pixel units (here the model's units: scale 1/255, std
    1) and an image's curve is the same alone or with others, at any batch size."""
    m, mat, x = linear
    maps = np.random.default_rng(8).normal(size=(3, 32, 32))
    both = road_curves(m, x, maps, 1, percentages=(30, 60), noise=0.05, seed=4, batch_size=5)
    alone = road_curves(m, x[1:2], maps[1:2], 1, percentages=(30, 60), noise=0.05, seed=4, batch_size=1)
    assert alone[0].tolist() == both[1].tolist()
    assert (road_curves(m, x, maps, 1, percentages=(30, 60), noise=0.05, seed=5) != both).any()
    lerf = REGISTRY["road_lerf"](Case(m, x, maps, np.ones(3, int)), percentages=(30, 60), noise=0.05, seed=4)
    assert lerf.tolist() == road(m, x, maps, 1, order="lerf", percentages=(30, 60), noise=0.05, seed=4).tolist()


@pytest.mark.parametrize("options, message", [({"order": "random"}, "order must be"), ({"percentages": (0, 50)},
                                              "percentages must be"), ({"percentages": [[10]]}, "percentages must"),
                                              ({"noise": -1}, "noise must be"), ({"score": "rank"}, "score must be")])
def test_road_refuses_bad_options_in_one_line(linear, options, message):
    m, _, x = linear
    with pytest.raises(OnnxplainError, match=message):
        road(m, x, np.ones((3, 32, 32)), **options)
    with pytest.raises(OnnxplainError, match="map 1 has values that are NaN"):
        road(m, x, np.stack([np.ones((32, 32)), np.full((32, 32), np.nan), np.ones((32, 32))]))


def test_road_and_deletion_rank_the_object_mask_above_random_maps():
    """The ground-truth shapes model (one class-deciding shape per scene): the object's mask (ties broken at
    random) removes the evidence first. ROAD (most relevant first) scores it lower than a random map on every scene
    but one in ten at most, and deletion does on average with the blur baseline. (With deletion's zero baseline the
    perfect map loses: the removed shape stays visible as a flat silhouette, the leak ROAD's imputation closes.)"""
    m = onnxplain.load(LOCALISATION / "shapes.onnx", device="cpu")
    data = np.load(LOCALISATION / "heldout.npz")
    x = np.stack([to_input(view, m.preprocessing) for view in data["images"][:10]])
    labels, masks = data["labels"][:10], np.unpackbits(data["masks"][:10], axis=-1).astype(bool)
    rng = np.random.default_rng(9)
    perfect, random = masks + 0.5 * rng.random(masks.shape), rng.random(masks.shape)
    assert (road(m, x, perfect, labels) < road(m, x, random, labels)).mean() >= 0.9
    assert deletion(m, x, perfect, labels, baseline_kind="blur").mean() < deletion(
        m, x, random, labels, baseline_kind="blur").mean()


# -- max-sensitivity -------------------------------------------------------------------------------------------------
def explainer(method):
    return lambda model, inputs, targets: onnxplain.explain(model, inputs, method, target=targets).maps


def test_max_sensitivity_of_a_method_linear_in_x(linear):
    """gradient × input on logits linear in x: Φ(x + δ) − Φ(x) = Σ_channels w ⊙ δ exactly, so the value is
    max_j ‖Σ_c w_c ⊙ δ_j‖ / ‖Φ(x)‖ over the documented draws δ_j = default_rng([seed, j]).uniform(−r, r), below
    the analytic bound r ‖Σ_c |w_c|‖ / ‖Φ(x)‖ that the worst corner of the ball reaches. Saliency (|gradient|,
    constant in x) does not move at all."""
    m, mat, x = linear
    c = np.array([2, 0, 1])
    maps = onnxplain.explain(m, x, "gradxinput", target=c).maps
    got = max_sensitivity(m, x, maps, c, explainer("gradxinput"), samples=12, radius=0.3, seed=2, batch_size=7)
    for i in range(3):
        w = mat[:, c[i]].reshape(3, 32, 32)
        moves = [np.linalg.norm((w * np.random.default_rng([2, j]).uniform(-0.3, 0.3, x.shape[1:])).sum(axis=0))
                 for j in range(12)]
        norm = np.linalg.norm(contribution(x[i], mat, c[i]))
        assert got[i] == pytest.approx(max(moves) / norm, rel=1e-4)
        assert got[i] < 0.3 * np.linalg.norm(np.abs(w).sum(axis=0)) / norm
    alone = max_sensitivity(m, x[1:2], maps[1:2], c[1:2], explainer("gradxinput"), samples=12, radius=0.3, seed=2)
    assert alone[0] == pytest.approx(got[1], rel=1e-6)
    saliency = onnxplain.explain(m, x, "saliency", target=c).maps
    assert np.abs(max_sensitivity(m, x, saliency, c, explainer("saliency"), samples=4)).max() < 1e-6
    assert REGISTRY["max_sensitivity"](Case(m, x, maps, c, explain=explainer("gradxinput")), samples=12,
                                       radius=0.3, seed=2).tolist() == pytest.approx(got.tolist(), rel=1e-6)


@pytest.mark.parametrize("options, message", [({"samples": 0}, "samples must be"), ({"radius": 0}, "radius must be"),
                                              ({"radius": "big"}, "radius must be")])
def test_max_sensitivity_refuses_bad_options_in_one_line(linear, options, message):
    m, _, x = linear
    with pytest.raises(OnnxplainError, match=message):
        max_sensitivity(m, x, np.ones((3, 32, 32)), 0, explainer("saliency"), **options)
    with pytest.raises(OnnxplainError, match="needs explain"):
        REGISTRY["max_sensitivity"](Case(m, x, np.ones((3, 32, 32)), np.zeros(3, int)))
    with pytest.raises(OnnxplainError, match="maps have shape"):
        max_sensitivity(m, x, np.ones((3, 32, 32)), 0, lambda *_: np.ones((2, 32, 32)), samples=1)
