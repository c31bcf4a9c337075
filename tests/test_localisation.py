"""Localisation against ground truth: the pointing-game metrics on hand-built maps, then the committed shapes model
(models/localisation/, built by models/build.py) on its held-out set: accuracy and the CAM family's pointing game."""
import numpy as np
import pytest
from conftest import MODELS
from PIL import Image
from test_cli import run

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import forward
from onnxplain.metrics import (REGISTRY, Case, energy_pointing_game, pointing_game, relevance_mass_accuracy,
                               relevance_rank_accuracy)
from onnxplain.preprocess import to_input

LOCALISATION = MODELS / "localisation"
CAM_FAMILY = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "cam"]
SUBSET = {"scorecam": 50, "ablationcam": 100}  # a pass per channel and image: scored on the first images only


def square_masks(n=1):
    masks = np.zeros((n, 8, 8), bool)
    masks[:, 2:4, 2:4] = True  # rows and columns 2 and 3
    return masks


def test_pointing_game_counts_the_maximum_on_the_mask():
    maps = np.zeros((4, 8, 8))
    maps[0, 3, 2] = 1                    # on the mask
    maps[1, 6, 6] = 1                    # off it
    maps[2, 0, 1] = maps[2, 2, 2] = 1    # a tie: the first maximum in row-major order, (0, 1), is off the mask
    maps[3] = -1                         # constant: the first pixel, (0, 0), is off the mask
    assert pointing_game(maps, square_masks(4)).tolist() == [1.0, 0.0, 0.0, 0.0]
    tie_on = np.zeros((8, 8))
    tie_on[2, 3] = tie_on[7, 0] = 5      # a tie whose first maximum is on the mask; a single H×W map is one image
    assert pointing_game(tie_on, square_masks()[0]).tolist() == [1.0]


@pytest.mark.parametrize("peak, tolerance, hit", [
    ((5, 3), 1, 0.0), ((5, 3), 1.99, 0.0), ((5, 3), 2, 1.0),            # 2 rows below the mask's pixel (3, 3)
    ((5, 5), 2.8, 0.0), ((5, 5), np.sqrt(8), 1.0), ((0, 7), 4.5, 1.0),  # diagonals: √8 from (3, 3), √20 from (2, 3)
])
def test_pointing_game_tolerance_is_the_euclidean_distance_to_the_nearest_mask_pixel(peak, tolerance, hit):
    m = np.zeros((1, 8, 8))
    m[(0, *peak)] = 1
    assert pointing_game(m, square_masks(), tolerance).tolist() == [hit]


def test_pointing_game_scores_an_empty_mask_as_a_miss():
    assert pointing_game(np.ones((1, 8, 8)), np.zeros((1, 8, 8))).tolist() == [0.0]


def test_pointing_game_refuses_a_negative_tolerance():
    with pytest.raises(OnnxplainError, match="tolerance"):
        pointing_game(np.ones((1, 8, 8)), square_masks(), tolerance=-1)


def test_energy_pointing_game_is_the_share_of_positive_mass_on_the_mask():
    maps = np.zeros((3, 8, 8))
    maps[0, 2, 2], maps[0, 3, 3], maps[0, 7, 7] = 1, 2, 1   # 3 of 4 on the mask
    maps[0, 0, 0], maps[0, 2, 3] = -5, -5                   # the negative part is ignored, on and off the mask
    maps[1] = 1                                             # uniform: the mask's area share, 4/64
    maps[2] = -1                                            # no positive mass
    assert energy_pointing_game(maps, square_masks(3).astype(np.uint8)) == pytest.approx([0.75, 4 / 64, 0.0])


def test_relevance_mass_accuracy_is_the_share_of_the_signed_sum_on_the_mask():
    maps = np.zeros((4, 8, 8))
    maps[0, 2, 2], maps[0, 0, 0] = 3, 1          # 3 of 4 on the mask
    maps[1] = 1                                  # uniform: the mask's 4 of 64 pixels
    maps[2, 2, 3], maps[2, 7, 7] = 2, -1         # signed, as Quantus: 2 / (2 − 1)
    maps[3, 5, 5] = 0                            # sums to zero: undefined
    got = relevance_mass_accuracy(maps, square_masks(4))
    assert got[:3] == pytest.approx([0.75, 4 / 64, 2.0]) and np.isnan(got[3])
    assert np.isnan(relevance_mass_accuracy(np.ones((8, 8)), np.zeros((8, 8)))).all()  # an empty mask


def test_relevance_rank_accuracy_is_the_mask_share_of_the_top_k_pixels():
    """K = 4 mask pixels; the map's 4 highest pixels are counted on the mask."""
    maps = np.zeros((3, 8, 8))
    maps[0, 2:4, 2:4] = [[4, 3], [2, 1]]                               # the 4 highest: the mask
    maps[1, 2, 2], maps[1, 0, 0:3] = 9, [8, 7, 6]                      # one of the 4 highest on it
    maps[2, 2:4, 2:4], maps[2, 6, 6] = 5, 7                            # 3 of 4 (the 4th highest is off it)
    assert relevance_rank_accuracy(maps, square_masks(3)).tolist() == [1.0, 0.25, 0.75]
    # ties: first in row-major order ranks higher; a constant map takes rows 0 and the first 4 pixels: none on the mask
    assert relevance_rank_accuracy(np.ones((8, 8)), square_masks()).tolist() == [0.0]
    assert np.isnan(relevance_rank_accuracy(np.ones((8, 8)), np.zeros((8, 8)))).all()


@pytest.mark.parametrize("fn", [pointing_game, energy_pointing_game, relevance_mass_accuracy,
                                relevance_rank_accuracy])
@pytest.mark.parametrize("maps, masks", [((2, 8, 8), (3, 8, 8)), ((1, 8, 8), (1, 8, 7)), ((8,), (8,)),
                                         ((1, 1, 8, 8), (1, 1, 8, 8))])
def test_metrics_refuse_mismatched_shapes(fn, maps, masks):
    with pytest.raises(OnnxplainError, match="same shape"):
        fn(np.zeros(maps), np.ones(masks, bool))
    nan = np.zeros((2, 8, 8))
    nan[1, 3, 4] = np.nan
    with pytest.raises(OnnxplainError, match="map 1 has values that are NaN"):  # maps checked as every metric's are
        fn(nan, np.ones((2, 8, 8), bool))


@pytest.fixture(scope="module")
def heldout():
    """The shapes model, its held-out inputs (through the sidecar's preprocessing), true labels and object masks."""
    m = onnxplain.load(LOCALISATION / "shapes.onnx", device="cpu")
    data = np.load(LOCALISATION / "heldout.npz")
    x = np.stack([to_input(view, m.preprocessing) for view in data["images"]])
    return m, x, data["labels"], np.unpackbits(data["masks"], axis=-1).astype(bool)


def test_the_shapes_model_classifies_the_heldout_set(heldout):
    m, x, labels, masks = heldout
    assert m.labels == ["square", "disc", "triangle", "cross", "diamond"] and x.shape == (200, 3, 64, 64)
    assert masks.shape == (200, 64, 64) and masks.any(axis=(1, 2)).all() and np.bincount(labels).min() >= 30
    assert (forward(m, x).argmax(1) == labels).mean() >= 0.95


def test_the_heldout_objects_are_not_where_a_centre_prior_points(heldout):
    """A map peaking at the image centre finds few objects: a high score needs the image."""
    _, _, _, masks = heldout
    yy, xx = np.mgrid[:64, :64]
    centre = np.broadcast_to(-((yy - 31.5) ** 2 + (xx - 31.5) ** 2), masks.shape)
    assert pointing_game(centre, masks).mean() < 0.2
    assert energy_pointing_game(np.ones(masks.shape), masks).mean() < 0.06  # the objects' mean area share


@pytest.mark.parametrize("method", CAM_FAMILY)
def test_cam_family_points_at_the_object(heldout, method):
    if method not in onnxplain.METHODS:
        pytest.skip(f"{method} is not registered yet")
    m, x, labels, masks = heldout
    n = SUBSET.get(method, len(x))
    e = onnxplain.explain(m, x[:n], method, target=labels[:n], batch_size=64)
    assert e.attributions.shape[1:] == (16, 16)  # the last conv layer, before global average pooling
    assert pointing_game(e.maps, masks[:n]).mean() >= 0.9
    assert energy_pointing_game(e.maps, masks[:n]).mean() >= 0.3  # a uniform map: the mask share, 0.05


def test_a_perfect_map_tops_every_localisation_metric_and_a_random_map_scores_chance(heldout):
    """On the 200 held-out scenes: the object mask as the map scores 1 on every localisation metric of the registry;
    uniform random maps (20 draws per scene) score the mask's area share on each, their expected value: the
    maximum of exchangeable values lands on the mask, its K highest pixels hit it, and its mass falls on it each
    in the share K/(H·W) (pointing game: Bernoulli draws, so within 5 standard errors; the others within 0.005)."""
    _, _, _, masks = heldout
    local = [m for m in REGISTRY.values() if m.group == "localisation"]
    assert {"pointing_game", "energy_pointing_game", "relevance_mass_accuracy",
            "relevance_rank_accuracy"} <= {m.name for m in local}
    perfect = Case(None, None, masks.astype(np.float64), np.zeros(len(masks), int), masks)
    share = masks.mean(axis=(1, 2))
    draws = 20
    rng = np.random.default_rng(0)
    random = Case(None, None, rng.uniform(size=(draws, *masks.shape)).reshape(-1, 64, 64), None,
                  np.tile(masks, (draws, 1, 1)))
    chance = np.tile(share, draws).mean()
    for metric in local:
        assert (metric(perfect) == 1).all(), metric.name
        got = metric(random).mean()
        bound = 5 * np.sqrt(chance * (1 - chance) / len(random.maps)) if metric.name == "pointing_game" else 0.005
        assert abs(got - chance) <= bound, (metric.name, got, chance)


FOUNDING = {"sise": {}, "fgvis": {}, "evidence": {"window": 5}, "evidence_hidden": {"window": 5}, "undesirable": {}}


@pytest.mark.parametrize("method", FOUNDING)
def test_founding_methods_on_the_ground_truth_model(heldout, method):
    """On 20 held-out scenes, the true class: SISE, FGVis (deletion) and both evidence routes put at least three
    times the object's share of the image on it (positive mass); undesirable pixels, the evidence against the class,
    put less than its share there."""
    m, x, labels, masks = heldout
    n = 20
    e = onnxplain.explain(m, x[:n], method, target=labels[:n].tolist(), **FOUNDING[method])
    share = energy_pointing_game(e.maps, masks[:n]).mean()
    area = masks[:n].mean()
    assert share < area if method == "undesirable" else share >= 3 * area, (share, area)


def test_founding_methods_run_from_the_command_line_on_the_ground_truth_model(tmp_path):
    """The CLI on two held-out scenes saved as PNG files writes, for each founding method, the map the API gives."""
    data = np.load(LOCALISATION / "heldout.npz")
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"scene{i}.png")
        Image.fromarray(data["images"][i]).save(paths[-1])
    model = LOCALISATION / "shapes.onnx"
    m = onnxplain.load(model, device="cpu")
    for method, params in FOUNDING.items():
        options = [a for key, value in params.items() for a in ("-p", f"{key}={value}")]
        out = run("explain", model, *paths, "-m", method, *options, "-o", tmp_path / method, "--device", "cpu")
        e = onnxplain.explain(m, paths, method, **params)
        for i, path in enumerate(paths):
            assert np.allclose(np.load(tmp_path / method / f"{path.stem}.{method}.npy"), e.maps[i], atol=1e-6), method
        assert m.label(int(e.targets[0])) in out
        if method == "fgvis":  # its numbers are printed per image; its explanation image stays in the files and e.info
            flipped = [line for line in out.splitlines() if line.startswith("  score ")]
            assert len(flipped) == 2 and "explanation" not in out
            assert all(f"deleted fraction {e.info['deleted_fraction'][i]:.4g}" in flipped[i] for i in range(2))


def test_the_registry_runs_a_metric_on_a_case_and_names_missing_ground_truth():
    from dataclasses import replace

    from onnxplain.metrics import REGISTRY, Case
    maps = np.random.default_rng(0).normal(size=(3, 6, 6))
    masks = np.zeros((3, 6, 6)); masks[:, 2:4, 1:5] = 1
    case = Case(model=None, inputs=None, maps=maps, targets=np.zeros(3, int))
    with pytest.raises(OnnxplainError, match="pointing_game needs masks"):
        REGISTRY["pointing_game"](case)
    np.testing.assert_array_equal(REGISTRY["pointing_game"](replace(case, masks=masks)), pointing_game(maps, masks))
    assert REGISTRY["energy_pointing_game"].better == "higher" and REGISTRY["deletion"].better == "lower"
