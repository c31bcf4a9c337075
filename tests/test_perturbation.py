"""Black-box methods against a model whose answer is known by construction, their definitions, and Captum."""
import tracemalloc
from math import factorial

import numpy as np
import pytest
from conftest import IMAGES, MODELS, rel_err, softmax, zoo
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import OnnxplainError
from onnxplain.explain import forward
from onnxplain.methods.perturbation import LIME, _rise_masks
from onnxplain.perturb import (REFERENCE, PatchGaussian, WindowSampler, fit_reference, load_reference,
                               window_sampler)


# -- a linear score over image patches, built as an ONNX graph ---------------------------------------------------
def patch_matrix(w, size, layout="NCHW"):
    """(C·H·W)×K matrix of y_c = Σ_p w[c, p] · (mean of x over patch p, all channels), patches an n×n grid."""
    k, n, _ = w.shape
    cell = size // n
    per_pixel = np.repeat(np.repeat(w, cell, axis=1), cell, axis=2) / (3 * cell * cell)     # K×H×W
    mat = np.broadcast_to(per_pixel[:, None], (k, 3, size, size))
    if layout == "NHWC":
        mat = mat.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(mat.reshape(k, -1).T, dtype=np.float32)


def patch_model(w, size=32, layout="NCHW", aux=False):
    """The model y = vec(x) · patch_matrix (logits); with aux, a second output 2·y."""
    mat = patch_matrix(np.asarray(w, np.float64), size, layout)
    dims = ["N", 3, size, size] if layout == "NCHW" else ["N", size, size, 3]
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weights"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", mat.shape[1]])]
    inits = [numpy_helper.from_array(np.array([-1, mat.shape[0]], np.int64), "shape"),
             numpy_helper.from_array(mat, "weights")]
    if aux:
        nodes.append(helper.make_node("Mul", ["logits", "two"], ["aux"]))
        inits.append(numpy_helper.from_array(np.array(2, np.float32), "two"))
        outputs.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", mat.shape[1]]))
    graph = helper.make_graph(nodes, "patches", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return onnxplain.load(proto, preprocessing="unit", device="cpu", output="logits")  # (aux is N×classes too)


def patch_means(x, n):
    """N×n×n means of each patch over its pixels and channels (N×3×H×W input)."""
    nb, c, h, w = x.shape
    return x.reshape(nb, c, n, h // n, n, w // n).mean(axis=(1, 3, 5))


def paint(values, size):
    """N×n×n patch values → N×H×W."""
    cell = size // values.shape[-1]
    return np.repeat(np.repeat(values, cell, axis=-2), cell, axis=-1)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 4))
    x = rng.uniform(0.1, 1.0, (2, 3, 32, 32)).astype(np.float32)
    return patch_model(w), w, x


# -- Occlusion -------------------------------------------------------------------------------------------------
def test_occlusion_recovers_patch_weights(linear):
    m, w, x = linear
    e = onnxplain.explain(m, x, "occlusion", target=[0, 2], window=8, stride=8, score="logit")
    expected = paint(w[[0, 2]] * patch_means(x, 4), 32)
    assert rel_err(e.maps, expected) <= 1e-5
    assert e.attributions.shape == x.shape and rel_err(e.attributions, np.repeat(expected[:, None], 3, 1)) <= 1e-5


def test_occlusion_follows_its_definition_with_clipped_windows(linear):
    """Windows every `stride` pixels up to ⌈(H−k)/s⌉·s, the last clipped; a pixel averages its windows' drops."""
    m, w, x = linear
    mat = patch_matrix(w, 32)
    k, s, c = 12, 8, 1
    fill = x.mean(axis=(2, 3), keepdims=True)                        # the "mean" baseline
    total, count = np.zeros((2, 32, 32)), np.zeros((32, 32))
    starts = [s * i for i in range(int(np.ceil((32 - k) / s)) + 1)]
    for i in starts:
        for j in starts:
            occluded = x.copy()
            occluded[:, :, i:i + k, j:j + k] = np.broadcast_to(fill, x.shape)[:, :, i:i + k, j:j + k]
            drop = (x.reshape(2, -1) @ mat - occluded.reshape(2, -1) @ mat)[:, c]
            total[:, i:i + k, j:j + k] += drop[:, None, None]
            count[i:i + k, j:j + k] += 1
    e = onnxplain.explain(m, x, "occlusion", target=c, window=k, stride=s, baseline="mean", score="logit",
                          batch_size=5)
    assert rel_err(e.maps, total / count) <= 1e-4                     # float32 logits minus float32 logits


def test_score_can_be_a_function_of_every_output():
    w = np.random.default_rng(1).normal(size=(2, 4, 4))
    m = patch_model(w, aux=True)
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    logit = onnxplain.explain(m, x, "occlusion", target=1, window=8, stride=4, score="logit")
    aux = onnxplain.explain(m, x, "occlusion", target=1, window=8, stride=4, score=lambda out: out["aux"])
    assert rel_err(aux.maps, 2 * logit.maps) <= 1e-5 and rel_err(aux.scores, 2 * logit.scores) <= 1e-6
    diff = onnxplain.explain(m, x, "occlusion", window=8, stride=4,
                             score=lambda out: out["logits"][:, 0] - out["logits"][:, 1])   # N scores: one column
    other = onnxplain.explain(m, x, "occlusion", target=0, window=8, stride=4, score="logit")
    assert diff.targets.tolist() == [0] and rel_err(diff.maps, other.maps - logit.maps) <= 1e-5


def test_nhwc_models_are_explained_in_their_layout(linear):
    m, w, x = linear
    nhwc = patch_model(w, layout="NHWC")
    a = onnxplain.explain(m, x, "occlusion", target=1, window=8, stride=4)
    b = onnxplain.explain(nhwc, x.transpose(0, 2, 3, 1), "occlusion", target=1, window=8, stride=4)
    assert b.attributions.shape == (2, 32, 32, 3) and rel_err(b.maps, a.maps) <= 1e-5
    pda = dict(window=4, stride=4, samples=2, classes=(0, 1, 2))      # N×classes×H×W whatever the layout
    a = onnxplain.explain(m, x, "pda", **pda)
    b = onnxplain.explain(nhwc, x.transpose(0, 2, 3, 1), "pda", **pda)
    assert b.attributions.shape == (2, 3, 32, 32) and rel_err(b.attributions, a.attributions) <= 1e-5


# -- KernelSHAP and LIME ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("segments, samples", [(2, 64), (4, 600)])  # enumerated (2^4 − 2 ≤ 64) and sampled
def test_kernelshap_recovers_patch_weights(linear, segments, samples):
    """For a linear score the Shapley value of a patch is its weight times its (x − baseline) contribution."""
    m, w, x = linear
    e = onnxplain.explain(m, x, "kernelshap", target=[1, 0], segments=segments, samples=samples, score="logit")
    cell = 4 // segments
    expected = w[[1, 0]] * patch_means(x, 4)
    expected = expected.reshape(2, segments, cell, segments, cell).sum(axis=(2, 4))   # the patches of a segment
    assert rel_err(e.maps, paint(expected, 32)) <= 1e-6


def test_kernelshap_enumeration_equals_the_shapley_formula():
    """φ_j = Σ_S |S|!(d−|S|−1)!/d! (f(S ∪ j) − f(S)) by brute force over the 2×2 grid, on a non-linear model."""
    m, ref = zoo("resnet")
    x, c = ref["x"][:1], 3
    masks = np.array([[(s >> j) & 1 for j in range(4)] for s in range(16)], np.float32)
    seg = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 16, 0), 16, 1)
    images = x * masks[:, seg][:, None]
    f = softmax(forward(m, images).astype(np.float64))[:, c]
    phi = np.zeros(4)
    for s in range(16):
        for j in range(4):
            if not (s >> j) & 1:
                size = bin(s).count("1")
                phi[j] += factorial(size) * factorial(3 - size) / factorial(4) * (f[s | 1 << j] - f[s])
    e = onnxplain.explain(m, x, "kernelshap", target=c, segments=2, samples=100)
    assert rel_err(e.maps[0], phi[seg]) <= 1e-5


def test_lime_recovers_patch_weights(linear):
    m, w, x = linear
    exact = onnxplain.explain(m, x, "lime", target=2, segments=4, samples=400, alpha=0.0, score="logit")
    expected = paint(w[2] * patch_means(x, 4), 32)
    assert rel_err(exact.maps, expected) <= 1e-6
    ridge = onnxplain.explain(m, x, "lime", target=2, segments=4, samples=400, score="logit")   # α = 1 shrinks
    assert rel_err(ridge.maps, expected) <= 0.05


def test_lime_is_the_weighted_ridge_fit_of_its_samples():
    """β of argmin Σ π(z)(f(z) − β₀ − zβ)² + α‖β‖², π = exp(−D²/(2σ²)), D the cosine distance to 1, on a
    non-linear model, against the normal equations written out with an unpenalised intercept column."""
    m, ref = zoo("resnet")
    x, c, method = ref["x"][:1], 5, LIME(samples=300, segments=4, alpha=0.5, seed=3)
    e = onnxplain.explain(m, x, "lime", target=c, samples=300, segments=4, alpha=0.5, seed=3)
    z, _ = method.coalitions(16, np.random.default_rng([3, 0]))
    seg = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 8, 0), 8, 1)
    y = softmax(forward(m, x * z[:, seg][:, None].astype(np.float32)).astype(np.float64))[:, c]
    d = 1 - z.sum(1) / (np.linalg.norm(z, axis=1) * 4)
    pi = np.exp(-d ** 2 / (2 * 0.25 ** 2))
    design = np.hstack([np.ones((len(z), 1)), z])
    penalty = np.diag([0.0] + [0.5] * 16)
    beta = np.linalg.solve(design.T @ (pi[:, None] * design) + penalty, design.T @ (pi * y))[1:]
    assert z[0].all() and rel_err(e.maps[0], beta[seg]) <= 1e-6


# -- RISE ------------------------------------------------------------------------------------------------------
def test_rise_follows_its_definition():
    """S = Σ f_c(x ⊙ M_i) M_i / (N·p), masks upsampled by torch's bilinear interpolation and cropped at the shifts."""
    torch = pytest.importorskip("torch", reason="the independent upsampling uses torch")
    m, ref = zoo("resnet")
    x, c, n, s, p = ref["x"][:1], 7, 300, 5, 0.4
    grid, shifts, _, _ = _rise_masks(n, s, p, 11, 32, 32)
    cell = -(-32 // s)
    up = torch.nn.functional.interpolate(torch.tensor(grid[:, None]), size=((s + 1) * cell,) * 2, mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    masks = np.stack([u[dy:dy + 32, dx:dx + 32] for u, (dy, dx) in zip(up, shifts)])
    f = softmax(forward(m, x * masks[:, None]).astype(np.float64))[:, c]
    expected = np.tensordot(f, masks, axes=1) / (n * p)
    e = onnxplain.explain(m, x, "rise", target=c, masks=n, cells=s, p=p, seed=11, batch_size=64)
    assert rel_err(e.maps[0], expected) <= 1e-5


def test_rise_is_reproducible_with_a_seed():
    m, ref = zoo("resnet")
    run = lambda seed, batch: onnxplain.explain(m, ref["x"], "rise", masks=120, seed=seed, batch_size=batch).maps
    a = run(0, 16)
    assert np.array_equal(a, run(0, 16))
    assert rel_err(run(0, 7), a) <= 1e-5        # batches cut elsewhere (and across images): the same masks
    assert rel_err(run(1, 16), a) > 1e-2


def test_rise_memory_stays_bounded_with_10000_masks(linear):
    """Masks are made batch by batch: 10 000 masks at 32×32 would be 41 MB (inputs 123 MB) held at once."""
    m, w, x = linear
    tracemalloc.start()
    try:
        e = onnxplain.explain(m, x[:1], "rise", masks=10_000, batch_size=50, score="logit", target=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"
    assert np.isfinite(e.maps).all() and e.maps.std() > 0


# -- PDA -------------------------------------------------------------------------------------------------------
def test_reference_statistics_are_the_images_autocovariance():
    rng = np.random.default_rng(0)
    img = (rng.uniform(0, 255, (20, 24, 3))).astype(np.uint8)
    stats = fit_reference([img], size=4)
    both = [img / 255.0, img[:, ::-1] / 255.0]
    mu = np.mean([a.reshape(-1, 3).mean(0) for a in both], axis=0)
    assert np.allclose(stats["mean"], mu, atol=1e-6)
    for dy, dx, c1, c2 in [(0, 0, 0, 0), (1, 2, 0, 2), (-3, 1, 1, 0), (2, -3, 2, 2)]:
        total = 0.0
        for a in both:
            a = a - mu
            h, w = a.shape[:2]
            for i in range(max(0, -dy), min(h, h - dy)):
                for j in range(max(0, -dx), min(w, w - dx)):
                    total += a[i, j, c1] * a[i + dy, j + dx, c2]
        assert abs(stats["acf"][c1, c2, dy + 3, dx + 3] - total / (2 * 20 * 24)) < 1e-6
    assert REFERENCE.stat().st_size < 2 ** 20


def test_conditional_samples_follow_the_conditional_gaussian():
    """Mean and covariance of many samples against μ_w + Σ_wr Σ_rr⁻¹ (x_r − μ_r) and Σ_ww − Σ_wr Σ_rr⁻¹ Σ_rw."""
    pre = onnxplain.preprocess.PRESETS["imagenet-noresize"]
    g = PatchGaussian(load_reference(), pre)
    k, ring, size = 3, 2, 7
    cov, mu = g.covariance(size), np.repeat(g.mean, size * size)
    x = np.random.default_rng(1).normal(0, 0.5, (3, 12, 12))
    i, j = 3, 4                                                         # window inside: patch at (1, 2)
    inside = np.zeros((3, size, size), bool)
    inside[:, 2:5, 2:5] = True
    wi, ri = np.flatnonzero(inside), np.flatnonzero(~inside)
    xr = x[:, 1:8, 2:9].ravel()[ri]
    mean = mu[wi] + cov[np.ix_(wi, ri)] @ np.linalg.solve(cov[np.ix_(ri, ri)], xr - mu[ri])
    ccov = cov[np.ix_(wi, wi)] - cov[np.ix_(wi, ri)] @ np.linalg.solve(cov[np.ix_(ri, ri)], cov[np.ix_(ri, wi)])
    sampler = WindowSampler(g, k, ring, (12, 12), True)
    sampler.low, sampler.high = -np.inf, np.inf                       # no clipping: the Gaussian itself
    s = sampler.draw(x, i, j, 40_000, np.random.default_rng(2)).reshape(40_000, -1).astype(np.float64)
    assert np.abs(s.mean(0) - mean).max() < 0.03 * np.sqrt(np.diag(ccov)).max()
    assert rel_err(np.cov(s.T), ccov) < 0.05


def test_pda_follows_its_definition():
    """WE = log₂ odds(c|x) − log₂ odds(c|x₋w) with Laplace-corrected probabilities, p(c|x₋w) the mean over the
    window's samples, each pixel the mean WE of its windows; batches of 7 split windows of 3 samples."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 3, 3)) * 3
    m = patch_model(w, size=12)
    x = rng.uniform(0, 1, (1, 3, 12, 12)).astype(np.float32)
    mat = patch_matrix(w, 12)
    k, n, c, big_n = 4, 3, 2, 20                                      # a small N: the correction shows
    sampler = window_sampler(None, m.preprocessing, k, 2, (12, 12), True)

    def log_odds(p):
        p = (p * big_n + 1) / (big_n + 3)
        return np.log2(p / (1 - p))

    full = log_odds(softmax(x.reshape(1, -1).astype(np.float64) @ mat)[0, c])
    total, count, wi = np.zeros((12, 12)), np.zeros((12, 12)), 0
    for i in range(12 - k + 1):
        for j in range(12 - k + 1):
            samples = sampler.draw(x[0], i, j, n, np.random.default_rng([5, 0, wi]))
            images = np.repeat(x, n, axis=0)
            images[:, :, i:i + k, j:j + k] = samples
            p = softmax(images.reshape(n, -1).astype(np.float64) @ mat)[:, c].mean()
            total[i:i + k, j:j + k] += full - log_odds(p)
            count[i:i + k, j:j + k] += 1
            wi += 1
    e = onnxplain.explain(m, x, "pda", target=c, window=k, samples=n, seed=5, laplace_n=big_n, batch_size=7)
    assert rel_err(e.maps[0], total / count) <= 1e-5


@pytest.mark.parametrize("sampling", ["conditional", "marginal"])
def test_pda_evidence_has_the_right_sign_and_order(sampling):
    """Two classes, y₁ − y₀ = Σ_p v_p·mean(patch p): on a white image every sample darkens a window, so the
    evidence for class 1 of patch p has the sign of v_p, larger where |v_p| is larger; class 0 the opposite."""
    v = np.array([[4, -2, 1, 0], [-1, 2, -4, 0.5], [0, 1, -0.5, 2], [-2, 0.5, 4, -1]])
    m = patch_model(np.stack([np.zeros((4, 4)), v]) * 0.25)
    x = np.ones((1, 3, 32, 32), np.float32)
    e = onnxplain.explain(m, x, "pda", window=4, samples=4, sampling=sampling, classes=(1, 0), batch_size=64)
    assert e.attributions.shape == (1, 2, 32, 32)
    inner = e.attributions[0].reshape(2, 4, 8, 4, 8)[:, :, 3:5, :, 3:5].mean(axis=(2, 4))  # windows inside a patch
    assert (np.sign(inner[0][v != 0]) == np.sign(v[v != 0])).all()
    assert np.allclose(inner[1], -inner[0], atol=1e-3 * np.abs(inner).max())
    by_weight = [inner[0][v == value].mean() for value in sorted(set(v.ravel()))]
    assert np.all(np.diff(by_weight) > 0), by_weight
    assert np.array_equal(e.maps[0], e.attributions[0, 0])           # the target is the top class, 1


def test_pda_is_reproducible_and_gives_many_classes_at_once():
    m, ref = zoo("resnet")
    x = ref["x"][:1]
    run = lambda **kw: onnxplain.explain(m, x, "pda", window=6, samples=3, stride=2, **kw)
    a = run(seed=0, classes=(0, 4, 9))
    assert np.array_equal(a.attributions, run(seed=0, classes=(0, 4, 9)).attributions)
    assert rel_err(run(seed=1, classes=(0, 4, 9)).attributions, a.attributions) > 1e-3
    one = run(seed=0, target=4)
    assert rel_err(a.attributions[:, 1], one.maps) <= 1e-6 and a.attributions.shape == (1, 3, 32, 32)


def test_pda_windows_stay_whole_with_large_strides(linear):
    """Every stride, plus one window flush with the border; pixels no window covers get 0."""
    m, _, x = linear
    e = onnxplain.explain(m, x[:1], "pda", window=5, stride=32, samples=2)
    covered = np.zeros((32, 32), bool)
    for i in (0, 27):
        for j in (0, 27):
            covered[i:i + 5, j:j + 5] = True
    assert (e.maps[0][~covered] == 0).all() and (e.maps[0][covered] != 0).all()


def test_pda_stops_and_resumes_from_its_checkpoint(tmp_path):
    m, ref = zoo("resnet")
    x, ckpt = ref["x"][:2], tmp_path / "pda.npz"
    params = dict(window=6, samples=3, stride=2, batch_size=16)
    full = onnxplain.explain(m, x, "pda", **params)

    def stop(done, total):
        if done >= total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        onnxplain.explain(m, x, "pda", checkpoint=str(ckpt), progress=stop, **params)
    assert ckpt.exists()
    seen = []
    resumed = onnxplain.explain(m, x, "pda", checkpoint=str(ckpt), progress=lambda d, n: seen.append(d), **params)
    assert seen[0] > params["batch_size"] and np.array_equal(resumed.maps, full.maps) and not ckpt.exists()
    with pytest.raises(KeyboardInterrupt):
        onnxplain.explain(m, x, "pda", checkpoint=str(ckpt), progress=stop, **params)
    with pytest.raises(OnnxplainError, match="another run"):
        onnxplain.explain(m, x, "pda", checkpoint=str(ckpt), **{**params, "samples": 4})


# -- Captum on the same weights --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet", "vgg"])
@pytest.mark.parametrize("kind", ["zero", "blur"])
def test_occlusion_equals_captum(name, kind):
    torch = pytest.importorskip("torch", reason="reference tests need torch")
    captum_attr = pytest.importorskip("captum.attr", reason="reference tests need captum")
    from architectures import load_zoo_torch

    from onnxplain.perturb import baseline
    m, ref = zoo(name)
    x, targets = ref["x"], ref["targets"]
    base = torch.tensor(np.stack([baseline(img, kind) for img in x]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # 192 passes of a small net: threads only fight onnxruntime's for the cores
    try:
        expected = captum_attr.Occlusion(load_zoo_torch(name)).attribute(
            torch.tensor(x), sliding_window_shapes=(3, 6, 6), strides=(3, 4, 4), target=torch.tensor(targets),
            baselines=base, perturbations_per_eval=64).numpy()
    finally:
        torch.set_num_threads(threads)
    e = onnxplain.explain(m, x, "occlusion", target=targets.tolist(), window=6, stride=4, baseline=kind,
                          score="logit")
    assert rel_err(e.attributions, expected) <= 1e-4


# -- errors and the bundled model ------------------------------------------------------------------------------
@pytest.mark.parametrize("method, params, words", [
    ("occlusion", {"baseline": "noise"}, "baseline must be"),
    ("rise", {"score": "energy"}, "score must be"),
    ("pda", {"score": "logit"}, "needs probabilities"),
    ("pda", {"window": 40}, "window"),
    ("lime", {"segmentation": "watershed"}, "segmentation must be"),
    ("rise", {"cells": 0}, "cells"),
    ("kernelshap", {"colours": 3}, "kernelshap' has no parameter 'colours'"),
    ("occlusion", {"window": "abc"}, "occlusion: window must be an integer ≥ 0, not 'abc'"),
    ("rise", {"seed": -1}, "rise: seed must be an integer ≥ 0, not -1"),
    ("lime", {"samples": 2.5}, "lime: samples must be an integer ≥ 0, not 2.5"),
    ("lime", {"progress": "bar"}, "lime: progress must be a function or None"),
])
def test_user_errors_are_one_sentence(linear, method, params, words):
    m, _, x = linear
    with pytest.raises(OnnxplainError, match=words) as err:
        onnxplain.explain(m, x, method, **params)
    assert "\n" not in str(err.value)


def test_slic_superpixels_when_scikit_image_works(linear):
    pytest.importorskip("skimage.segmentation", reason="scikit-image is optional")
    m, _, x = linear
    e = onnxplain.explain(m, x[:1], "lime", segmentation="slic", segments=3, samples=50)
    assert e.maps.shape == (1, 32, 32) and np.isfinite(e.maps).all()


def test_slic_superpixels_are_wired_in(linear, monkeypatch):
    """The optional segmentation with a stand-in scikit-image: the RGB view goes in, labels come back renumbered,
    and KernelSHAP (3 regions: enumerated, exact) gives each region its share of the linear score."""
    import sys
    import types
    seen = {}

    def slic(view, n_segments, start_label):
        seen.update(shape=view.shape, dtype=view.dtype, n=n_segments)
        labels = np.full(view.shape[:2], 7)
        labels[:16], labels[:, :8] = 3, 11
        return labels

    fake = types.ModuleType("skimage.segmentation")
    fake.slic = slic
    monkeypatch.setitem(sys.modules, "skimage", types.ModuleType("skimage"))
    monkeypatch.setitem(sys.modules, "skimage.segmentation", fake)
    m, w, x = linear
    e = onnxplain.explain(m, x[:1], "kernelshap", segmentation="slic", segments=2, score="logit", target=0)
    assert seen == {"shape": (32, 32, 3), "dtype": np.uint8, "n": 4}
    labels = slic(np.zeros((32, 32, 3)), 4, 0)
    share = (x[0] * patch_matrix(w, 32)[:, 0].reshape(3, 32, 32)).sum(axis=0)
    expected = np.select([labels == v for v in (3, 7, 11)], [share[labels == v].sum() for v in (3, 7, 11)])
    assert rel_err(e.maps[0], expected) <= 1e-5


def test_every_blackbox_method_runs_on_the_bundled_model(mobilenet, tmp_path):
    """API and CLI on MobileNetV2 at 224², with small parameters (the defaults take minutes on a CPU)."""
    small = {"occlusion": dict(window=112, stride=112), "rise": dict(masks=16), "lime": dict(samples=12, segments=2),
             "kernelshap": dict(samples=14, segments=2), "pda": dict(window=6, stride=109, samples=2)}
    for method, params in small.items():
        e = onnxplain.explain(mobilenet, IMAGES[:1], method, **params)
        assert e.maps.shape == (1, 224, 224) and np.isfinite(e.maps).all() and e.maps.std() > 0, method
        assert 281 <= e.targets[0] <= 285
    from click.testing import CliRunner
    from onnxplain_cli.main import cli
    result = CliRunner().invoke(cli, ["explain", str(MODELS / "mobilenet_v2.onnx"), str(IMAGES[1]), "-m", "rise",
                                      "-p", "masks=16", "-p", "p=0.3", "-o", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "coffee.rise.npy").shape == (224, 224)


def test_one_logit_is_a_binary_classifiers_log_odds():
    """An N×1 logit (docorient's upside-down detector): its probability is the sigmoid, as the softmax of one column
    is 1 whatever the input, which left every black-box map of the probability blank. Occlusion's one window over
    the whole image is the sigmoid's drop from the image to the zero baseline."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "w"], ["logit"],
                                                                               transB=1)]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1, 1])],
                              [numpy_helper.from_array(rng.standard_normal((1, 48)).astype(np.float32), "w")])
    m = onnxplain.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
                       preprocessing="unit")
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    y = float(forward(m, x)[0, 0])
    assert m.probabilities(np.array([[y]]))[0, 0] == pytest.approx(1 / (1 + np.exp(-y)))
    e = onnxplain.explain(m, x, "occlusion", window=4, stride=4)
    assert np.allclose(e.maps, 1 / (1 + np.exp(-y)) - 0.5, atol=1e-6)
