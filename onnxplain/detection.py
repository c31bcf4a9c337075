"""Decoders for detectors' raw heads: where the boxes, class scores and objectness sit in the outputs.

A decoder does two things with the same layout:
- `scores(g, tensors)`: appends ONNX nodes giving N×A×C, the class score of every anchor (times its objectness where
  the layout has one): the tensor a box target differentiates (as pytorch-grad-cam's `FasterRCNNBoxScoreTarget`);
- `decode(outputs, size)`: on the host, boxes N×A×4 (x1, y1, x2, y2 in input pixels), the same N×A×C scores, the
  class vectors N×A×C and objectness N×A (a layout without one: each anchor's top class score, its confidence), to
  choose a detection (threshold and NMS) and for D-RISE's similarity.

Layouts (`--decoder NAME`; chosen from the output shapes when not given):
- `yolov8`: one output N×(4+C)×A, boxes cx, cy, w, h, then C class scores (ultralytics YOLOv8/v11 exports).
- `yolox`: one output N×A×(5+C), boxes cx, cy, w, h, objectness, then C class scores (YOLOv5, YOLOX decoded).
- `yolox-raw`: as `yolox` with boxes still on the grid (YOLOX exported without decoding: offsets and log sizes per
  cell of strides 8, 16, 32), decoded on the host.
- `split`: two outputs N×A×4 (boxes x1, y1, x2, y2; divided by the input size when all lie in [0, 1]) and N×A×C
  (class scores): SSD, RetinaNet and face-detector heads.
- `end2end`: one output N×D×6 (x1, y1, x2, y2, score, class): detectors with NMS inside (ultralytics end-to-end).
- `picodet`: one pair of outputs per scale, class scores N×A_l×C and box distributions N×A_l×4(R+1) (GFL's DFL:
  each side's distance is the expectation of a softmax over R+1 bins, times the stride, from the cell centre), the
  stride of a scale read from its anchor count (PaddleDetection PicoDet exported without post-processing).
- `centerface`: dense maps of one grid at stride 4, N×1×h×w face heatmap (after its Sigmoid), N×2×h×w log sizes
  (height, width: exp(s)·4), N×2×h×w centre offsets (y, x) and optionally N×10×h×w landmarks, in that output order
  (CenterFace): one anchor per cell, one class (face); boxes decoded as CenterFace's own `decode` does.
- `mtcnn`: MTCNN's P-Net, a 2-channel softmax map (channel 1: face) and a 4-channel box regression of one grid
  (N×h×w×C or N×C×h×w), stride 2 and cell 12: the cell (i, j)'s box is (2j+1, 2i+1, 2j+12, 2i+12) moved by the
  regression times its side 11, then made square about its centre and truncated to whole pixels, as MTCNN's first
  stage does at scale 1, in the frame of the image the net sees (P-Net was trained on transposed images: channels
  0 and 2 move the box's top and bottom edges in that frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OnnxplainError

DECODERS = ("yolov8", "yolox", "yolox-raw", "split", "end2end", "picodet", "centerface", "mtcnn")
ROLES = {"split": ("boxes x1, y1, x2, y2", "class scores"),
         "centerface": ("face heatmap (one anchor per cell)", "log box sizes (height, width)",
                        "box centre offsets (y, x)", "5 landmarks (y, x offsets in box sizes)"),
         "mtcnn": ("face / non-face softmax (one anchor per cell)", "box edge regression")}
FACE = 4     # CenterFace's stride
CELL = 12    # P-Net's cell (its 12×12 training input) and stride 2


@dataclass(frozen=True)
class Decoder:
    layout: str
    outputs: tuple[str, ...]  # the outputs read: one; (boxes, scores) for `split`; the scores then the boxes of
    #                           each scale for `picodet`; heatmap, sizes, offsets[, landmarks] for `centerface`;
    #                           face scores, box regression for `mtcnn`
    classes: int
    channel_last: bool = False  # whether the dense maps of `mtcnn` are N×h×w×C

    def scores(self, g, tensors: dict):
        """N×A×C nodes: each anchor's class scores, times its objectness where the layout has one."""
        y = tensors[self.outputs[0]]
        if self.layout == "yolov8":
            return g.Transpose(g.slice(y, [4], [4 + self.classes], [1]), perm=[0, 2, 1])
        if self.layout in ("yolox", "yolox-raw"):
            return g.Mul(g.slice(y, [4], [5], [2]), g.slice(y, [5], [5 + self.classes], [2]))
        if self.layout == "end2end":
            return g.slice(y, [4], [5], [2])
        if self.layout == "picodet":
            return g.Concat(*(tensors[n] for n in self.outputs[:len(self.outputs) // 2]), axis=1)
        if self.layout == "centerface":  # N×1×h×w: one anchor per cell, in row-major order
            return g.unsqueeze(g.Flatten(y, axis=1), [2])
        if self.layout == "mtcnn":
            return g.unsqueeze(g.Flatten(g.slice(y, [1], [2], [3 if self.channel_last else 1]), axis=1), [2])
        return tensors[self.outputs[1]]

    def decode(self, out: dict, size: tuple[int, int]):
        """(boxes N×A×4 x1y1x2y2 in input pixels, scores N×A×C, class vectors N×A×C, objectness N×A)."""
        y = out[self.outputs[0]].astype(np.float64)
        if self.layout == "yolov8":
            y = y.transpose(0, 2, 1)
            boxes, probs = _corners(y[..., :4]), y[..., 4:]
            return boxes, probs, probs, probs.max(axis=-1)
        if self.layout in ("yolox", "yolox-raw"):
            xywh = _grid(y[..., :4], size) if self.layout == "yolox-raw" else y[..., :4]
            obj, probs = y[..., 4], y[..., 5:]
            return _corners(xywh), probs * obj[..., None], probs, obj
        if self.layout == "end2end":
            n, d = y.shape[:2]
            labels = np.clip(np.round(y[..., 5]).astype(np.int64), 0, None)
            probs = np.zeros((n, d, int(labels.max(initial=0)) + 1))
            np.put_along_axis(probs, labels[..., None], 1.0, axis=2)
            return y[..., :4], y[..., 4:5], probs, y[..., 4]
        if self.layout == "picodet":
            levels = len(self.outputs) // 2
            probs = np.concatenate([out[n].astype(np.float64) for n in self.outputs[:levels]], axis=1)
            boxes = np.concatenate([_distributions(out[n].astype(np.float64), size)
                                    for n in self.outputs[levels:]], axis=1)
            return boxes, probs, probs, probs.max(axis=-1)
        if self.layout == "centerface":
            boxes = _centres(*(out[n].astype(np.float64) for n in self.outputs[1:3]), size)
            probs = y.reshape(len(y), -1, 1)
            return boxes, probs, probs, probs[..., 0]
        if self.layout == "mtcnn":
            probs, boxes = _cells(*(self._first(out[n].astype(np.float64)) for n in self.outputs))
            return boxes, probs, probs, probs[..., 0]
        boxes, probs = y, out[self.outputs[1]].astype(np.float64)
        if boxes.size and np.abs(boxes).max() <= 1.0:
            boxes = boxes * np.array([size[1], size[0], size[1], size[0]])
        return boxes, probs, probs, probs.max(axis=-1)

    def role(self, output: str) -> str:
        """What output `output` holds in this layout, for `inspect`."""
        roles = ROLES.get(self.layout)
        return roles[self.outputs.index(output)] if roles else f"{self.classes} classes"

    def _first(self, y: np.ndarray) -> np.ndarray:
        """A dense map N×C×h×w, from N×h×w×C when the layout's maps are channel-last."""
        return y.transpose(0, 3, 1, 2) if self.channel_last else y

    def landmarks(self, out: dict, size: tuple[int, int]) -> np.ndarray | None:
        """Each anchor's five landmarks N×A×5×2 (x, y in input pixels) where the layout has them (CenterFace's
        fourth map: each point's offsets from the box's top-left corner in units of its size), else None."""
        if self.layout != "centerface" or len(self.outputs) < 4:
            return None
        boxes = _centres(*(out[n].astype(np.float64) for n in self.outputs[1:3]), size)
        marks = out[self.outputs[3]].astype(np.float64)
        n, k = marks.shape[:2]
        yx = marks.reshape(n, k // 2, 2, -1).transpose(0, 3, 1, 2)  # N×A×5×(y, x)
        sides = np.exp(out[self.outputs[1]].astype(np.float64).reshape(n, 2, -1).transpose(0, 2, 1)) * FACE
        return yx[..., ::-1] * sides[:, :, None, ::-1] + boxes[:, :, None, :2]


def _centres(scale: np.ndarray, offset: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """CenterFace's boxes N×A×4 from its log sizes and offsets N×2×h×w (height, width; y, x): centre (cell + offset
    + ½)·4, size exp(s)·4, the top-left corner clipped to the input and the far corner at most its size further and
    inside the input (as its `decode` computes them)."""
    n, _, h, w = scale.shape
    if (h * FACE, w * FACE) != tuple(size):
        raise OnnxplainError(f"decoder centerface: the {h}x{w} maps are not the {size[0]}x{size[1]} input at stride "
                             f"{FACE}")
    gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cy, cx = (gy + offset[:, 0] + 0.5) * FACE, (gx + offset[:, 1] + 0.5) * FACE
    bh, bw = np.exp(np.clip(scale[:, 0], None, 30)) * FACE, np.exp(np.clip(scale[:, 1], None, 30)) * FACE
    x1, y1 = np.clip(cx - bw / 2, 0, size[1]), np.clip(cy - bh / 2, 0, size[0])
    boxes = np.stack([x1, y1, np.minimum(x1 + bw, size[1]), np.minimum(y1 + bh, size[0])], -1)
    return boxes.reshape(n, h * w, 4)


def _cells(prob: np.ndarray, reg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P-Net's face scores N×A×1 and boxes N×A×4 from its N×2×h×w softmax and N×4×h×w regression: cell boxes
    (2j+1, 2i+1, 2j+12, 2i+12) moved by the regression times their side 11 (channels 0 and 2: the edges along the
    first grid axis), squared about their centre by the longer side, truncated towards zero (MTCNN's stage 1)."""
    n, _, h, w = prob.shape
    gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cells = np.stack([2 * gx + 1, 2 * gy + 1, 2 * gx + CELL, 2 * gy + CELL], -1).reshape(1, -1, 4).astype(np.float64)
    moved = cells + reg.reshape(n, 4, -1).transpose(0, 2, 1)[..., [1, 0, 3, 2]] * (CELL - 1)
    sides = moved[..., 2:] - moved[..., :2]
    longest = sides.max(-1, keepdims=True)
    corner = moved[..., :2] + sides / 2 - longest / 2
    return prob[:, 1].reshape(n, -1, 1), np.fix(np.concatenate([corner, corner + longest], -1))


def _corners(xywh: np.ndarray) -> np.ndarray:
    half = xywh[..., 2:4] / 2
    return np.concatenate([xywh[..., :2] - half, xywh[..., :2] + half], axis=-1)


def _grid(raw: np.ndarray, size: tuple[int, int], strides=(8, 16, 32)) -> np.ndarray:
    """YOLOX's grid decoding: (offset + cell) · stride for the centre, exp(log size) · stride for the size."""
    cells, steps = [], []
    for s in strides:
        gy, gx = np.meshgrid(np.arange(size[0] // s), np.arange(size[1] // s), indexing="ij")
        cells.append(np.stack([gx, gy], -1).reshape(-1, 2))
        steps.append(np.full((len(cells[-1]), 1), s))
    cells, steps = np.concatenate(cells), np.concatenate(steps)
    if len(cells) != raw.shape[1]:
        raise OnnxplainError(f"decoder yolox-raw expects {len(cells)} anchors (strides 8, 16, 32 on "
                             f"{size[0]}x{size[1]}), the output has {raw.shape[1]}")
    return np.concatenate([(raw[..., :2] + cells) * steps, np.exp(np.clip(raw[..., 2:4], None, 30)) * steps], -1)


def _distributions(d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PicoDet's boxes of one scale from N×A×4(R+1) distributions: the stride is the power of two whose grid over
    the input (sides rounded up) has A cells, centres at (cell + ½)·stride."""
    n, a, bins = d.shape[0], d.shape[1], d.shape[2] // 4
    stride = next((s for s in (2 ** k for k in range(1, 9)) if -(-size[0] // s) * -(-size[1] // s) == a), None)
    if stride is None:
        raise OnnxplainError(f"decoder picodet: no stride puts {a} anchors on a {size[0]}x{size[1]} input")
    gy, gx = np.meshgrid(np.arange(-(-size[0] // stride)), np.arange(-(-size[1] // stride)), indexing="ij")
    centres = (np.stack([gx, gy, gx, gy], -1).reshape(-1, 4) + 0.5) * stride
    z = d.reshape(n, a, 4, bins)
    p = np.exp(z - z.max(-1, keepdims=True))
    distance = (p / p.sum(-1, keepdims=True)) @ np.arange(bins) * stride
    return centres + distance * np.array([-1, -1, 1, 1])


def _scales(shapes: dict[str, tuple]) -> Decoder | None:
    """PicoDet-style outputs: two rank-3 outputs per anchor count (≥ 2 scales), class scores of one width C and
    box distributions of one width 4(R+1) ≥ 20 (of two such widths, the smaller), scales ordered finest first."""
    by_anchors: dict[int, list[str]] = {}
    for name, shape in shapes.items():
        if len(shape) == 3:
            by_anchors.setdefault(shape[1], []).append(name)
    if len(by_anchors) < 2 or any(len(names) != 2 for names in by_anchors.values()):
        return None
    scores, boxes = [], []
    for a in sorted(by_anchors, reverse=True):
        pair = sorted(by_anchors[a], key=lambda n: shapes[n][2])
        fits = [n for n in pair if shapes[n][2] % 4 == 0 and shapes[n][2] >= 20]
        if not fits:
            return None
        boxes.append(fits[0])
        scores.append(next(n for n in pair if n != fits[0]))
    if len({shapes[n][2] for n in scores}) != 1 or len({shapes[n][2] for n in boxes}) != 1:
        return None
    return Decoder("picodet", (*scores, *boxes), shapes[scores[0]][2])


def candidates(shapes: dict[str, tuple], softmaxed=frozenset()) -> list[Decoder]:
    """Every reading of outputs of these shapes (name → shape of one image's run, batch first) as a raw head.
    `softmaxed`: outputs a Softmax makes, which no one-output layout reads (a distribution is no raw head, e.g.
    PP-OCR's N×T×characters); a split layout's scores may be one (SSD)."""
    found = []
    for name, shape in shapes.items():
        if len(shape) != 3 or name in softmaxed:
            continue
        _, a, b = shape
        if b == 6 and a > 6:
            found.append(Decoder("end2end", (name,), 1))
        if b > a > 4:
            found.append(Decoder("yolov8", (name,), a - 4))
        if a > b > 5:
            found += [Decoder("yolox", (name,), b - 5), Decoder("yolox-raw", (name,), b - 5)]
    for box, shape in shapes.items():
        scores = [n for n, s in shapes.items() if len(s) == 3 and n != box and s[1] == shape[1]]
        if len(shape) == 3 and shape[2] == 4 and len(scores) == 1:
            found.append(Decoder("split", (box, scores[0]), shapes[scores[0]][2]))
    scales = _scales(shapes)
    return found + ([scales] if scales else []) + _faces(shapes)


def _faces(shapes: dict[str, tuple]) -> list[Decoder]:
    """Dense face heads: CenterFace's maps of 1, 2, 2 (and 10) channels on one N×C×h×w grid, in that output order;
    P-Net's 2-channel score and 4-channel regression maps on one grid, channels first or last."""
    found = []
    grids: dict[tuple, list[str]] = {}
    for name, shape in shapes.items():
        if len(shape) == 4:
            grids.setdefault(tuple(shape[2:]), []).append(name)
    for names in grids.values():
        channels = [shapes[n][1] for n in names]
        if sorted(channels) in ([1, 2, 2], [1, 2, 2, 10]):
            sizes = [n for n in names if shapes[n][1] == 2]
            found.append(Decoder("centerface", (names[channels.index(1)], *sizes,
                                                *(n for n in names if shapes[n][1] == 10)), 1))
    for last in (False, True):
        grids = {}
        for name, shape in shapes.items():
            if len(shape) == 4 and shape[3 if last else 1] in (2, 4):
                grids.setdefault(tuple(shape[1:3] if last else shape[2:]), {})[shape[3 if last else 1]] = name
        found += [Decoder("mtcnn", (pair[2], pair[4]), 1, last) for pair in grids.values() if len(pair) == 2]
    return found


END2END_MOST = 1000  # an N×D×6 output with D up to this is read as end-to-end detections, a longer one as YOLOX


def choose(shapes: dict[str, tuple], wanted: str | None = None, output: str | None = None,
           softmaxed=frozenset()) -> Decoder | None:
    """The decoder for outputs of these shapes: layout `wanted` if given, else PicoDet's pairs of outputs per scale
    where they fit, else the one layout they fit (an N×D×6 output: end-to-end when D ≤ END2END_MOST, else YOLOX
    with one class); None when none fits. `output`: only layouts reading that output; `softmaxed` as in
    `candidates`."""
    if wanted is not None and wanted not in DECODERS:
        raise OnnxplainError(f"unknown decoder '{wanted}' (known: {', '.join(DECODERS)})")
    found = [d for d in candidates(shapes, softmaxed) if output is None or output in d.outputs]
    if wanted is not None:
        found = [d for d in found if d.layout == wanted]
        if len(found) != 1:
            described = ", ".join(f"{n}{list(s)}" for n, s in shapes.items())
            raise OnnxplainError(f"decoder '{wanted}' fits {'none' if not found else 'several'} of the outputs "
                                 f"({described}); choose one with --output NAME")
        return found[0]
    found = [d for d in found if d.layout != "yolox-raw" and not (
        d.layout == "end2end" and shapes[d.outputs[0]][1] > END2END_MOST or
        d.layout == "yolox" and shapes[d.outputs[0]][2] == 6 and shapes[d.outputs[0]][1] <= END2END_MOST)]
    scales = [d for d in found if d.layout == "picodet"]  # pairs of outputs per scale: the most specific reading
    return scales[0] if scales else found[0] if len(found) == 1 else None


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a (…×4) and b (…×4), broadcasting."""
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda t: np.clip(t[..., 2:] - t[..., :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def detections(boxes: np.ndarray, scores: np.ndarray, threshold: float, overlap: float) -> list[tuple[int, int]]:
    """One image's detections as (anchor, class), best first: class scores ≥ threshold, greedy NMS per class (a box
    is dropped when its IoU with a better one of its class exceeds `overlap`)."""
    anchors, classes = np.nonzero(scores >= threshold)
    order = np.argsort(-scores[anchors, classes], kind="stable")
    kept: list[tuple[int, int]] = []
    for a, c in zip(anchors[order], classes[order]):
        if all(k != c or iou(boxes[a], boxes[b]) <= overlap for b, k in kept):
            kept.append((int(a), int(c)))
    return kept


def similarity(decoded: tuple, boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """D-RISE's score (Petsiuk et al. 2021) of a batch's detections for M target detections: for each image b and
    target m, max over proposals j of IoU(box_m, box_j) · cos(onehot(class_m), p_j) · objectness_j, from
    `decoded` = decode(...) of the batch; boxes M×4, classes M. Returns B×M."""
    found, _, probs, obj = decoded
    norm = np.maximum(np.linalg.norm(probs, axis=-1), 1e-12)[:, None]                  # B×1×J
    scores = np.take(probs, np.asarray(classes, np.int64), axis=-1).transpose(0, 2, 1)  # B×M×J
    overlap = iou(np.asarray(boxes, np.float64)[None, :, None], found[:, None])         # B×M×J
    return (overlap * scores / norm * obj[:, None]).max(axis=-1)
