"""Image inputs that are not 3-channel float (issue 13, class 6): grey and RGBA images, uint8 pixels behind a Cast."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import rel_err
from onnx import TensorProto, helper, numpy_helper
from onnxplain_cli.main import cli
from PIL import Image

import onnxplain
from onnxplain import OnnxplainError
from onnxplain.explain import as_batch
from onnxplain.render import overlay
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request

RNG = np.random.default_rng(6)


def classifier(channels=3, layout="NCHW", pixels=None):
    """image (C channels, 8×8, `layout`; `pixels`: an integer type cast to float first, as TF exports) → Conv → Tanh
    → Flatten → Gemm (10 classes)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, channels, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((10, 4 * 8 * 8)).astype(np.float32) / 16
    shape = [1, channels, 8, 8] if layout == "NCHW" else [1, 8, 8, channels]
    nodes, x = [], "image"
    if pixels is not None:
        nodes.append(helper.make_node("Cast", [x], ["pixels"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["pixels", "by255"], ["unit"]))
        x = "unit"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [helper.make_node("Conv", [x, "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Tanh", ["c"], ["r"]),
              helper.make_node("Flatten", ["r"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    image = helper.make_tensor_value_info("image", pixels or TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "kinds", [image],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"),
                               numpy_helper.from_array(np.array(1 / 255, np.float32), "by255")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _gradient(m, x, c=2):
    sess = m.session(Request(differentiate=(m.score,), wrt=(m.input,)))
    onehot = np.eye(m.num_classes, dtype=np.float32)[[c] * len(x)]
    return sess.run([GRAD.format(m.input)], {m.input: x, COTANGENT.format(m.score): onehot})[0]


def _png(path, mode):
    pixels = RNG.integers(0, 256, (8, 8, len(mode)), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
    return pixels


@pytest.mark.parametrize("mode,layout,pre", [("L", "NCHW", "unit"),
                                             ("RGBA", "NHWC", {"mean": [0.5] * 4, "std": [0.2, 0.2, 0.2, 0.5]})])
def test_grey_and_rgba_models_read_images_with_their_channels(tmp_path, mode, layout, pre):
    rgba = _png(tmp_path / "image.png", "RGBA")
    Image.fromarray(rgba, "RGBA").convert(mode).save(tmp_path / "image.png")
    expected = np.asarray(Image.open(tmp_path / "image.png")).reshape(8, 8, -1)
    proto = classifier(len(mode), layout)
    m = onnxplain.load(proto, preprocessing=pre)
    assert m.preprocessing.channels == len(mode)
    e = onnxplain.explain(m, [tmp_path / "image.png"], "gradxinput", target=2)
    x, _ = as_batch(m, [tmp_path / "image.png"])
    p = m.preprocessing
    hwc = (expected / 255 - np.asarray(p.mean)) / np.asarray(p.std)
    assert rel_err(x[0] if layout == "NHWC" else x[0].transpose(1, 2, 0), hwc) < 1e-6
    assert e.views[0].shape == (8, 8, len(mode)) and (e.views[0] == expected).all()
    assert rel_err(e.attributions, x * _gradient(m, x)) < 1e-6
    picture = overlay(e.views[0], e.maps[0])
    assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
    onnx.save(proto, tmp_path / "model.onnx")
    args = ["explain", str(tmp_path / "model.onnx"), str(tmp_path / "image.png"), "-m", "saliency", "--preset", "unit",
            "--device", "cpu", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "out" / "image.saliency.png")  # enlarged 28× (to 224 wide), titled, with a colorbar
    assert png.mode == "RGB" and png.width == 224 and png.height > 224 and png.text["method"] == "saliency"


def test_preprocessing_means_must_fit_the_channels():
    m = onnxplain.load(classifier(1), preprocessing="inception")  # equal across RGB: one value for grey
    assert (m.preprocessing.mean, m.preprocessing.std) == ((0.5,), (0.5,))
    with pytest.raises(OnnxplainError, match="3 values for 1 channels; give 1 or 1"):
        onnxplain.load(classifier(1), preprocessing="imagenet")
    with pytest.raises(OnnxplainError, match="grey \\(1\\), RGB \\(3\\) or RGBA \\(4\\)"):
        onnxplain.load(classifier(2))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_uint8_pixels_are_differentiated_through_their_cast_and_fed_as_integers_to_the_black_box(layout):
    proto = classifier(3, layout, pixels=TensorProto.UINT8)
    m = onnxplain.load(proto)
    assert m.pixels == "uint8" and m.preprocessing.scale == 1.0  # raw 0..255 pixels by default
    assert "uint8 pixels fed as float32" in dict(m.normalised)["input"]
    shape = (3, 8, 8) if layout == "NCHW" else (8, 8, 3)
    x = RNG.integers(0, 256, (2, *shape)).astype(np.uint8)
    float_model = classifier(3, layout, pixels=TensorProto.UINT8)
    float_model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    float_model.graph.node[0].attribute[0].i = TensorProto.FLOAT  # the same model on float pixels 0..255
    reference = onnxplain.load(float_model, preprocessing={"scale": 1.0})
    grad = _gradient(m, x.astype(np.float32))
    assert np.abs(grad).max() > 0 and rel_err(grad, _gradient(reference, x.astype(np.float32))) < 1e-6
    deployed = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    truth = np.concatenate([deployed.run(None, {"image": xi[None]})[0] for xi in x])
    e = onnxplain.explain(m, x, "occlusion", target=2, window=4, stride=4, score="logit")  # uint8 arrays accepted
    assert rel_err(e.logits, truth) < 1e-6
    nudged = x.astype(np.float32) + RNG.uniform(-0.4, 0.4, x.shape).astype(np.float32)
    assert (m.deployed(nudged) == x).all() and m.deployed(np.full(3, 300.0)).max() == 255


def test_float64_inputs_are_fed_as_float32():
    m = onnxplain.load(classifier(3, pixels=TensorProto.DOUBLE), preprocessing="unit")
    reference = onnxplain.load(classifier(3), preprocessing="unit")
    x = RNG.random((2, 3, 8, 8)).astype(np.float32)
    assert m.pixels == "float64" and (m.deployed(x) == x).all()
    assert rel_err(_gradient(m, x), _gradient(reference, x / 255) / 255) < 1e-6  # the float model without the 1/255


def test_patch_model_of_grey_and_rgba_inputs_is_the_rgb_one_mapped():
    """PDA's window samples come from a Gaussian fitted on RGB patches; for grey models it is mapped through Pillow's
    luma (how their images are read), for RGBA models alpha is a constant 1. Mean and covariance equal the RGB
    Gaussian's pushed through that map (PDA refused these models before)."""
    from onnxplain.perturb import LUMA, PatchGaussian, load_reference
    from onnxplain.preprocess import Preprocessing
    stats, size = load_reference(), 4
    rgb = PatchGaussian(stats, Preprocessing(scale=1 / 255, channels=3))
    grey = PatchGaussian(stats, Preprocessing(scale=1 / 255, mean=(0.5,), std=(0.25,), channels=1))
    to_grey = np.kron(np.array([LUMA]), np.eye(size * size))
    assert rel_err(grey.mean, (np.array(LUMA) @ rgb.mean - 0.5) / 0.25) < 1e-12
    assert rel_err(grey.covariance(size), to_grey @ rgb.covariance(size) @ to_grey.T / 0.25 ** 2) < 1e-5
    rgba = PatchGaussian(stats, Preprocessing(scale=1 / 255).for_channels(4))
    assert rel_err(rgba.mean, np.append(rgb.mean, 1.0)) < 1e-12
    cov = rgba.covariance(size)
    n = 3 * size * size
    assert rel_err(cov[:n, :n], rgb.covariance(size)) < 1e-5
    assert np.abs(cov[n:, :n]).max() == 0 and np.abs(cov[n:, n:] - np.diag(np.diag(cov[n:, n:]))).max() == 0


@pytest.mark.parametrize("channels", [1, 4])
def test_pda_explains_grey_and_rgba_models(channels):
    m = onnxplain.load(classifier(channels), preprocessing="unit", device="cpu")
    x = RNG.random((1, channels, 8, 8)).astype(np.float32)
    if channels == 4:
        x[:, 3] = 1.0  # opaque
    e = onnxplain.explain(m, x, "pda", target=2, window=2, samples=4, seed=0)
    plain = onnxplain.explain(m, x, "pda", target=2, window=2, samples=4, seed=0, sampling="marginal")
    assert e.maps.shape == (1, 8, 8) and np.isfinite(e.maps).all() and np.abs(e.maps).max() > 0
    assert np.abs(e.maps - plain.maps).max() > 0  # conditioned on the ring, not the marginal


def test_photos_in_other_pixel_formats_read_as_the_model_sees_them(tmp_path, recwarn):
    """16-bit grey maps 0..65535 onto 0..255 (rounded), a CMYK JPEG is Pillow's RGB of it, an animated GIF is its
    first frame, with a warning naming the frame count."""
    p = onnxplain.preprocess.Preprocessing.from_dict({"size": [8, 8], "scale": 1.0})
    deep = RNG.integers(0, 65536, (8, 8)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    view, _ = onnxplain.preprocess.read_image(tmp_path / "deep.png", p)
    assert (view == ((deep.astype(np.int64) * 255 + 32767) // 65535)[..., None]).all()
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    assert (onnxplain.preprocess.read_image(tmp_path / "cmyk.jpg", p)[0] == expected).all()
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert not recwarn
    assert not onnxplain.preprocess.read_image(tmp_path / "anim.gif", p)[0].any()  # the black first frame
    assert [str(w.message) for w in recwarn] == [f"onnxplain: {tmp_path / 'anim.gif'} holds 2 frames; its first is "
                                                 "explained"]
