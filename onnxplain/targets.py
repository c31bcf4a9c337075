"""Targets as score heads: what a method explains, as ONNX nodes appended after the model's outputs.

A head turns the model's outputs into one N×K score tensor (`SCORE`), and a target is an index k into it per image,
so every method (white-box through the gradient of that tensor's element, black-box through its value, `export`
through the same graph) explains the same scalar, and never knows which head made it:
- a classifier's class scores are their own head (no nodes added: today's behaviour);
- `Flat(output)`: the elements of any output, flattened per image (a regression output, a multi-output model's head);
- `RegionSum(output, mask)`: per class, the sum of a segmentation output N×C×H×W over a mask (the whole output by
  default), as pytorch-grad-cam's `SemanticSegmentationTarget`;
- `DetectionScores(decoder)`: every anchor's class score (times its objectness) of a detector's raw head, N×(A·C),
  anchor-major: k = anchor·C + class (see `detection.py`).

Target objects choose the head and the index: `Output(name, index)`, `Region(cls, mask)`, `Box(index | box | cls)`.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .detection import Decoder, detections, iou
from .errors import OnnxplainError
from .labels import resolve as class_number
from .rewrite.builder import Builder

SCORE = "onnxplain_score"  # the output holding the head's N×K scores


# -- heads: N×K scores as ONNX nodes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flat:
    """Every element of `output`, flattened per image; `batch_axis`: where its images lie (1 in a time-major
    T×N×C output of a CRNN), moved to the front first, of the output's `rank` (as run: some exports declare
    another)."""

    output: str
    batch_axis: int = 0
    rank: int = 0

    def build(self, g: Builder, tensors: dict):
        y = tensors[self.output]
        if self.batch_axis:
            if y.shape is not None and len(y.shape) != self.rank:  # a declaration the run contradicts (ddddocr's
                y.shape = [None] * self.rank                         # T×N×C declared [1, seqlen]): its rank only
            y = g.Transpose(y, perm=[self.batch_axis] + [i for i in range(self.rank) if i != self.batch_axis])
        return g.Flatten(y, axis=1)

    def _per_image(self, shapes: dict) -> list:
        return [s for i, s in enumerate(shapes[self.output]) if i != self.batch_axis]

    def size(self, shapes: dict) -> int:
        return math.prod(self._per_image(shapes))

    def describe(self, shapes: dict) -> str:
        where = f" (images on its axis {self.batch_axis})" if self.batch_axis else ""
        return f"the elements of '{self.output}' {list(shapes[self.output])}{where}, flattened per image"

    def name(self, k: int, shapes: dict, labels=None) -> str:
        return f"{self.output}{list(int(i) for i in np.unravel_index(k, self._per_image(shapes)))}"


@dataclass(frozen=True)
class RegionSum:
    """Per class, the sum of segmentation output `output` (N×C×H×W, or N×H×W: one class) over a mask at its
    resolution (`mask`: float32 bytes of shape `mask_shape`; none: the whole output)."""

    output: str
    mask: bytes | None = field(default=None, repr=False)
    mask_shape: tuple[int, int] | None = None

    def build(self, g: Builder, tensors: dict):
        y = tensors[self.output]
        if y.shape is not None and len(y.shape) == 3:
            y = g.unsqueeze(y, [1])
        if self.mask is not None:
            m = np.frombuffer(self.mask, np.float32).reshape(1, 1, *self.mask_shape)
            y = g.Mul(y, g.const(m, like=y))
        return g.reduce_sum(y, [2, 3], keepdims=False)

    def size(self, shapes: dict) -> int:
        shape = shapes[self.output]
        return 1 if len(shape) == 3 else shape[1]

    def describe(self, shapes: dict) -> str:
        where = "the mask" if self.mask is not None else "the whole output"
        return f"the sum of each class map of '{self.output}' {list(shapes[self.output])} over {where}"

    def name(self, k: int, shapes: dict, labels=None) -> str:
        return _label(labels, k)


@dataclass(frozen=True)
class DetectionScores:
    """Each anchor's class score (times its objectness) of a detector's raw head: k = anchor·C + class."""

    decoder: Decoder

    def build(self, g: Builder, tensors: dict):
        return g.Flatten(self.decoder.scores(g, tensors), axis=1)

    def size(self, shapes: dict) -> int:
        return self.anchors(shapes) * self.decoder.classes

    def anchors(self, shapes: dict) -> int:
        d = self.decoder
        if d.layout == "picodet":
            return sum(shapes[n][1] for n in d.outputs[:len(d.outputs) // 2])
        shape = shapes[d.outputs[0]]
        if d.layout in ("centerface", "mtcnn"):  # one anchor per cell of the map
            return math.prod(shape[1:3] if d.channel_last else shape[2:])
        return shape[2] if d.layout == "yolov8" else shape[1]

    def describe(self, shapes: dict) -> str:
        d = self.decoder
        return (f"detector head ({d.layout}: {', '.join(f'{n}{list(shapes[n])}' for n in d.outputs)}), "
                f"{self.anchors(shapes)} anchors × {d.classes} classes")

    def name(self, k: int, shapes: dict, labels=None) -> str:
        a, c = divmod(k, self.decoder.classes)
        return f"{_label(labels, c)} at anchor {a}"

    @property
    def output(self) -> str:
        return self.decoder.outputs[0]


def _label(labels, c: int) -> str:
    return labels[c] if labels and c < len(labels) else f"class {c}"


def attach(proto: onnx.ModelProto, head, opset: int) -> onnx.ModelProto:
    """The model with `head`'s nodes after its outputs, its N×K scores added as output `SCORE`."""
    graph = gs.import_onnx(proto)
    y = head.build(Builder(graph, opset, "target"), graph.tensors())
    out = gs.Variable(SCORE, dtype=np.float32)
    graph.nodes.append(gs.Node("Cast", name=f"{SCORE}/cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[y],
                               outputs=[out]))
    graph.outputs.append(out)
    return gs.export_onnx(graph, do_type_check=False)


def guesses(model) -> list[tuple[str, tuple, str]]:
    """(name, shape for one image, what it probably is and which targets read it) for each output of `model`."""
    from .detection import choose
    from .model import softmaxed
    shapes = model.output_shapes
    decoder = (model.head.decoder if isinstance(model.head, DetectionScores) else
               choose(shapes, softmaxed=softmaxed(model.bare or model.proto)))
    readers = {n: decoder for n in decoder.outputs} if decoder else {}
    rows = []
    for name, shape in shapes.items():
        if name == model.output and model.head is None:
            guess = f"class scores ({model.activation or 'logits'}): class targets"
        elif name in readers:
            d = readers[name]
            guess = f"detector head, {d.layout} layout ({d.role(name)}): box targets (--decoder to change)"
        else:
            guess = guessed(shape)
        rows.append((name, tuple(shape), guess))
    return rows


def guessed(shape: tuple) -> str:
    """What an output of `shape` (for one image, batch first) that no head reads probably is, and which targets read
    it."""
    if len(shape) == 4:
        return "dense maps N×C×H×W (segmentation): region targets"
    if len(shape) == 2 and shape[1] == 1:
        return "one value per image (regression or a binary score): output targets"
    if len(shape) == 2:
        return "a vector per image (scores or an embedding): output targets"
    if shape and shape[0] != 1:
        return "its first axis is not the batch: no target reads it"
    return "output targets (elements, flattened per image)"


# -- targets: a head and an index per image ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """Element `index` of output `name` (a flat index into one image's output, or a tuple of indices; None: each
    image's largest)."""

    name: str
    index: int | tuple | None = None


@dataclass(frozen=True, eq=False)
class Region:
    """Class `cls` (an index or a label; None: each image's largest region sum) of a segmentation output, summed over
    `mask` (a path to an image, non-zero inside, or an H×W array; any size, resized to the output's by nearest
    neighbour; None: the whole output). `output` names the output when the model has several."""

    cls: int | str | None = None
    mask: object = None
    output: str | None = None


@dataclass(frozen=True)
class Box:
    """One detection of a detector: the `index`-th detection (best first, after score `threshold` and per-class NMS
    at IoU `overlap`, done on the host for choosing only), or the one with the best IoU with `box` (x1, y1, x2, y2
    in input pixels) among them, or the top-scoring anchor of class `cls` (alone, or restricting the other two);
    all None: each image's top anchor. The differentiated score is that anchor's class score (times objectness)."""

    index: int | None = None
    box: tuple | None = None
    cls: int | str | None = None
    threshold: float = 0.25
    overlap: float = 0.45


TARGETS = (Output, Region, Box)


def is_target(target) -> bool:
    """Whether `target` is a target object, or a list of them (one per image)."""
    items = target if isinstance(target, (list, tuple)) else [target]
    return bool(items) and all(isinstance(t, TARGETS) for t in items)


def resolve(model, target, inputs: np.ndarray):
    """(the model with the target's head, the index per image) for a target object or one per image; other targets
    (class indices) are returned as they are, for the model as it is."""
    if not is_target(target):
        if isinstance(target, (list, tuple)) and any(isinstance(t, TARGETS) for t in target):
            raise OnnxplainError("target mixes target objects and class indices; give one kind")
        return model, target
    items = list(target) if isinstance(target, (list, tuple)) else [target] * len(inputs)
    if len(items) != len(inputs):
        raise OnnxplainError(f"{len(items)} targets for {len(inputs)} images: give one, or one per image")
    heads = {_head(model, t) for t in items}
    if len(heads) != 1:
        raise OnnxplainError("the targets of one call must share their head (the same output, mask or detector); "
                             "explain them in separate calls")
    headed = model.with_head(heads.pop())
    out = _outputs(headed, inputs) if any(isinstance(t, Box) for t in items) else None
    return headed, np.array([_index(headed, t, None if out is None else {k: v[i:i + 1] for k, v in out.items()})
                             for i, t in enumerate(items)], np.int64)


def _head(model, t):
    shapes = model.output_shapes
    if isinstance(t, Output):
        if t.name not in shapes:
            raise OnnxplainError(f"the model has no output '{t.name}'; its outputs: {model.outputs_text}")
        same = isinstance(model.head, Flat) and model.head.output == t.name
        return model.head if same else Flat(t.name)
    if isinstance(t, Box):
        if not isinstance(model.head, DetectionScores):
            raise OnnxplainError(f"a box target needs a detector head, and no decoder fits the outputs "
                                 f"({model.outputs_text}); choose one with --decoder NAME (load(decoder=NAME))")
        return model.head
    output = t.output or (model.head.output if isinstance(model.head, RegionSum) else None)
    if output is None:
        maps = [n for n, s in shapes.items() if len(s) == 4]
        if len(maps) != 1:
            raise OnnxplainError(f"a region target needs a segmentation output (N×C×H×W); name it with "
                                 f"Region(output=NAME) (--output NAME); the outputs: {model.outputs_text}")
        output = maps[0]
    shape = shapes.get(output)
    if shape is None or len(shape) not in (3, 4):
        raise OnnxplainError(f"a region target needs a segmentation output N×C×H×W or N×H×W, and '{output}' is "
                             f"{list(shape) if shape else 'not an output'}; the outputs: {model.outputs_text}")
    if t.mask is None:
        return RegionSum(output)
    m = _mask(t.mask, model.path, shape[-2:])
    return RegionSum(output, m.tobytes(), m.shape)


def _mask(mask, model_path, size) -> np.ndarray:
    """A float32 0/1 mask of `size` (H×W) from an image path or an array, resized by nearest neighbour."""
    from PIL import Image

    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise OnnxplainError(f"mask image not found: {path}")
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L"))
        except Exception as exc:
            raise OnnxplainError(f"cannot read mask image {path}: {exc}") from None
    try:
        m = np.asarray(mask, dtype=np.float64)
    except (TypeError, ValueError):
        raise OnnxplainError(f"mask must be an image path or an H×W array, not {reprlib.repr(mask)}") from None
    if m.ndim != 2 or not m.size or not np.isfinite(m).all():
        raise OnnxplainError(f"mask must be a finite H×W array, not of shape {m.shape}")
    rows = (np.arange(size[0]) * m.shape[0] // size[0])
    cols = (np.arange(size[1]) * m.shape[1] // size[1])
    out = (m[rows][:, cols] != 0).astype(np.float32)
    if not out.any():
        raise OnnxplainError(f"the mask is empty at the output's {size[0]}x{size[1]} resolution")
    return out


def _outputs(model, inputs: np.ndarray) -> dict:
    from .rewrite.graph import Request

    session = model.session(Request())
    names = list(session.output_names)
    return dict(zip(names, session.run(names, {model.input: inputs}, model.batch_size)))


def detection_boxes(model, inputs: np.ndarray, used: np.ndarray, target=None) -> tuple[dict, list[dict]]:
    """The boxes (x1, y1, x2, y2 in input pixels) of detections `used` (anchor·C + class per image) as "box" N×4,
    and their landmarks as "landmarks" N×P×2 (x, y) where the layout has them; and each image's detections as
    `box:K` numbers them for `target` (a Box, or a list with one per image, gives the threshold, overlap and class;
    other targets: Box's defaults), from the same model run: {"threshold", "overlap", "detections": [{"target":
    "box:K", "anchor", "class", "label", "score", "box": [x1, y1, x2, y2]}, ...]} per image."""
    decoder, out = model.head.decoder, _outputs(model, inputs)
    boxes, scores = decoder.decode(out, model.input_size)[:2]
    rows, anchors = np.arange(len(inputs)), used // decoder.classes
    found = {"box": boxes[rows, anchors].astype(np.float32)}
    marks = decoder.landmarks(out, model.input_size)
    if marks is not None:
        found["landmarks"] = marks[rows, anchors].astype(np.float32)
    rules = target if isinstance(target, (list, tuple)) and is_target(target) else [target] * len(inputs)
    rules = [t if isinstance(t, Box) else Box() for t in rules]
    return found, [{"threshold": t.threshold, "overlap": t.overlap, "detections": [
        {"target": f"{'' if t.cls is None else f'class:{t.cls}@'}box:{k}", "anchor": a, "class": c,
         "label": _label(model.labels, c), "score": float(scores[i, a, c]), "box": boxes[i, a].tolist()}
        for k, (a, c) in enumerate(_numbered(model, boxes[i], scores[i], t))]} for i, t in zip(rows, rules)]


def class_of(model, cls) -> int | None:
    """A class index from an index or a label name (as `labels.resolve` reads names: case-insensitive, or the start
    of one name)."""
    if cls is None or isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        return None if cls is None else int(cls)
    if isinstance(cls, str):
        return class_number(cls, model.labels)
    raise OnnxplainError(f"a class must be an index or a label, not {reprlib.repr(cls)}")


def _index(model, t, out: dict | None) -> int:
    """Image's index into the head's scores for target `t` (-1: its top score)."""
    shapes = model.output_shapes
    if isinstance(t, Output):
        shape = shapes[t.name][1:]
        if t.index is None:
            return -1
        index = tuple(t.index) if isinstance(t.index, (tuple, list)) else (t.index,)
        try:
            return int(np.ravel_multi_index(index, shape) if len(index) > 1 else np.arange(math.prod(shape))[index[0]])
        except (ValueError, IndexError, TypeError):
            raise OnnxplainError(f"index {t.index!r} is not an element of output '{t.name}' (per image "
                                 f"{list(shape)})") from None
    if isinstance(t, Region):
        c = class_of(model, t.cls)
        if c is not None and not 0 <= c < model.num_classes:
            raise OnnxplainError(f"class {c} is not a class of output '{model.head.output}' "
                                 f"(0..{model.num_classes - 1})")
        return -1 if c is None else c
    return _box_index(model, t, out)


def _box_index(model, t: Box, out: dict) -> int:
    decoder = model.head.decoder
    boxes, scores, _, _ = decoder.decode(out, model.input_size)
    boxes, scores = boxes[0], scores[0]
    c = _box_class(model, t)
    if t.index is None and t.box is None:
        if c is None:
            return -1
        return int(np.argmax(scores[:, c])) * decoder.classes + c
    found = _numbered(model, boxes, scores, t)
    if t.box is not None:
        box = np.asarray(t.box, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all() or (box[2:] <= box[:2]).any():
            raise OnnxplainError(f"box must be x1,y1,x2,y2 with x1 < x2 and y1 < y2, not {t.box!r}")
        overlaps = [iou(box, boxes[a]) for a, _ in found]
        if not found or max(overlaps) <= 0:
            raise OnnxplainError(f"no detection (score ≥ {t.threshold}) overlaps box {list(t.box)}")
        a, k = found[int(np.argmax(overlaps))]
        return a * decoder.classes + k
    if not 0 <= t.index < len(found):
        raise OnnxplainError(f"box {t.index} does not exist: the image has {len(found)} detection(s) with score ≥ "
                             f"{t.threshold} after NMS")
    a, k = found[t.index]
    return a * decoder.classes + k


def _box_class(model, t: Box) -> int | None:
    c = class_of(model, t.cls)
    if c is not None and not 0 <= c < model.head.decoder.classes:
        raise OnnxplainError(f"class {c} is not a class of the detector (0..{model.head.decoder.classes - 1})")
    return c


def _numbered(model, boxes: np.ndarray, scores: np.ndarray, t: Box) -> list[tuple[int, int]]:
    """One image's detections (boxes A×4, scores A×C) as `box:K` numbers them for `t`: (anchor, class), best first,
    after t's threshold and NMS, of t's class when it names one."""
    c = _box_class(model, t)
    return [(a, k) for a, k in detections(boxes, scores, t.threshold, t.overlap) if c is None or k == c]


def parse(text: str):
    """A CLI target: `box:3`, `box:120,40,300,260`, `class:dog@box:120,40,300,260`, `class:dog@box`,
    `region:15@mask.png`, `region:15`, `output:NAME:i,j`; None when `text` is a plain class list."""
    parts = dict(_part(p) for p in text.split("@"))
    if not ({"box", "region", "output"} & parts.keys()):
        return None
    cls = parts.get("class")
    if "box" in parts:
        spec = parts["box"]
        if not spec:
            return Box(cls=cls)
        numbers = _numbers(spec, text)
        if len(numbers) == 1:
            return Box(index=int(numbers[0]), cls=cls)
        if len(numbers) == 4:
            return Box(box=tuple(numbers), cls=cls)
        raise OnnxplainError(f"target '{text}': box:K (the K-th detection) or box:x1,y1,x2,y2")
    if "region" in parts:
        cls = parts["region"] or cls
        return Region(cls=cls, mask=parts.get("mask"))
    name, _, index = parts["output"].partition(":")
    return Output(name, tuple(int(i) for i in _numbers(index, text)) if index else None)


def _part(p: str) -> tuple[str, str]:
    key, sep, value = p.partition(":")
    if not sep:  # class:dog@box: its top box; region:15@mask.png: a bare file after the @ is the mask
        return ("box", "") if p == "box" else ("mask", p)
    if key not in ("box", "region", "output", "class"):
        raise OnnxplainError(f"target part '{p}' is not box:, region:, output: or class:")
    return key, value


def _numbers(spec: str, text: str) -> list[float]:
    try:
        return [float(v) for v in spec.split(",")]
    except ValueError:
        raise OnnxplainError(f"target '{text}': '{spec}' is not comma-separated numbers") from None
