"""Targets as score heads (onnxplain/targets.py, detection.py) on models exported from torch here: the gradient a
method differentiates for a box, region, tag or output-element target equals torch autograd of the same scalar; the
decoders choose the boxes a numpy reference decode and NMS choose; D-RISE finds the object of a toy detector."""
import dataclasses
import json

import numpy as np
import pytest
from conftest import IMAGES, MOBILENET, rel_err

torch = pytest.importorskip("torch")
nn = torch.nn

import onnx  # noqa: E402

import onnxplain  # noqa: E402
from onnxplain import targets  # noqa: E402
from onnxplain.detection import choose, detections, iou  # noqa: E402
from onnxplain.errors import OnnxplainError  # noqa: E402

SIDE, STRIDE = 32, 4
CELLS = SIDE // STRIDE


def export(net, path, names, side=SIDE):
    torch.onnx.export(net, (torch.zeros(2, 3, side, side),), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=list(names),
                      dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    return path


class Detector(nn.Module):
    """A YOLO-style raw head on an 8×8 grid of stride 4: anchor (i, j)'s scores depend only on the pixels of cell
    (i, j) and its 1-pixel ring (a 3×3 conv, then a 4×4 stride-4 conv). Layout "yolov8": N×(4+C)×A; "yolox":
    N×A×(5+C) with objectness. `known`: hand-set weights whose objectness is the brightness of a cell."""

    def __init__(self, layout="yolov8", classes=2, known=False):
        super().__init__()
        self.layout, self.classes = layout, classes
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Conv2d(8, classes + 1, STRIDE, stride=STRIDE)  # last channel: objectness
        self.box = nn.Conv2d(8, 4, STRIDE, stride=STRIDE)
        gy, gx = torch.meshgrid(torch.arange(CELLS), torch.arange(CELLS), indexing="ij")
        self.register_buffer("centres", torch.stack([gx, gy]).reshape(1, 2, -1).float() * STRIDE + STRIDE / 2)
        if known:
            with torch.no_grad():
                for p in self.parameters():
                    p.zero_()
                self.features.weight[0, :, 1, 1] = 1 / 3           # channel 0: the grey pixel
                self.cls.weight[-1, 0] = 8 / STRIDE ** 2            # objectness: 8 × the cell's mean grey, − 4
                self.cls.bias[:] = torch.tensor([4.0] + [-6.0] * (classes - 1) + [-4.0])  # class 0 wherever

    def forward(self, x):
        f = torch.relu(self.features(x))
        s = torch.sigmoid(self.cls(f)).flatten(2)                   # N×(C+1)×A
        b = self.box(f).flatten(2)
        boxes = torch.cat([self.centres + torch.tanh(b[:, :2]), STRIDE * torch.exp(b[:, 2:])], 1)
        if self.layout == "yolov8":
            return torch.cat([boxes, s[:, :self.classes]], 1)
        return torch.cat([boxes, s[:, self.classes:], s[:, :self.classes]], 1).transpose(1, 2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("targets")
    torch.manual_seed(0)
    nets = {layout: Detector(layout).eval() for layout in ("yolov8", "yolox")}
    paths = {layout: export(net, folder / f"{layout}.onnx", ["output0"]) for layout, net in nets.items()}
    return nets, paths


def autograd(net, x, pick):
    """∂ pick(net(x)) / ∂x, summed over images (each image's scalar depends on that image only)."""
    x = torch.from_numpy(x).requires_grad_()
    pick(net(x)).sum().backward()
    return x.grad.numpy()


def reference_detections(out, layout, classes, threshold, overlap):
    """Numpy reference decode and NMS of one image: (anchor, class), best first."""
    y = out[0].T if layout == "yolov8" else out[0]
    xywh = y[:, :4]
    scores = y[:, 4:] if layout == "yolov8" else y[:, 5:] * y[:, 4:5]
    corners = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    cand = sorted(((scores[a, c], a, c) for a in range(len(y)) for c in range(classes) if scores[a, c] >= threshold),
                  key=lambda t: -t[0])
    kept = []
    for _, a, c in cand:
        if all(k != c or iou(corners[a], corners[b]) <= overlap for b, k in kept):
            kept.append((a, c))
    return kept


@pytest.mark.parametrize("layout", ["yolov8", "yolox"])
def test_box_targets_equal_autograd_of_the_anchor_score(exported, layout):
    nets, paths = exported
    net = nets[layout]
    m = onnxplain.load(paths[layout], device="cpu", preprocessing="unit")
    assert isinstance(m.head, targets.DetectionScores) and m.head.decoder.layout == layout
    assert m.num_classes == CELLS ** 2 * 2
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(x)).numpy()
    for target in (targets.Box(index=1, threshold=0.1), targets.Box(cls=1), targets.Box()):
        e = onnxplain.explain(m, x, "gradxinput", target=target)
        anchors, classes = np.divmod(e.targets, 2)
        for i in range(2):
            if target.index is not None:  # the index-th detection of the reference decode and NMS
                assert (anchors[i], classes[i]) == reference_detections(out[i:i + 1], layout, 2, 0.1, 0.45)[1]
            if layout == "yolov8":
                pick = lambda y, i=i: y[i, 4 + classes[i], anchors[i]]  # noqa: E731
            else:
                pick = lambda y, i=i: y[i, anchors[i], 4] * y[i, anchors[i], 5 + classes[i]]  # noqa: E731
            g = autograd(net, x, pick)
            assert rel_err(e.attributions[i], (x * g)[i]) <= 1e-4
            assert np.isclose(e.scores[i], float(pick(torch.from_numpy(out))), rtol=1e-5)


def test_box_by_overlap_picks_the_best_iou_detection(exported):
    nets, paths = exported
    m = onnxplain.load(paths["yolov8"], device="cpu", preprocessing="unit")
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        out = nets["yolov8"](torch.from_numpy(x)).numpy()
    found = reference_detections(out, "yolov8", 2, 0.25, 0.45)
    a, c = found[len(found) // 2]
    xywh = out[0, :4, a]
    box = (*(xywh[:2] - xywh[2:] / 2), *(xywh[:2] + xywh[2:] / 2))
    _, t = targets.resolve(m, targets.Box(box=box), x)
    assert t.tolist() == [a * 2 + c]


def test_decoder_is_chosen_from_shapes_and_can_be_overridden():
    assert choose({"o": (1, 84, 8400)}).layout == "yolov8"
    assert choose({"o": (1, 8400, 85)}).layout == "yolox"
    assert choose({"o": (1, 300, 6)}).layout == "end2end"
    assert choose({"o": (1, 3549, 6)}).layout == "yolox"
    assert choose({"o": (1, 3549, 6)}, "yolox-raw").layout == "yolox-raw"
    split = choose({"boxes": (1, 4420, 4), "scores": (1, 4420, 2)})
    assert (split.layout, split.outputs, split.classes) == ("split", ("boxes", "scores"), 2)
    assert choose({"o": (1, 1000)}) is None
    with pytest.raises(OnnxplainError, match="decoder 'yolov8' fits none"):
        choose({"o": (1, 8400, 85)}, "yolov8")


def test_detections_match_a_plain_nms():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (40, 2))], 1)
    scores = rng.uniform(0, 1, (40, 3))
    found = detections(boxes, scores, 0.5, 0.3)
    for c in range(3):  # per class: no two kept boxes overlap more than 0.3, and every dropped one overlaps a better
        kept = [a for a, k in found if k == c]
        assert all(iou(boxes[p], boxes[q]) <= 0.3 for i, p in enumerate(kept) for q in kept[:i])
        for a in np.nonzero(scores[:, c] >= 0.5)[0]:
            assert a in kept or any(iou(boxes[a], boxes[b]) > 0.3 and scores[b, c] >= scores[a, c] for b in kept)


def scene(rng, side=SIDE):
    """A black image with one white 8×8 square on the stride-4 grid; returns it and the square's slices."""
    i, j = rng.integers(0, CELLS - 1, 2) * STRIDE
    x = np.zeros((1, 3, side, side), np.float32)
    x[:, :, i:i + 8, j:j + 8] = 1
    return x, (slice(i, i + 8), slice(j, j + 8))


def test_drise_points_at_the_object(tmp_path):
    net = Detector("yolox", known=True).eval()
    m = onnxplain.load(export(net, tmp_path / "known.onnx", ["output0"]), device="cpu", preprocessing="unit")
    rng = np.random.default_rng(4)
    hits = []
    for _ in range(5):
        x, (rows, cols) = scene(rng)
        e = onnxplain.explain(m, x, "drise", target=targets.Box(index=0), masks=500, cells=4, seed=0)
        peak = np.unravel_index(np.argmax(e.maps[0]), e.maps[0].shape)
        hits.append(rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop)
        inside = np.zeros(e.maps[0].shape, bool)
        inside[rows, cols] = True
        assert e.maps[0][inside].mean() > 1.2 * e.maps[0][~inside].mean()
    assert all(hits)


class Segmenter(nn.Module):
    """N×3×32×32 class maps from two convolutions."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_region_target_equals_autograd_of_the_masked_class_sum(tmp_path):
    torch.manual_seed(5)
    net = Segmenter().eval()
    m = onnxplain.load(export(net, tmp_path / "seg.onnx", ["masks"]), device="cpu", preprocessing="unit")
    assert isinstance(m.head, targets.RegionSum) and m.num_classes == 3
    x = np.random.default_rng(6).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    mask = np.zeros((64, 64))  # twice the output's resolution: resized by nearest neighbour
    mask[10:40, 20:50] = 1
    from PIL import Image
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    small = torch.from_numpy(mask[::2, ::2].astype(np.float32))
    for target in (targets.Region(1, mask), targets.parse(f"region:1@{tmp_path / 'mask.png'}")):
        e = onnxplain.explain(m, x, "gradxinput", target=target)
        g = autograd(net, x, lambda y: (y[:, 1] * small).sum((1, 2)))
        assert rel_err(e.attributions, x * g) <= 1e-4 and (e.targets == 1).all()
    whole = onnxplain.explain(m, x, "gradxinput")  # default: the largest class sum over the whole output
    with torch.no_grad():
        sums = net(torch.from_numpy(x)).sum((2, 3)).numpy()
    assert (whole.targets == sums.argmax(1)).all()
    g = autograd(net, x, lambda y: y[torch.arange(2), torch.from_numpy(whole.targets)].sum((1, 2)))
    assert rel_err(whole.attributions, x * g) <= 1e-4


class Tagger(nn.Module):
    """Multi-label tags (sigmoid) and a regression output."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.age = nn.Conv2d(3, 8, 3), nn.Linear(8, 5), nn.Linear(8, 1)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean((2, 3))
        return torch.sigmoid(self.fc(f)), self.age(f)


def test_sigmoid_tags_and_output_elements_equal_autograd(tmp_path):
    torch.manual_seed(7)
    net = Tagger().eval()
    path = export(net, tmp_path / "tags.onnx", ["tags", "age"])
    x = np.random.default_rng(8).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    logit = lambda y: net.fc(torch.relu(net.conv(y)).mean((2, 3)))  # noqa: E731
    m = onnxplain.load(path, device="cpu", preprocessing="unit", output="tags")
    assert m.activation == "Sigmoid" and m.score != m.output  # the tag's logit is differentiated
    e = onnxplain.explain(m, x, "gradxinput", target=3)
    assert rel_err(e.attributions, x * autograd(logit, x, lambda y: y[:, 3])) <= 1e-4
    p = onnxplain.load(path, device="cpu", preprocessing="unit", output="tags", probabilities=True)
    e = onnxplain.explain(p, x, "gradxinput", target=3)
    assert rel_err(e.attributions, x * autograd(net, x, lambda y: y[0][:, 3])) <= 1e-4
    with torch.no_grad():
        tags = net(torch.from_numpy(x))[0].numpy()
    assert np.allclose(m.probabilities(onnxplain.explain(m, x, "saliency").logits), tags, atol=1e-6)
    e = onnxplain.explain(m, x, "gradxinput", target=targets.Output("age", 0))
    assert rel_err(e.attributions, x * autograd(net, x, lambda y: y[1][:, 0])) <= 1e-4
    with pytest.raises(OnnxplainError, match="pda explains classes of a softmax classifier only"):
        onnxplain.explain(m, x, "pda")
    with pytest.raises(OnnxplainError, match="drise explains boxes of a detector only"):
        onnxplain.explain(m, x, "drise")


def test_models_without_a_default_target_are_refused_in_one_line(tmp_path):
    torch.manual_seed(9)

    class Two(nn.Module):
        def forward(self, x):
            return x.mean(1), x[:, :2].mean(1)

    path = export(Two(), tmp_path / "two.onnx", ["a", "b"])
    with pytest.raises(OnnxplainError, match="no default target .* --output NAME"):
        onnxplain.load(path, device="cpu", preprocessing="unit")
    from click.testing import CliRunner
    from onnxplain_cli.main import cli
    result = CliRunner().invoke(cli, ["inspect", str(path), "--preset", "unit"])  # described, not refused
    assert result.exit_code == 0 and "target     none by default: choose an output with --output NAME" in result.output
    assert "a[1, 32, 32]  output targets (elements, flattened per image)" in result.output
    result = CliRunner().invoke(cli, ["inspect", str(path), "--preset", "unit", "--json"])
    assert json.loads(result.output)["outputs"][1] == {"name": "b", "shape": [1, 32, 32],
                                                        "guess": "output targets (elements, flattened per image)"}
    m = onnxplain.load(path, device="cpu", preprocessing="unit", output="b")
    assert isinstance(m.head, targets.Flat) and m.num_classes == SIDE * SIDE


class Recogniser(nn.Module):
    """An OCR recogniser's N×T×characters output, T = 32 steps (columns) of 40 characters: a YOLOv8 head's shape
    (N×(4+C)×A with A > 4 + C) unless the Softmax says it is a distribution per step."""

    def __init__(self, softmax: bool):
        super().__init__()
        self.conv, self.fc, self.softmax = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 40), softmax

    def forward(self, x):
        y = self.fc(torch.relu(self.conv(x)).mean(2).transpose(1, 2))
        return torch.softmax(y, dim=2) if self.softmax else y


def test_a_softmax_output_is_no_detector_head(tmp_path):
    """PP-OCR's recognisers (N×40×6625 behind a Softmax over the characters) were read as YOLOv8 heads of 6625
    anchors × 36 classes, their maps explaining a made-up detection; a Softmax's output is now read as elements."""
    torch.manual_seed(12)
    x = np.random.default_rng(13).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    for softmax in (False, True):
        net = Recogniser(softmax).eval()
        path = export(net, tmp_path / f"rec{softmax}.onnx", ["chars"])
        m = onnxplain.load(path, device="cpu", preprocessing="unit")
        if not softmax:
            assert isinstance(m.head, targets.DetectionScores) and m.head.decoder.layout == "yolov8"
            continue
        assert isinstance(m.head, targets.Flat) and m.num_classes == SIDE * 40
        assert [g for _, _, g in targets.guesses(m)] == ["output targets (elements, flattened per image)"]
        e = onnxplain.explain(m, x, "gradxinput", target=3 * 40 + 7)  # step 3, character 7
        assert rel_err(e.attributions, x * autograd(net, x, lambda y: y[:, 3, 7])) <= 1e-4


class TimeMajor(nn.Module):
    """A CRNN's CTC logits, time-major as captcha and OCR exports give them: T×N×C, T = 32 columns, C = 5."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(2).permute(2, 0, 1))


def test_a_time_major_output_is_read_on_its_image_axis(tmp_path):
    """captcha_crnn (torch 2.14) and ddddocr's CRNN compute T×N×C: refused before ('its first axis is not the
    batch'); the axis that doubles from one image to two holds the images, and a step's class is differentiated
    per image, equal to autograd, two images at once with different targets."""
    torch.manual_seed(14)
    net = TimeMajor().eval()
    path = export(net, tmp_path / "crnn.onnx", ["logits"])
    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    assert m.head == targets.Flat("logits", 1, 3) and m.num_classes == SIDE * 5
    x = np.random.default_rng(15).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    e = onnxplain.explain(m, x, "gradxinput", target=[3 * 5 + 2, 20 * 5 + 4])  # step 3 class 2; step 20 class 4
    pick = lambda y: y[3, 0, 2] + y[20, 1, 4]  # noqa: E731  (each image's scalar depends on that image only)
    assert rel_err(e.attributions, x * autograd(net, x, pick)) <= 1e-4
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy().transpose(1, 0, 2).reshape(2, -1)
    assert np.allclose(e.logits, want, atol=1e-5) and m.head.name(3 * 5 + 2, m.output_shapes) == "logits[3, 2]"


def test_cli_target_syntax():
    assert targets.parse("box:3") == targets.Box(index=3)
    assert targets.parse("class:dog@box:120,40,300,260") == targets.Box(box=(120, 40, 300, 260), cls="dog")
    assert targets.parse("class:2@box") == targets.Box(cls="2")
    r = targets.parse("region:15@mask.png")
    assert (r.cls, r.mask) == ("15", "mask.png")
    assert targets.parse("output:age:0") == targets.Output("age", (0,))
    assert targets.parse("281,285") is None
    with pytest.raises(OnnxplainError, match="box:K"):
        targets.parse("box:1,2")


def test_export_of_a_box_target_runs_in_a_fresh_session(exported, tmp_path):
    import onnxruntime as ort
    from onnxplain.export import export as export_graph
    nets, paths = exported
    m = onnxplain.load(paths["yolox"], device="cpu", preprocessing="unit")
    x = np.random.default_rng(10).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    e = onnxplain.explain(m, x, "saliency", target=targets.Box(cls=1))
    export_graph(m, "saliency", tmp_path / "sal.onnx")
    onnx.checker.check_model(str(tmp_path / "sal.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "sal.onnx"), providers=["CPUExecutionProvider"])
    maps, used = sess.run(["maps", "target_used"], {"images": x, "target": e.targets})
    assert (used == e.targets).all() and rel_err(maps, e.maps) <= 1e-6


def test_cli_explains_a_box_draws_it_and_lists_outputs_and_target_kinds(exported, tmp_path, capsys):
    from click.testing import CliRunner
    from PIL import Image
    from onnxplain_cli.main import cli, main
    nets, paths = exported
    rng = np.random.default_rng(11)
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(tmp_path / "scene.png")

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    out = run("inspect", paths["yolox"], "--preset", "unit")
    assert "detector head (yolox: output0[1, 64, 7]), 64 anchors × 2 classes" in out
    assert "output0[1, 64, 7]  detector head, yolox layout (2 classes): box targets" in out
    out = run("explain", paths["yolox"], tmp_path / "scene.png", "-m", "saliency", "-t", "class:1@box", "--preset",
              "unit", "-o", tmp_path / "out", "--device", "cpu")
    m = onnxplain.load(paths["yolox"], device="cpu", preprocessing="unit")
    e = onnxplain.explain(m, [tmp_path / "scene.png"], "saliency", target=targets.Box(cls=1))
    assert f"[{int(e.targets[0])}]" in out and "box [" in out
    drawn = np.asarray(Image.open(tmp_path / "out" / "scene.saliency.png"))[..., :3]
    assert np.array_equal(drawn, e.render(0))
    plain = dataclasses.replace(e, info={}).render(0)  # the same panel without the box: it differs on the outline
    outline = (drawn != plain).any(-1)
    assert outline.sum() >= 4 * 7 * (int(e.info["box"][0, 2] - e.info["box"][0, 0]) - 2)
    assert (drawn[outline] == 255).all()
    assert np.allclose(np.load(tmp_path / "out" / "scene.saliency.npy"), e.maps[0])
    out = run("methods")
    assert "pda" in out and "[classes of a softmax classifier only]" in out and "[boxes of a detector only]" in out
    with pytest.raises(SystemExit):
        main(["explain", str(paths["yolox"]), str(tmp_path / "scene.png"), "-t", "box:40", "--preset", "unit",
              "-o", str(tmp_path / "o2"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "box 40 does not exist" in err


def test_cli_lists_the_detections_box_k_numbers_not_anchors(tmp_path):
    """The toy detector with hand-set weights (a cell's objectness is its brightness, every box 12×12 about its
    cell's centre) on two neighbouring bright cells (one object: their boxes overlap at IoU 0.5) and a separate
    one: explain lists the 2 detections after NMS, as a numpy decode and NMS of the model's output give them, not
    the 3 top anchors; box:1 explains the second listed; an image without detections says so."""
    from click.testing import CliRunner
    from PIL import Image
    from onnxplain_cli.main import cli
    net = Detector("yolox", known=True).eval()
    with torch.no_grad():
        net.box.bias[2:] = np.log(3.0)
    path = export(net, tmp_path / "det.onnx", ["output0"])
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    image[8:12, 8:12], image[8:12, 12:16], image[24:28, 24:28] = 255, 204, 230  # cells (2, 2), (2, 3) and (6, 6)
    Image.fromarray(image).save(tmp_path / "scene.png")
    Image.fromarray(image * 0).save(tmp_path / "dark.png")
    with torch.no_grad():
        out = net(torch.from_numpy(image.transpose(2, 0, 1)[None] / np.float32(255))).numpy()
    kept = reference_detections(out, "yolox", 2, 0.25, 0.45)
    xywh = out[0, :, :4].astype(np.float64)
    corners = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    anchors = [a for a, _ in kept]
    assert anchors == [2 * CELLS + 2, 6 * CELLS + 6]  # the second cell of the first object is suppressed
    assert (out[0, :, 4] * out[0, :, 5] >= 0.25).sum() == 3

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in ("explain", path, tmp_path / "scene.png", "-m", "saliency",
                                          "--preset", "unit", "--device", "cpu", *args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    entry = json.loads(run("-o", tmp_path / "a", "--json"))["images"][0]
    assert [t["target"] for t in entry["top"]] == ["box:0", "box:1"] and entry["threshold"] == 0.25
    assert [(t["anchor"], t["class"], t["label"]) for t in entry["top"]] == [(a, c, "class 0") for a, c in kept]
    assert np.allclose([t["box"] for t in entry["top"]], corners[anchors], rtol=1e-6)
    assert np.allclose([t["score"] for t in entry["top"]], out[0, anchors, 4] * out[0, anchors, 5], rtol=1e-5)
    text = run("-o", tmp_path / "b").splitlines()
    listed = [line.split() for line in text if line.startswith("  box:")]
    assert [line[0] for line in listed] == ["box:0", "box:1"] and len(text) == 4
    assert np.allclose([[float(v.strip("[],")) for v in line[-4:]] for line in listed], corners[anchors], rtol=1e-3)
    second = json.loads(run("-t", "box:1", "-o", tmp_path / "c", "--json"))["images"][0]
    assert second["top"] == entry["top"]
    assert second["explained"][0]["class"] == anchors[1] * 2 + kept[1][1]
    assert np.allclose(second["explained"][0]["by_products"]["box"], corners[anchors[1]], rtol=1e-6)
    text = run("-t", "box:1", "-o", tmp_path / "d").splitlines()
    assert f"[{anchors[1] * 2}]" in text[0] and text[1].split("box ")[1] == " ".join(listed[1][-4:])
    dark = CliRunner().invoke(cli, ["explain", str(path), str(tmp_path / "dark.png"), "-m", "saliency", "--preset",
                                    "unit", "--device", "cpu", "-o", str(tmp_path / "e")], catch_exceptions=False)
    assert dark.output.splitlines()[-1] == "  no detection with score ≥ 0.25"
    m = onnxplain.load(path, device="cpu", preprocessing="unit")  # a Box's own threshold: the second is below it
    e = onnxplain.explain(m, [tmp_path / "scene.png"], "saliency", target=targets.Box(index=0, threshold=0.95))
    assert e.detections[0]["detections"] == entry["top"][:1] and e.detections[0]["threshold"] == 0.95


def test_a_heads_default_cam_layer_is_on_every_path_to_it(exported):
    """The toy detector's box and class convolutions both read the ReLU after the first convolution: that is the
    last block end every path to the head's scores passes through (the box conv's output, later, is not)."""
    from onnxplain.explain import cam_layer
    from onnxplain.rewrite.layers import block_ends, on_every_path
    m = onnxplain.load(exported[1]["yolov8"], device="cpu", preprocessing="unit")
    relu = next(n.output[0] for n in m.proto.graph.node if n.op_type == "Relu")
    ends = block_ends(m.layers(), m.layout_of)
    assert ends[-1] != relu and on_every_path(m.graph, m.input, m.score, ends) == [relu]
    assert cam_layer(m, None) == relu


class PicoDet(nn.Module):
    """Two scales (strides 4 and 8 on 32×32) of sigmoid class scores N×A×3 and DFL box distributions N×A×32 (8
    bins a side), as PaddleDetection's PicoDet exports them without post-processing."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleList(nn.Conv2d(8, 3 + 32, s, stride=s) for s in (4, 8))

    def forward(self, x):
        f = torch.relu(self.features(x))
        outs = [h(f).flatten(2).transpose(1, 2) for h in self.heads]
        return (*(torch.sigmoid(o[..., :3]) for o in outs), *(o[..., 3:] for o in outs))


def picodet_boxes(raw, stride, side=SIDE):
    """PaddleDetection's picodet_postprocess decode of one scale: centres (cell + 0.5)·stride, distances the
    expectation of a softmax over 8 bins, times the stride."""
    cells = side // stride
    ww, hh = np.meshgrid(np.arange(cells), np.arange(cells))
    ct_row, ct_col = (hh.flatten() + 0.5) * stride, (ww.flatten() + 0.5) * stride
    center = np.stack((ct_col, ct_row, ct_col, ct_row), axis=1)
    d = np.exp(raw.reshape(-1, 8) - raw.reshape(-1, 8).max(1, keepdims=True))
    distance = ((d / d.sum(1, keepdims=True)) * np.arange(8)).sum(1).reshape(-1, 4) * stride
    return center + np.array([-1, -1, 1, 1]) * distance


def test_picodet_scales_decode_as_paddledetection_and_differentiate_as_autograd(tmp_path):
    torch.manual_seed(12)
    net = PicoDet().eval()
    path = export(net, tmp_path / "pico.onnx", ["s0", "s1", "b0", "b1"])
    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    d = m.head.decoder
    assert (d.layout, d.outputs, d.classes, m.num_classes) == ("picodet", ("s0", "s1", "b0", "b1"), 3, 80 * 3)
    x = np.random.default_rng(13).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    with torch.no_grad():
        s0, s1, b0, b1 = (t.numpy() for t in net(torch.from_numpy(x)))
    for i in range(2):
        boxes = np.concatenate([picodet_boxes(b0[i], 4), picodet_boxes(b1[i], 8)])
        got = d.decode({"s0": s0[i:i + 1], "s1": s1[i:i + 1], "b0": b0[i:i + 1], "b1": b1[i:i + 1]}, (SIDE, SIDE))
        assert np.allclose(got[0][0], boxes, atol=1e-5)
    e = onnxplain.explain(m, x, "gradxinput", target=targets.Box(cls=2))
    for i in range(2):
        a = e.targets[i] // 3
        assert e.targets[i] % 3 == 2 and a == np.argmax(np.concatenate([s0[i, :, 2], s1[i, :, 2]]))
        pick = (lambda y: y[0][i, a, 2]) if a < 64 else (lambda y: y[1][i, a - 64, 2])
        assert rel_err(e.attributions[i], (x * autograd(net, x, pick))[i]) <= 1e-4


class TwoScales(nn.Module):
    """A YOLOv8-layout detector (N×(4+1)×A) on 64×64 with scales of stride 8 and 16 and hand-set weights: features
    f = the grey pixel; each scale's stem ReLU(cell mean of f − ½), then a 1×1 prediction conv: boxes the cells,
    the class logit 4·stem − 2 (stride 8) or 8·stem − 2 (stride 16). A bright 16×16 square on a stride-16 cell is
    detected best at stride 16; a dimmer background is in f but in no stem."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1)
        self.stems = nn.ModuleList(nn.Conv2d(2, 2, s, stride=s) for s in (8, 16))
        self.preds = nn.ModuleList(nn.Conv2d(2, 5, 1) for _ in (8, 16))
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
            self.features.weight[0, :, 0, 0] = 1 / 3
            for s, stem, pred, k in zip((8, 16), self.stems, self.preds, (4.0, 8.0)):
                stem.weight[0, 0] = 1 / s ** 2
                stem.bias[0] = -0.5
                pred.weight[4, 0, 0, 0], pred.bias[4] = k, -2.0
                gy, gx = torch.meshgrid(torch.arange(64 // s), torch.arange(64 // s), indexing="ij")
                cells = torch.stack([gx, gy, torch.ones_like(gx), torch.ones_like(gx)]).reshape(1, 4, -1)
                self.register_buffer(f"cells{s}", cells.float() * torch.tensor([s, s, s, s]).reshape(1, 4, 1)
                                     + torch.tensor([s / 2, s / 2, 0, 0]).reshape(1, 4, 1))

    def forward(self, x):
        f = torch.relu(self.features(x))
        outs = []
        for s, stem, pred in zip((8, 16), self.stems, self.preds):
            p = pred(torch.relu(stem(f))).flatten(2)
            outs.append(torch.cat([getattr(self, f"cells{s}") + p[:, :4], torch.sigmoid(p[:, 4:])], 1))
        return torch.cat(outs, 2)


def test_a_detectors_default_cam_layer_is_the_stem_of_the_scale_of_its_box(tmp_path):
    """Each box is explained at the features its scale predicts from: Grad-CAM of the 16×16 square's box at stride
    16's stem puts its energy on the box (the old default, the features every scale reads, spreads it over the
    background too); the other scale's stem has no gradient for it; images of one call at different scales each
    get their own scale's layer, as when explained alone."""
    from onnxplain.explain import cam_layer
    from onnxplain.metrics import energy_pointing_game
    from onnxplain.perturb import bilinear_weights
    path = export(TwoScales().eval(), tmp_path / "two.onnx", ["output0"], side=64)
    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    relus = [n.output[0] for n in m.graph.graph.node if n.op_type == "Relu"]  # f, the stride-8 stem, stride 16's
    assert m.scales()[0] == (relus[1], relus[2]) and m.scales()[1].tolist() == [0, 64]
    x = np.full((1, 3, 64, 64), 0.3, np.float32)
    x[..., 16:32, 32:48] = 1.0
    inside = np.zeros((1, 64, 64), bool)
    inside[:, 16:32, 32:48] = True
    e = onnxplain.explain(m, x, "gradcam", target=targets.Box(index=0))
    assert e.targets[0] == 64 + 1 * 4 + 2 and e.layer == relus[2] and e.info["box"][0].tolist() == [32, 16, 48, 32]
    old = onnxplain.explain(m, x, "gradcam", target=targets.Box(index=0), layer=cam_layer(m, None))
    assert cam_layer(m, None) == relus[0]
    # by definition: at the stem, one cell (its map upsampled bilinearly from 4×4); at f, the grey image
    up = bilinear_weights(4, 64)
    cell = np.outer(up[:, 1], up[:, 2])
    assert np.isclose(energy_pointing_game(e.maps, inside)[0], cell[inside[0]].sum() / cell.sum(), rtol=1e-4)  # 0.56
    assert np.isclose(energy_pointing_game(old.maps, inside)[0], 256 / (256 + 0.3 * (64 * 64 - 256)), rtol=1e-4)  # 0.18
    other = onnxplain.explain(m, x, "gradcam", target=targets.Box(index=0), layer=relus[1])
    assert not other.maps.any()
    both = onnxplain.explain(m, np.repeat(x, 2, 0), "gradcam", target=[targets.Box(index=0), targets.Box(index=1)])
    alone = onnxplain.explain(m, x, "gradcam", target=targets.Box(index=1))
    assert alone.layer == relus[1] and both.layer == f"{relus[2]},{relus[1]}"
    assert both.info["layer"].tolist() == [relus[2], relus[1]]
    assert np.allclose(both.maps, np.concatenate([e.maps, alone.maps]), atol=1e-6)
    assert np.allclose(both.attributions, both.maps)  # the stems' resolutions differ: the maps stand in
    from click.testing import CliRunner
    from onnxplain_cli.main import cli
    shown = CliRunner().invoke(cli, ["inspect", str(path), "--preset", "unit", "--json"], catch_exceptions=False)
    assert json.loads(shown.output)["scale_layers"] == [[relus[1], 0], [relus[2], 64]]


def test_evaluate_takes_explains_targets(exported, tmp_path):
    """`evaluate -t box:0` scores the top detection's anchor score, as the API given Box(index=0), and that equals
    scoring the head's model at the index the box resolves to; `-t tabby` is class 281."""
    from click.testing import CliRunner
    from PIL import Image
    from onnxplain.explain import prepare_images
    from onnxplain_cli.main import cli
    path, scene = exported[1]["yolov8"], tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(14).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(scene)

    def cli_row(model, image, target, window, step, *more):
        result = CliRunner().invoke(cli, ["evaluate", str(model), str(image), "-m", "occlusion", "-t", target, "-p",
                                          f"window={window}", "-p", f"stride={window}", "--step", str(step),
                                          "--json", "--device", "cpu", *more], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        row = json.loads(result.output)["methods"]["occlusion"]["images"][0]
        return {k: v for k, v in row.items() if k != "image"}

    def api(model, image, target, window, step):
        got = onnxplain.evaluate(model, [image], ["occlusion"], target, step=step,
                                 params={"occlusion": {"window": window, "stride": window}})["occlusion"]
        return {k: float(v[0]) for k, v in got.items()}

    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    headed, index = targets.resolve(m, targets.Box(index=0), prepare_images(m, [scene]))
    by_box = api(m, scene, targets.Box(index=0), 8, 64)
    assert by_box == api(headed, scene, index.tolist(), 8, 64)
    assert cli_row(path, scene, "box:0", 8, 64, "--preset", "unit") == by_box
    mobilenet = onnxplain.load(MOBILENET, device="cpu")
    assert cli_row(MOBILENET, IMAGES[0], "tabby", 112, 5000) == api(mobilenet, IMAGES[0], 281, 112, 5000)


def test_a_detector_explained_at_another_size_counts_its_anchors_there(tmp_path):
    """PicoDet-style scales on a free-size input, loaded at 32×32 (80 anchors) and explained on 64×64 arrays (320
    anchors): a box target beyond the 32×32 count is explained as autograd's anchor score, and indices beyond the
    64×64 count are refused in one line."""
    torch.manual_seed(15)
    net = PicoDet().eval()
    names = ["s0", "s1", "b0", "b1"]
    torch.onnx.export(net, (torch.zeros(1, 3, SIDE, SIDE),), str(tmp_path / "free.onnx"), dynamo=False,
                      opset_version=17, input_names=["images"], output_names=names,
                      dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, **{n: {0: "n", 1: "a"} for n in names}})
    m = onnxplain.load(tmp_path / "free.onnx", device="cpu", preprocessing={"preset": "unit", "size": [SIDE, SIDE]})
    assert m.num_classes == 80 * 3
    x = np.random.default_rng(16).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    assert m.for_batch(x).num_classes == 320 * 3
    k = 300 * 3 + 1  # scale 1 (stride 8: 64 anchors after stride 4's 256), anchor 44, class 1
    e = onnxplain.explain(m, x, "gradxinput", target=k)
    assert e.targets[0] == k and e.logits.shape == (1, 320 * 3)
    assert rel_err(e.attributions, x * autograd(net, x, lambda y: y[1][0, 44, 1])) <= 1e-4
    with pytest.raises(OnnxplainError, match=r"target 960 is not a class of this model \(0\.\.959\)"):
        onnxplain.explain(m, x, "gradxinput", target=960)


def test_drise_is_rise_weighted_by_the_definitions_similarity(exported):
    """D-RISE with a fixed seed equals RISE with the same masks (seed, count, cells) scored by D-RISE's similarity
    written out here with loops (Petsiuk 2021: per masked image, the max over its proposals j of
    IoU(box, box_j) · p_j[class] / ‖p_j‖ · objectness_j), for two images whose masks share batches."""
    nets, paths = exported
    m = onnxplain.load(paths["yolox"], device="cpu", preprocessing="unit")
    x = np.random.default_rng(17).uniform(0, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    params = dict(masks=40, cells=4, seed=3, batch_size=16)
    e = onnxplain.explain(m, x, "drise", **params)
    boxes, classes = e.info["box"].astype(np.float64), e.targets % 2

    def corners(b):
        return np.array([b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2])

    def overlap(a, b):
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        inter = max(w, 0) * max(h, 0)
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    def definition(out):
        y = out["output0"].astype(np.float64)  # N×A×(4 + objectness + 2 classes)
        return np.array([[max(overlap(box, corners(p[:4])) * p[5 + c] / np.linalg.norm(p[5:]) * p[4] for p in rows)
                          for box, c in zip(boxes, classes)] for rows in y])

    r = onnxplain.explain(m, x, "rise", target=[0, 1], score=definition, **params)
    assert np.allclose(e.maps, r.maps, rtol=1e-6, atol=1e-9) and e.maps.std() > 0
