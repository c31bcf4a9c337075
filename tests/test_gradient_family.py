"""Integrated Gradients and the noise tunnel (SmoothGrad, SmoothGrad², VarGrad): completeness, baselines, the CLI,
bad parameters, and equality with Captum's IntegratedGradients and NoiseTunnel on the same weights and noise."""
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET, ZOO, rel_err, zoo
from onnxplain_cli.main import cli, main

import onnxplain
from onnxplain import methods
from onnxplain.errors import OnnxplainError
from onnxplain.explain import forward
from onnxplain.methods.gradient import RULES

NOISE_TUNNEL = ("smoothgrad", "smoothgrad2", "vargrad")


def _baseline(ref):
    """A baseline per image, away from zero: a dimmed, shifted copy of the inputs."""
    return (0.3 * ref["x"] + 0.1).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv3"])
def test_completeness_gap_shrinks_with_steps(name):
    """|Σ attributions − (y_c(x) − y_c(x′))| relative to |y_c(x) − y_c(x′)|, worst of 3 images, Gauss-Legendre.
    Measured (steps 4 → 32 → 256): resnet 0.19 → 0.018 → 0.0026, mobilenetv3 0.026 → 0.0095 → 0.0011; the ReLU
    integrand is only piecewise smooth along the path, so the gap of one image need not shrink between nearby step
    counts: these are far apart."""
    m, ref = zoo(name)
    targets = ref["targets"].tolist()
    gaps = []
    for steps in (4, 32, 256):
        e = onnxplain.explain(m, ref["x"], "ig", target=targets, steps=steps)
        change = e.scores - e.info["baseline_score"]
        y0 = forward(m, np.zeros_like(ref["x"]))[np.arange(3), e.targets]
        assert rel_err(e.info["baseline_score"], y0) <= 1e-6
        total = e.attributions.sum(axis=(1, 2, 3), dtype=np.float64)
        assert np.abs(e.info["completeness_gap"] - (total - change)).max() <= 1e-6 * np.abs(change).max()
        gaps.append(np.abs(e.info["completeness_gap"] / change).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 5e-3, gaps


def _blur(images, sigma=5.0, size=11):
    """Gaussian blur of each channel (σ 5, 11 taps, zero padding), written out with np.convolve."""
    r = np.arange(size) - size // 2
    k = np.exp(-r ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    rows = np.apply_along_axis(np.convolve, -1, images.astype(np.float64), k, mode="same")
    return np.apply_along_axis(np.convolve, -2, rows, k, mode="same").astype(np.float32)


def test_blur_baseline_is_the_blurred_image():
    m, ref = zoo("vgg")
    targets = ref["targets"].tolist()
    blurred = _blur(ref["x"])
    e = onnxplain.explain(m, ref["x"], "ig", target=targets, steps=8, baseline="blur")
    given = onnxplain.explain(m, ref["x"], "ig", target=targets, steps=8, baseline=blurred)
    assert rel_err(e.attributions, given.attributions) <= 1e-4
    assert rel_err(e.info["baseline_score"], forward(m, blurred)[np.arange(3), targets]) <= 1e-5
    single = onnxplain.explain(m, ref["x"], "ig", target=targets, steps=8, baseline=blurred[1])  # one for all
    assert rel_err(single.attributions[1], given.attributions[1]) <= 1e-6


def test_cli_runs_ig_and_smoothgrad_on_mobilenet(tmp_path, capsys):
    for method, param in (("ig", "steps=8"), ("smoothgrad", "samples=4")):
        result = CliRunner().invoke(cli, ["explain", str(MOBILENET), str(IMAGES[0]), "-m", method, "-p", param,
                                          "-o", str(tmp_path)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"chelsea.{method}.png").stat().st_size > 10_000
        assert np.load(tmp_path / f"chelsea.{method}.npy").shape == (224, 224)
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(MOBILENET), str(IMAGES[0]), "-m", "ig", "-p", "rule=simpson", "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code != 0 and len(err.splitlines()) == 1 and "rule must be one of" in err, err


@pytest.mark.parametrize("method, params, words", [
    ("ig", {"steps": 0}, "steps must be an integer of at least 1"),
    ("ig", {"steps": 1, "rule": "riemann_left"}, "at least 2 for rule riemann_left"),
    ("ig", {"rule": "simpson"}, "rule must be one of gausslegendre"),
    ("ig", {"baseline": "noise"}, "baseline must be zero, mean, blur"),
    ("ig", {"baseline": np.zeros((3, 16, 16), np.float32)}, "baseline has shape (3, 16, 16)"),
    ("ig", {"internal_batch_size": 0}, "internal_batch_size must be a positive integer"),
    ("smoothgrad", {"of": "gradcam"}, "not 'gradcam'"),
    ("vargrad", {"of": "occlusion"}, "not 'occlusion'"),
    ("smoothgrad2", {"of": "nope"}, "unknown method 'nope'"),
    ("smoothgrad", {"samples": 0}, "samples must be a positive integer"),
    ("smoothgrad", {"sigma": -1.0}, "sigma must be a number"),
])
def test_bad_parameters_give_one_line(method, params, words):
    m, ref = zoo("resnet")
    with pytest.raises(OnnxplainError) as err:
        onnxplain.explain(m, ref["x"], method, **params)
    assert words in str(err.value) and len(str(err.value).splitlines()) == 1, err.value


def test_noise_is_independent_of_the_batch_size():
    m, ref = zoo("resnet")
    maps = [onnxplain.explain(m, ref["x"], "smoothgrad", samples=6, internal_batch_size=size).maps
            for size in (1, 4, 18)]
    assert rel_err(maps[0], maps[2]) <= 1e-6 and rel_err(maps[1], maps[2]) <= 1e-6


# -- Captum on the same weights ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captum():
    """(torch, captum.attr), torch on one thread: its two spinning threads crawl when other work shares the cores."""
    torch = pytest.importorskip("torch", reason="reference tests need torch")
    attr = pytest.importorskip("captum.attr", reason="reference tests need captum")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch, attr
    torch.set_num_threads(threads)


def _torch_zoo(name):
    from architectures import load_zoo_torch
    return load_zoo_torch(name).eval()


@pytest.mark.parametrize("name", ZOO)
def test_ig_equals_captum(name, captum):
    """Every quadrature rule, on the images with the zero baseline and again with a baseline per image; the
    completeness gap is Captum's convergence delta. Measured worst relative errors: attributions 1.4e-6, gaps
    1.1e-6 of |Δy|. With 6 or 8 steps instead of 5, densenet, resnet and vgg reach 3e-3 to 6e-3: at one path point a
    pre-activation lies within 1e-7 of a ReLU kink (densenet, image 2, α = 2/3: 9e-8 in float64), so the two
    float32 implementations switch that unit differently, and that point's gradient differs by a few percent."""
    torch, captum_attr = captum
    m, ref = zoo(name)
    ig = captum_attr.IntegratedGradients(_torch_zoo(name))
    x = np.concatenate([ref["x"], ref["x"]])
    base = np.concatenate([np.zeros_like(ref["x"]), _baseline(ref)])
    targets = np.tile(ref["targets"], 2)
    for rule in RULES:
        e = onnxplain.explain(m, x, "ig", target=targets.tolist(), steps=5, rule=rule, baseline=base,
                              internal_batch_size=7)
        expected, delta = ig.attribute(torch.tensor(x), torch.tensor(base), target=torch.tensor(targets), n_steps=5,
                                       method=rule, return_convergence_delta=True)
        assert rel_err(e.attributions, expected.detach().numpy()) <= 1e-4, rule
        assert rel_err(e.maps, expected.sum(1).detach().numpy()) <= 1e-4, rule
        change = np.abs(e.scores - e.info["baseline_score"]).max()
        assert np.abs(e.info["completeness_gap"] - delta.numpy()).max() <= 1e-4 * change, rule


def _same_noise(monkeypatch, captum, method, x):
    """Make Captum's NoiseTunnel add onnxplain's noise: its noisy copies are image-major, as ours by (i, j)."""
    torch, captum_attr = captum
    samples = method.samples
    i, j = np.repeat(np.arange(len(x)), samples), np.tile(np.arange(samples), len(x))
    noisy = torch.tensor(method.noisy(x, i, j))
    monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input",
                        staticmethod(lambda inputs, stdev, n: noisy.clone()))


def _check_noise_tunnel(monkeypatch, captum, name, inner, reference, reduce, **kwargs):
    """Each noise-tunnel type around `inner` against Captum's NoiseTunnel around `reference`, on the same noise."""
    torch, captum_attr = captum
    m, ref = zoo(name)
    targets = ref["targets"].tolist()
    for ours, kind in zip(NOISE_TUNNEL, ("smoothgrad", "smoothgrad_sq", "vargrad")):
        method = methods.get(ours, of=inner, samples=4, seed=3, internal_batch_size=5)
        _same_noise(monkeypatch, captum, method, ref["x"])
        expected = captum_attr.NoiseTunnel(reference).attribute(
            torch.tensor(ref["x"]), nt_type=kind, nt_samples=4, stdevs=1.0, target=torch.tensor(targets),
            **kwargs).detach().numpy()
        e = onnxplain.explain(m, ref["x"], ours, target=targets, of=inner, samples=4, seed=3, internal_batch_size=5)
        assert rel_err(e.attributions, expected) <= 1e-4, (ours, inner)
        assert rel_err(e.maps, reduce(expected, axis=1)) <= 1e-4, (ours, inner)


@pytest.mark.parametrize("name", ZOO)
def test_noise_tunnel_equals_captum(name, monkeypatch, captum):
    """SmoothGrad, SmoothGrad² and VarGrad around Saliency (map: max over channels) and Input×Gradient (map: sum)
    equal Captum's NoiseTunnel types smoothgrad, smoothgrad_sq and vargrad. Measured worst relative error 2.3e-6."""
    net, attr = _torch_zoo(name), captum[1]
    _check_noise_tunnel(monkeypatch, captum, name, "saliency", attr.Saliency(net), np.max)
    _check_noise_tunnel(monkeypatch, captum, name, "gradxinput", attr.InputXGradient(net), np.sum)


def test_noise_tunnel_around_ig_equals_captum(monkeypatch, captum):
    """Around Integrated Gradients (4 Gauss-Legendre steps), on one model: 60 path points per type, where on
    densenet and vgg one point lands within float32 rounding of a ReLU kink (see test_ig_equals_captum).
    Measured worst relative error 7e-7."""
    ig = captum[1].IntegratedGradients(_torch_zoo("resnet"))
    _check_noise_tunnel(monkeypatch, captum, "resnet", methods.get("ig", steps=4), ig, np.sum, n_steps=4)


def _small_cnn(opset):
    """image (N×3×8×8) → Conv → Relu → Flatten → Gemm (4 classes), as written at `opset`."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 128)).astype(np.float32) / 8, "fc"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def test_rows_summed_on_the_host_below_opset_11_equal_those_summed_in_the_graph(monkeypatch):
    """IG's steps are summed per image in the gradient graph (ScatterND: opset 11); a model kept below opset 11 (its
    conversion to 11 at load failing, here made to) sums them on the host in float64. The same weights at opsets 10,
    11 and 17 give the same results."""
    from onnxplain.passes import opset as opset_pass

    def failing(model, opset):
        raise RuntimeError("refused for the test")

    x = np.random.default_rng(5).random((3, 3, 8, 8)).astype(np.float32)
    found = {}
    for opset in (11, 17, 10):
        if opset == 10:
            monkeypatch.setattr(opset_pass, "checked_conversion", failing)
        m = onnxplain.load(_small_cnn(opset), preprocessing="unit", device="cpu")
        assert m.opset == opset
        found[opset] = onnxplain.explain(m, x, "ig", target=[1, 3, 0], steps=5, batch_size=4).attributions
    assert np.abs(found[17]).max() > 0
    assert rel_err(found[10], found[17]) <= 1e-6 and rel_err(found[11], found[17]) <= 1e-6
