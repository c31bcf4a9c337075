"""Efficient evidence analysis: route (b) against its definition and PDA, route (a) against its definition."""
import sys

import numpy as np
import pytest
from conftest import IMAGES, MODELS, ROOT, rel_err, softmax, zoo
from test_perturbation import patch_model

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import as_batch, forward
from onnxplain.methods.gradient import input_gradient
from onnxplain.methods.perturbation import log_odds
from onnxplain.metrics import spearman
from onnxplain.perturb import window_sampler
from onnxplain.rewrite.graph import GRAD, TARGET, Request

sys.path.insert(0, str(ROOT / "benchmarks"))
from blackbox import small_mobilenet  # noqa: E402


def corners(n, k, s):
    return sorted(set(range(0, n - k + 1, s)) | {n - k})


def conditional_mean(sampler, x, i, j):
    """E[window | ring] of PDA's Gaussian, from its patch covariance: μ_w + Σ_wr Σ_rr⁻¹ (ring − μ_r)."""
    k, r, (_, h, w) = sampler.k, sampler.ring, x.shape
    oy, ox = min(max(i - r, 0), h - sampler.ph), min(max(j - r, 0), w - sampler.pw)
    inside = np.zeros((3, sampler.ph, sampler.pw), bool)
    inside[:, i - oy:i - oy + k, j - ox:j - ox + k] = True
    wi, ri = np.flatnonzero(inside), np.flatnonzero(~inside)
    cov, patch = sampler.cov, x[:, oy:oy + sampler.ph, ox:ox + sampler.pw].ravel()
    reg = cov[np.ix_(wi, ri)] @ np.linalg.inv(cov[np.ix_(ri, ri)])
    return (sampler.mu[wi] + reg @ (patch[ri] - sampler.mu[ri])).reshape(3, k, k)


def averaged(values, k, s, size):
    """Each pixel: the mean of the values of the windows containing it (an explicit loop)."""
    total, count = np.zeros((size, size)), np.zeros((size, size))
    for (i, j), v in zip([(i, j) for i in corners(size, k, s) for j in corners(size, k, s)], values):
        total[i:i + k, j:j + k] += v
        count[i:i + k, j:j + k] += 1
    return total / np.maximum(count, 1)


def test_first_order_evidence_follows_its_definition():
    """∇ₓ log₂ odds(c) by the chain rule through softmax from every class's exposed gradient, times x − E[x̃|ring]
    per window, averaged per pixel; on a zoo ResNet with windows crossing the borders."""
    m, ref = zoo("resnet")
    x, k, s, big = ref["x"][:2], 6, 5, 1000
    e = onnxplain.explain(m, x, "evidence", window=k, stride=s, laplace_n=big)
    z = forward(m, x).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c, kk = p.argmax(1), p.shape[1]
    sess = m.session(input_gradient(m))
    dz = np.stack([sess.run([GRAD.format(m.input)], {m.input: x, TARGET: np.full(2, j)})[0] for j in range(kk)], 1)
    rows = np.arange(2)
    pc = p[rows, c]
    eps = 1e-6                                                   # dL/dp_c by a central difference of PDA's L
    dl = (log_odds(pc + eps, big, kk) - log_odds(pc - eps, big, kk)) / (2 * eps)
    grad = (dl * pc)[:, None, None, None] * (dz[rows, c] - np.einsum("nj,njchw->nchw", p, dz))
    sampler = window_sampler(None, m.preprocessing, k, 2, (32, 32), True)
    for n in range(2):
        we = [(grad[n, :, i:i + k, j:j + k] * (x[n, :, i:i + k, j:j + k] - conditional_mean(sampler, x[n], i, j))).sum()
              for i in corners(32, k, s) for j in corners(32, k, s)]
        assert rel_err(e.maps[n], averaged(we, k, s, 32)) <= 1e-4
    assert e.attributions.shape == (2, 1, 32, 32) and e.targets.tolist() == c.tolist()


@pytest.fixture(scope="module")
def two_classes():
    """Linear logits and two classes: log-odds(0) = (z₀ − z₁)/ln 2 is linear in x."""
    rng = np.random.default_rng(3)
    return patch_model(rng.normal(size=(2, 4, 4)) * 0.3), rng.uniform(0.1, 0.9, (1, 3, 32, 32)).astype(np.float32)


def test_first_order_is_exact_when_the_log_odds_are_linear(two_classes):
    """Then WE_w = L(x) − L(x with w ← E[x̃_w | ring]) exactly (forward passes); Laplace's correction (N = 10¹²)
    is negligible."""
    m, x = two_classes
    k, s, big = 8, 4, 10 ** 12
    e = onnxplain.explain(m, x, "evidence", target=0, window=k, stride=s, laplace_n=big)
    sampler = window_sampler(None, m.preprocessing, k, 2, (32, 32), True)
    filled = []
    for i in corners(32, k, s):
        for j in corners(32, k, s):
            v = x[0].copy()
            v[:, i:i + k, j:j + k] = conditional_mean(sampler, x[0], i, j)
            filled.append(v)
    z = forward(m, np.concatenate([x, np.stack(filled)])).astype(np.float64)
    L = (z[:, 0] - z[:, 1]) / np.log(2)
    assert rel_err(e.maps[0], averaged(L[0] - L[1:], k, s, 32)) <= 1e-4
    # PDA averages p over noisy, clipped samples (Jensen's gap): close, not equal
    pda = onnxplain.explain(m, x, "pda", target=0, window=k, stride=s, samples=64, laplace_n=big)
    assert spearman(e.maps, pda.maps) >= 0.95 and rel_err(e.maps, pda.maps) <= 0.2


def test_hidden_evidence_follows_its_definition():
    """Windows of a hidden tensor replaced by blocks drawn (seeded) from the same tensor, scored by the graph cut
    there; WE per window, averaged per feature pixel, bilinearly brought to 32×32."""
    m, ref = zoo("resnet")
    x, layer, s, big = ref["x"][:1], m.layers()[2][0], 3, 1000
    e = onnxplain.explain(m, x, "evidence_hidden", layer=layer, window=8, stride=4, samples=s, seed=4, laplace_n=big)
    z, a = m.session(Request(expose=(m.score, layer), keep_outputs=False)).run([m.score, layer], {m.input: x})
    fh = a.shape[2]
    k, step = max(1, round(8 * fh / 32)), max(1, round(4 * fh / 32))
    upper = m.session(Request(expose=(m.score,), keep_outputs=False, cut=(layer,)))
    p, c = softmax(z.astype(np.float64))[0], int(z[0].argmax())
    wins = [(i, j) for i in corners(fh, k, step) for j in corners(fh, k, step)]
    rng = np.random.default_rng([4, 0])
    rows, cols = rng.integers(0, fh - k + 1, (len(wins), s)), rng.integers(0, fh - k + 1, (len(wins), s))
    we = []
    for n, (i, j) in enumerate(wins):
        batch = np.repeat(a, s, axis=0)
        for t in range(s):
            batch[t, :, i:i + k, j:j + k] = a[0, :, rows[n, t]:rows[n, t] + k, cols[n, t]:cols[n, t] + k]
        q = softmax(upper.run([m.score], {layer: batch})[0].astype(np.float64))[:, c].mean()
        we.append(log_odds(p[c], big, len(p)) - log_odds(q, big, len(p)))
    low = averaged(we, k, step, fh)
    assert rel_err(e.attributions[0], low) <= 1e-4
    up = np.clip((np.arange(32) + 0.5) * fh / 32 - 0.5, 0, fh - 1)      # bilinear, half-pixel centres
    lo = np.floor(up).astype(int)
    hi, f = np.minimum(lo + 1, fh - 1), up - np.floor(up)
    rows_up = low[lo] * (1 - f)[:, None] + low[hi] * f[:, None]
    assert rel_err(e.maps[0], rows_up[:, lo] * (1 - f) + rows_up[:, hi] * f) <= 1e-4


@pytest.fixture(scope="module")
def low_res():
    """MobileNetV2 at 64² (fully convolutional up to global pooling), the kitten, PDA k = 10 every 6 pixels."""
    m = onnxplain.load(small_mobilenet(64), preprocessing="imagenet-noresize", device="cpu", batch_size=64)
    x, _ = as_batch(m, IMAGES[:1])
    params = dict(window=10, stride=6)
    return m, x, params, onnxplain.explain(m, x, "pda", samples=8, **params)


def test_first_order_agrees_with_pda_on_mobilenet(low_res):
    m, x, params, pda = low_res
    e = onnxplain.explain(m, x, "evidence", **params)
    # only weakly: a 10×10 window fill is far outside the gradient's linear range on MobileNetV2 (measured
    # Spearman 0.15 here, ≈ 0 at 224²; PDA against itself with another seed: 0.94; the exact mean-fill evidence that
    # route (b) linearises: 0.51). Route (b) is exact only where the log-odds are linear (test above).
    assert e.targets[0] == pda.targets[0]
    assert spearman(e.maps, pda.maps) >= 0.1


def test_hidden_evidence_agrees_with_pda_on_mobilenet(low_res):
    m, x, params, pda = low_res
    layer = [name for name, shape in m.layers() if shape[2] == 8][-1]               # the 8² block end
    e = onnxplain.explain(m, x, "evidence_hidden", layer=layer, samples=8, **params)
    assert e.attributions.shape == (1, 8, 8) and e.layer == layer
    assert spearman(e.maps, pda.maps) >= 0.3


def test_both_routes_run_on_the_bundled_model_by_api_and_cli(mobilenet, tmp_path):
    for method, params in {"evidence": dict(stride=20), "evidence_hidden": dict(samples=2)}.items():
        e = onnxplain.explain(mobilenet, IMAGES[:1], method, **params)
        assert e.maps.shape == (1, 224, 224) and np.isfinite(e.maps).all() and e.maps.std() > 0, method
        assert 281 <= e.targets[0] <= 285
    from click.testing import CliRunner
    from onnxplain_cli.main import cli
    result = CliRunner().invoke(cli, ["explain", str(MODELS / "mobilenet_v2.onnx"), str(IMAGES[1]), "-m", "evidence",
                                      "-p", "stride=30", "-o", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "coffee.evidence.npy").shape == (224, 224)


@pytest.mark.parametrize("method, params, words", [
    ("evidence", {"window": 40}, "window"),
    ("evidence", {"stride": 0}, "stride"),
    ("evidence_hidden", {"window": 0}, "window"),
    ("evidence_hidden", {"samples": 0}, "samples"),
    ("evidence_hidden", {"layer": "nowhere"}, "no tensor named"),
    ("evidence", {"colours": 3}, "no parameter 'colours' \\(its parameters: window, stride"),
])
def test_user_errors_are_one_sentence(two_classes, method, params, words):
    m, x = two_classes
    with pytest.raises(OnnxplainError, match=words) as err:
        onnxplain.explain(m, x, method, **params)
    assert "\n" not in str(err.value)
