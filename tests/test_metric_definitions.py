"""Complexity, faithfulness correlation, ROAD and max-sensitivity against their definitions, each with an
independent reference written here, and on models whose answer is known."""
import math

import numpy as np
import pytest
from conftest import rel_err
from test_perturbation import patch_matrix, patch_model

from onnxplain.errors import OnnxplainError
from onnxplain.metrics import REGISTRY, Case, complexity, faithfulness_correlation, sparseness


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
                "faithfulness_correlation": ("faithfulness", "higher")}
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
