"""Rendering (issue 15): maps carried back onto the user's photo through the resize and crop, colour scales per sign,
title and colorbar, PNG metadata, grids, `Explanation.plot/save`, and photos given as Pillow images or uint8 arrays."""
import hashlib
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGES, MOBILENET
from onnxplain_cli.main import cli
from PIL import Image

import onnxplain
from onnxplain import OnnxplainError
from onnxplain.preprocess import Preprocessing, prepare
from onnxplain.render import (DIM, colour_scale, default_scale, diverging, figure, grid, overlay, panel, rgb,
                              turbo)

RNG = np.random.default_rng(15)
# A 300×500 (H×W) photo, resized so its short side is 64 (→ 64×106, the long side floored as torchvision does), then
# the centre 48×48 cut out: top (64 − 48) // 2 = 8, left (106 − 48) // 2 = 29.
PHOTO = RNG.integers(0, 256, (300, 500, 3), dtype=np.uint8)
P = Preprocessing(size=(48, 48), resize=64)
H, W, R_H, R_W, TOP, LEFT = 300, 500, 64, 106, 8, 29


def test_the_geometry_of_a_resize_and_centre_crop():
    g = prepare(PHOTO, P).geometry
    assert (g.original, g.resized, g.top, g.left, g.size) == ((H, W), (R_H, R_W), TOP, LEFT, (48, 48))
    direct = prepare(PHOTO, Preprocessing(size=(48, 40))).geometry  # no resize: straight to the input size
    assert (direct.resized, direct.top, direct.left) == ((48, 40), 0, 0)


def test_a_peak_in_the_map_lands_on_its_pixel_of_the_photo():
    g = prepare(PHOTO, P).geometry
    for py, px in ((10, 30), (0, 0), (47, 47), (23, 5)):
        m = np.zeros((48, 48))
        m[py, px] = 1
        shown, inside = g.to_photo(m)
        # the map pixel's centre, in the resized image, scaled to the photo (pixel centres at +0.5)
        y, x = (py + TOP + 0.5) * H / R_H - 0.5, (px + LEFT + 0.5) * W / R_W - 0.5
        shown = np.where(inside, shown, 0)  # outside the crop the map's edge continues (drawn dimmed, uncoloured)
        assert shown[round(y), round(x)] > 0.8
        if 0 < py < 47 and 0 < px < 47:  # at the crop's edge the map stays flat out to the border: a plateau
            assert np.unravel_index(shown.argmax(), shown.shape) == (round(y), round(x))


def test_a_crop_quadrant_colours_its_box_of_the_photo_and_the_rest_is_dimmed():
    g = prepare(PHOTO, P).geometry
    m = np.zeros((48, 48))
    m[:24, :24] = 1  # the crop's top-left quadrant
    shown, inside = g.to_photo(m)
    ys, xs = np.arange(H)[:, None] + 0.5, np.arange(W)[None, :] + 0.5
    crop = (ys >= TOP * H / R_H) & (ys <= (TOP + 48) * H / R_H) & (xs >= LEFT * W / R_W) & (xs <= (LEFT + 48) * W / R_W)
    box = (ys >= TOP * H / R_H) & (ys < (TOP + 24) * H / R_H) & (xs >= LEFT * W / R_W) & (xs < (LEFT + 24) * W / R_W)
    assert (inside == crop).all() and inside.sum() == 226 * 226
    assert box.sum() == 113 * 113 and (shown[box] > 0.36).all() and (shown[inside & ~box] < 0.5).all()
    y0, x0 = 90, 190  # well inside the box: there the other axis' factor is 1, and the edge crosses 0.5 exactly
    assert shown[y0, x0] == 1 and ((shown[:, x0] > 0.5) & inside[:, x0] == box[:, x0]).all()
    assert ((shown[y0] > 0.5) & inside[y0] == box[y0]).all()
    s = colour_scale(m, "minmax")
    picture = overlay(PHOTO, shown, s, inside)
    top = 0.5 * PHOTO / 255 + 0.5 * turbo(np.ones(1))[0]  # the top of the ramp, at alpha 0.5
    assert np.abs(picture[box & (shown == 1)] - top[box & (shown == 1)] * 255).max() <= 0.5
    assert np.abs(picture[~inside] - DIM * PHOTO[~inside]).max() <= 0.501  # outside the crop: dimmed, not coloured


def test_the_symmetric_scale_puts_zero_at_white_and_leaves_the_photo_there():
    m = np.array([[-2.0, 0.0], [1.0, 4.0]])
    s = colour_scale(m, "symmetric")
    assert (s.lo, s.hi, s.signed) == (-4, 4, True) and s(m).tolist() == [[-0.5, 0], [0.25, 1]]
    assert (diverging(np.zeros(1)) == 1).all() and (s.colours(s(np.zeros(1))) == 1).all()
    view = RNG.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    picture = overlay(view, m, s)
    assert (picture[0, 1] == view[0, 1]).all() and (picture[1, 1] != view[1, 1]).any()
    half = colour_scale(np.arange(-100, 101.0), "symmetric:50")  # ±the median of |m|
    assert (half.lo, half.hi) == (-50, 50)


def test_percentile_clipping_and_minmax_span_the_ramp():
    m = np.arange(101.0)
    s = colour_scale(m, "percentile:90")
    assert (s.lo, s.hi, s.signed) == (10, 90, False)
    assert s(np.array([0, 10, 50, 90, 100])).tolist() == [0, 0, 0.5, 1, 1]
    assert (colour_scale(m, "percentile").lo, colour_scale(m, "percentile").hi) == (2, 98)  # Captum's outlier_perc 2
    rise = 0.563 + 0.074 * RNG.random((48, 48))  # a narrow band, as RISE's map of the cat
    s = colour_scale(rise, default_scale(rise, pixel_level=False))
    assert s.how == "minmax" and (s.lo, s.hi) == (rise.min(), rise.max())
    view = np.zeros((48, 48, 3), np.uint8)
    picture = overlay(view, rise, s)  # over black: the colours themselves, at alpha 0.5
    low, high = np.unravel_index(rise.argmin(), rise.shape), np.unravel_index(rise.argmax(), rise.shape)
    assert np.abs(picture[low] - 0.5 * 255 * turbo(np.zeros(1))[0]).max() <= 0.5
    assert np.abs(picture[high] - 0.5 * 255 * turbo(np.ones(1))[0]).max() <= 0.5
    flat = colour_scale(np.full((4, 4), 0.6), "minmax")  # a constant map: the bottom colour, no NaN
    assert (flat(np.full((4, 4), 0.6)) == 0).all()


def test_default_scales_and_bad_ones():
    signed, narrow = np.array([-1.0, 2.0]), np.array([0.56, 0.64])
    assert default_scale(signed, False) == "symmetric:99.5" and default_scale(signed, True) == "symmetric:98"
    assert default_scale(narrow, False) == "minmax" and default_scale(narrow, True) == "percentile:98"
    for bad in ("nope", "minmax:3", "percentile:30", "percentile:x", "symmetric:0", "symmetric:101"):
        with pytest.raises(OnnxplainError, match="colour scale"):
            colour_scale(narrow, bad)


def _find_ramp(picture, scale):
    """The row and left edge where `scale`'s colorbar ramp is drawn in `picture`, whatever its margins."""
    for pad in range(5, 21):
        length = picture.shape[1] - 2 * pad
        values = np.linspace(-scale.hi if scale.signed else scale.lo, scale.hi, length)
        ramp = (scale.colours(scale(values)) * 255).round()
        rows = np.flatnonzero((picture[:, pad:pad + length] == ramp).all(axis=(1, 2)))
        if rows.size:
            return rows, pad
    return None, None


def test_the_panel_has_a_title_and_a_colorbar_of_its_scale():
    picture = RNG.integers(0, 256, (100, 300, 3), dtype=np.uint8)
    s = colour_scale(np.array([-3.0, 1.0]), "symmetric")
    out = panel(picture, s, "gradxinput · tabby [281]")
    rows, pad = _find_ramp(out, s)
    assert rows is not None and len(rows) in (2 * pad, 2 * pad + 1)  # the bar is as tall as the font (2 × pad)
    length = out.shape[1] - 2 * pad
    assert (out[rows[0], pad + length // 2] >= 253).all()  # 0 is white, in the middle (within half a step)
    assert any((out[y:y + 100] == picture).all() for y in range(out.shape[0] - 99))  # the picture, unchanged
    small = panel(picture[:8, :8], None, "x")  # enlarged 28× to stay readable; no colorbar
    assert small.shape[1] == 224 and (small[-224:] == picture[:8, :8].repeat(28, 0).repeat(28, 1)).all()


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "wide.png"
    Image.fromarray(np.asarray(Image.open(IMAGES[0]).convert("RGB").resize((330, 200)))).save(path)
    return path


def test_pillow_images_and_uint8_arrays_give_the_maps_of_the_path(mobilenet, photo_file):
    by_path = onnxplain.explain(mobilenet, [photo_file], "gradcam")
    pixels = np.asarray(Image.open(photo_file))
    x = onnxplain.prepare_images(mobilenet, [photo_file])
    assert x.dtype == np.float32 and x.shape == (1, 3, 224, 224)
    for given in (Image.open(photo_file), [Image.open(photo_file)], pixels, [pixels], pixels[None], x):
        e = onnxplain.explain(mobilenet, given, "gradcam")
        assert (e.maps == by_path.maps).all() and (e.targets == by_path.targets).all()
    assert (onnxplain.prepare_images(mobilenet, pixels) == x).all()
    e = onnxplain.explain(mobilenet, [pixels, Image.open(IMAGES[1])], "gradcam")  # sizes may differ
    assert e.photos[0].photo.shape == (200, 330, 3) and e.photos[1].geometry.original == (400, 600)
    assert e.photos[1].name == "coffee" and e.photos[0].name == ""
    with pytest.raises(OnnxplainError, match="mixes images and arrays"):
        onnxplain.explain(mobilenet, [pixels, x[0]], "gradcam")
    with pytest.raises(OnnxplainError, match="uint8 H×W×C"):
        onnxplain.explain(mobilenet, pixels[..., :2], "gradcam")


def test_save_writes_pngs_with_metadata_and_npys(mobilenet, photo_file, tmp_path):
    e = onnxplain.explain(mobilenet, [photo_file, Image.open(IMAGES[1])], "gradcam", target=[[281, 967]])
    files = e.save(tmp_path)
    assert [f.name for f in files] == ["wide.gradcam.281.png", "wide.gradcam.281.npy", "wide.gradcam.967.png",
                                       "wide.gradcam.967.npy", "coffee.gradcam.281.png", "coffee.gradcam.281.npy",
                                       "coffee.gradcam.967.png", "coffee.gradcam.967.npy"]
    png = Image.open(tmp_path / "wide.gradcam.967.png")
    sha = hashlib.sha256(MOBILENET.read_bytes()).hexdigest()
    assert {k: png.text[k] for k in ("method", "target", "label", "view", "model_sha256")} == {
        "method": "gradcam", "target": "967", "label": "espresso", "view": "original", "model_sha256": sha}
    assert float(png.text["score"]) == pytest.approx(e.scores[0, 1], rel=1e-5)
    assert png.width == 330 and (np.load(tmp_path / "wide.gradcam.967.npy") == e.maps[0, 1]).all()
    with pytest.raises(OnnxplainError, match="exists"):
        e.save(tmp_path)
    crop = tmp_path / "crop"
    e.save(crop, view="crop", scale="percentile:99")
    png = Image.open(crop / "coffee.gradcam.281.png")
    assert png.width == 224 and png.text["view"] == "crop" and png.text["scale"].startswith("percentile 99: ")


def test_an_array_input_renders_on_its_crop(mobilenet, photo_file):
    e = onnxplain.explain(mobilenet, onnxplain.prepare_images(mobilenet, [photo_file]), "gradxinput")
    picture, text = figure(e, 0)
    assert text["view"] == "crop" and picture.shape[1] == 224 and text["scale"].startswith("symmetric 98: ")
    assert (e.views[0] == prepare(photo_file, mobilenet.preprocessing).view).all()


def test_the_grid_puts_the_photo_then_each_method_and_class_side_by_side(mobilenet, photo_file):
    found = [onnxplain.explain(mobilenet, [photo_file], m, target=[[281, 285]]) for m in ("gradcam", "saliency")]
    picture, text = grid(found, 0)
    assert text["panels"].startswith("gradcam 281 (minmax: ") and "; saliency 285 (percentile 98: " in text["panels"]
    one = figure(found[0], 0, 1)[0]
    assert one.shape[1] == 330 and picture.shape == (one.shape[0], 5 * 330 + 4 * 8, 3)
    assert (picture[:, 330 + 8:2 * 330 + 8] == figure(found[0], 0, 0)[0]).all()
    assert (picture[:, -330:] == figure(found[1], 0, 1)[0]).all()


def test_plot_shows_the_rendered_panel_and_needs_matplotlib(mobilenet, photo_file, monkeypatch):
    e = onnxplain.explain(mobilenet, [photo_file], "gradcam")
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    ax = e.plot()
    assert (ax.get_images()[0].get_array() == e.render()).all()
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(OnnxplainError, match="needs matplotlib"):
        e.plot()


def test_the_command_line_renders_views_scales_and_grids(tmp_path, photo_file):
    def run(*args):
        result = CliRunner().invoke(cli, ["explain", str(MOBILENET), str(photo_file), "--device", "cpu", *args])
        return result
    result = run("-m", "gradcam", "-m", "occlusion", "-p", "window=56", "-p", "stride=56", "--grid", "-o",
                 str(tmp_path))
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "wide.grid.png")
    assert png.width == 3 * 330 + 2 * 8 and png.text["panels"].count(";") == 1
    assert Image.open(tmp_path / "wide.occlusion.png").text["method"] == "occlusion"
    result = run("-t", "281,285", "--grid", "-o", str(tmp_path / "classes"))  # one method, two classes
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "classes" / "wide.grid.png")
    assert png.width == 3 * 330 + 2 * 8 and all(f"gradcam {c} (" in png.text["panels"] for c in (281, 285))
    result = run("--view", "crop", "--colour-scale", "symmetric:90", "-o", str(tmp_path / "crop"))
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "crop" / "wide.gradcam.png")
    assert png.width == 224 and png.text["scale"].startswith("symmetric 90: ")
    result = run("--colour-scale", "percentile:20", "-o", str(tmp_path / "bad"))
    assert result.exit_code != 0 and "P must be a number above 50" in str(result.exception or result.output)
    assert not (tmp_path / "bad").exists()
    result = run("-m", "gradcam", "-p", "window=3", "-o", str(tmp_path / "bad"))
    assert "has no parameter 'window'" in str(result.exception or result.output)
