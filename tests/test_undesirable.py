"""Undesirable pixels (Kang et al. 2019): known answers on a linear patch model, PDA's evidence, the removal metric
by its definition, and the claim on the bundled MobileNetV2."""
import numpy as np
import pytest
from conftest import IMAGES, MOBILENET, rel_err, softmax
from test_perturbation import paint, patch_matrix, patch_means, patch_model

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.metrics import undesirable_removal


@pytest.fixture(scope="module")
def rivals():
    """Five classes on 4×4 patches of 32×32 images: class 0 wins everywhere but patch (1, 2) counts against it;
    patch (3, 0) is strong evidence for class 1, patch (0, 3) for class 2; classes 3 and 4 are weak."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 4, 4)) * 0.3
    w[0] += 3
    w[0, 1, 2] = -4
    w[1, 3, 0], w[2, 0, 3] = 6, 5
    w[3:] -= 1
    x = rng.uniform(0.4, 1.0, (2, 3, 32, 32)).astype(np.float32)
    return patch_model(w), w, x


def test_maps_are_the_evidence_against_the_target_and_for_its_rivals(rivals):
    """Occluding window w (= patch p) with zeros takes e_k = w[k, p]·mean(x_p) from logit k: against = −e_c,
    competing = the max of e_k over the top-K other classes, union = the max of both."""
    m, w, x = rivals
    e = onnxplain.explain(m, x, "undesirable", window=8, stride=8, competitors=2, score="logit")
    logits = x.reshape(2, -1).astype(np.float64) @ patch_matrix(w, 32)
    order = np.argsort(-logits, axis=1)
    assert e.targets.tolist() == [0, 0] and np.array_equal(e.info["competitors"], order[:, 1:3])
    evidence = paint(w[None] * patch_means(x, 4)[:, None], 32)                      # N×5×H×W
    against = -evidence[:, 0]
    competing = np.stack([evidence[i, order[i, 1:3]].max(axis=0) for i in range(2)])
    expected = np.stack([against, competing, np.maximum(against, competing)], axis=1)
    assert e.attributions.shape == (2, 3, 32, 32) and rel_err(e.attributions, expected) <= 1e-5
    assert np.array_equal(e.maps, e.attributions[:, 2])
    for i in range(2):                                                               # where the maps peak
        assert np.unravel_index(e.attributions[i, 0].argmax(), (32, 32)) in [(r, c) for r in range(8, 16)
                                                                              for c in range(16, 24)]
        assert np.unravel_index(e.attributions[i, 1].argmax(), (32, 32))[1] // 8 in (0, 3)
        assert e.attributions[i, 0].min() < 0                                        # signed: evidence for c


def test_probabilities_find_the_same_patches(rivals):
    """On probabilities the most undesirable patches are still the one against class 0 and those for 1 and 2."""
    m, _, x = rivals
    e = onnxplain.explain(m, x, "undesirable", window=8, stride=8)
    top = {tuple(p) for p in np.argwhere(e.maps[0, ::8, ::8] >= np.sort(e.maps[0, ::8, ::8].ravel())[-3])}
    assert top == {(1, 2), (3, 0), (0, 3)}


def test_sampled_evidence_is_pdas_weight_of_evidence(rivals):
    """With PDA's sampling, one stream of samples gives the weight of evidence of the target and its rivals,
    the same as `pda` with those classes."""
    m, _, x = rivals
    params = dict(window=8, stride=8, samples=3, sampling="marginal", seed=4)
    e = onnxplain.explain(m, x[:1], "undesirable", competitors=3, **params)
    we = onnxplain.explain(m, x[:1], "pda", classes=(0, *e.info["competitors"][0]), **params).attributions[0]
    assert rel_err(e.attributions[0, 0], -we[0]) <= 1e-6
    assert rel_err(e.attributions[0, 1], we[1:].max(axis=0)) <= 1e-6


def test_removal_metric_follows_its_definition(rivals):
    """Δp_c and Δ(p_c − max_{c′≠c} p_c′) after setting the ⌈q·H·W/100⌉ top pixels of the map to zero, and the mean
    of the same over random removals: draw r of image i the first pixels of default_rng([seed, i, r]).permutation."""
    m, w, x = rivals
    mat = patch_matrix(w, 32)
    maps = np.random.default_rng(1).normal(size=(2, 32, 32))
    q, repeats, seed, c = (3, 50), 2, 7, 1

    def p_and_margin(images):
        p = softmax(images.reshape(len(images), -1).astype(np.float64) @ mat)
        return p[:, c], p[:, c] - np.delete(p, c, axis=1).max(axis=1)

    got = undesirable_removal(m, x, maps, c, q=q, repeats=repeats, seed=seed, batch_size=5)
    p0, m0 = p_and_margin(x)
    for i in range(2):
        for j, share in enumerate(q):
            n = int(np.ceil(share * 1024 / 100))
            orders = [np.argsort(-maps[i].ravel(), kind="stable")] + [
                np.random.default_rng([seed, i, r]).permutation(1024) for r in range(repeats)]
            removed = np.stack([x[i] * ~np.isin(np.arange(1024), o[:n]).reshape(32, 32) for o in orders])
            p, margin = p_and_margin(removed)
            assert abs(got["target"][i, j] - (p[0] - p0[i])) < 1e-6
            assert abs(got["margin"][i, j] - (margin[0] - m0[i])) < 1e-6
            assert abs(got["target_random"][i, j] - (p[1:].mean() - p0[i])) < 1e-6
            assert abs(got["margin_random"][i, j] - (margin[1:].mean() - m0[i])) < 1e-6


def test_removing_undesirable_pixels_helps_the_target_more_than_random_pixels(mobilenet):
    """MobileNetV2 on its two photos (coarse windows, for speed): removing the top 1, 5, 10 % of the union raises
    p(target) and the margin more than removing as many random pixels, averaged over the images."""
    e = onnxplain.explain(mobilenet, IMAGES, "undesirable", window=56, stride=28)
    r = undesirable_removal(mobilenet, IMAGES, e.maps, e.targets, q=(1, 5, 10), repeats=4)
    mean = {k: v.mean(axis=0) for k, v in r.items()}
    assert (mean["target"] > mean["target_random"]).all(), mean
    assert (mean["margin"] > mean["margin_random"]).all(), mean


def test_cli_writes_the_union_and_both_maps_and_lists_the_method(tmp_path):
    from click.testing import CliRunner
    from onnxplain_cli.main import cli
    run = CliRunner().invoke(cli, ["explain", str(MOBILENET), str(IMAGES[0]), "-m", "undesirable",
                                   "-p", "window=112", "-p", "stride=112", "-o", str(tmp_path)], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    union = np.load(tmp_path / "chelsea.undesirable.npy")
    assert union.shape == (224, 224) and (tmp_path / "chelsea.undesirable.png").is_file()
    against, competing = (np.load(tmp_path / f"chelsea.undesirable.{p}.npy") for p in ("against", "competing"))
    assert np.array_equal(union, np.maximum(against, competing))
    assert "undesirable" in CliRunner().invoke(cli, ["methods"]).output


@pytest.mark.parametrize("call, words", [
    (dict(sampling="noise"), "sampling must be"),
    (dict(competitors=0), "competitors"),
    (dict(competitors=5), "competitors"),
    (dict(window=40), "window"),
    (dict(sampling="conditional", score="logit"), "needs probabilities"),
    (dict(metric_q=0), "0 < q ≤ 100"),
])
def test_user_errors_are_one_sentence(rivals, call, words):
    m, _, x = rivals
    with pytest.raises(OnnxplainError, match=words) as err:
        if "metric_q" in call:
            undesirable_removal(m, x, np.zeros((2, 32, 32)), q=call["metric_q"])
        else:
            onnxplain.explain(m, x, "undesirable", **call)
    assert "\n" not in str(err.value)
