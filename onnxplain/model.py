"""Load an exported model: validate it, find its image input and score output, read its preprocessing and labels."""
from __future__ import annotations

import functools
import json
import os
import reprlib
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from google.protobuf.message import DecodeError

from . import detection, targets
from .detection import DECODERS
from .errors import NoDefaultTarget, OnnxplainError, first_line
from .files import sha256 as file_sha256
from .labels import as_list, from_metadata
from .labels import read as read_labels
from .limits import check_tensor_sizes, whole
from .passes import normalise
from .passes.probe import SIDE
from .passes.input_type import pixel_images
from .passes.precision import PROMOTED
from .passes.size import classifier_at_size, free_size
from .preprocess import MODES, Preprocessing, preset
from .protos import FLOATS, dims, graph_inputs, guess_layout, past_identities, producers, shown
from .rewrite.graph import Request, build, dynamic_batch, opset_of
from .rewrite.layers import Tokens, channel_first, features_before, find_layers, scale_merges
from .rewrite.rules.quant import QUANTISERS
from .rewrite.shapes import at_size
from .runtime import Session, SessionCache

SIDECAR_KEY = "onnxplain"  # metadata_props key holding the same JSON as a sidecar file


@dataclass
class Model:
    """A loaded model: the graph (batch made dynamic) and everything needed to feed and read it."""

    path: Path | None
    proto: onnx.ModelProto
    input: str                      # image input name
    output: str                     # score output the user reads (logits or probabilities)
    score: str                      # tensor that is differentiated: the logits unless probabilities were asked for
    num_classes: int                # K: the scores a target indexes (classes, or the elements of a head)
    activation: str | None          # "Softmax" or "Sigmoid" when the output is one (probabilities), else None
    preprocessing: Preprocessing
    labels: list[str] | None = None
    device: str = "auto"
    batch_size: int = 16
    normalised: tuple[tuple[str, str], ...] = ()  # (pass, what it did) for each load pass that changed the model
    score_why: str = ""             # why `output` holds the class scores (for inspect)
    quantized: str = "ste"          # "ste": quantisers pass the gradient straight through; "exact": it stops there
    pixels: str = "float32"         # the type the deployed model takes its image in (uint8, float64: fed as float32)
    head: object = None             # the score head appended after the outputs (targets.py); None: class scores
    bare: onnx.ModelProto | None = field(default=None, repr=False)  # the model without a head (None: proto)
    _shapes: dict | None = field(default=None, repr=False)  # every output's shape for one image (a probe run)
    _heads: SessionCache = field(default_factory=SessionCache, repr=False)  # head -> Model with that head
    labels_from: str = ""           # where the labels were read ("sidecar labels", "metadata 'names'", ...)
    preprocessing_from: str = ""    # where the preprocessing came from; "guessed" when nothing said it
    _sessions: SessionCache = field(default_factory=SessionCache, repr=False)  # (request, input size) -> Session
    _layers: SessionCache = field(default_factory=SessionCache, repr=False)  # input size -> (spatial tensors, tokens)
    _sized: SessionCache = field(default_factory=SessionCache, repr=False)   # input size -> (graph, note on shapes),
    #                                                                          ("outputs", size) -> output shapes
    _channel_first: frozenset | None = field(default=None, repr=False)  # tensors that are NCHW whatever the input
    _variants: SessionCache = field(default_factory=lambda: SessionCache(2), repr=False)  # key -> a derived Model

    def session(self, request: Request) -> Session:
        """The session computing `request` on this model at its input size, from a bounded least-recently-used cache
        that threads share (see `runtime.SessionCache`)."""
        return self._sessions.get((request, self.input_size), lambda: self._compiled(request))

    def _compiled(self, request: Request) -> Session:
        first = not any(r.differentiate for r, _ in self._sessions.keys())
        if request.differentiate and self.straight_through and first:
            warnings.warn(f"onnxplain: {_where(self.path)} is quantised ({self.quantisers} quantisers); its "
                          f"gradient passes straight through each within its range (quantized='exact' refuses "
                          f"instead)", stacklevel=6)
        return Session(build(self.graph, request, self.straight_through, shaped=True), self.device,
                       1 if self.batch_coupled else None)

    def devices_used(self) -> list[str]:
        """The devices ("cuda", "cpu") of the sessions built so far (onnxruntime falls back to the CPU where CUDA
        cannot start)."""
        return sorted({s.device for s in self._sessions.values()})

    @property
    def quantisers(self) -> int:
        """The number of QuantizeLinear and DynamicQuantizeLinear nodes (quantised activations)."""
        return sum(n.op_type in QUANTISERS for n in self.proto.graph.node)

    @property
    def batch_coupled(self) -> bool:
        """Whether an image's result depends on the others in its batch: dynamic quantisation takes its range from
        the whole batch, so such models run one image at a time, as deployed on single images."""
        return any(n.op_type == "DynamicQuantizeLinear" for n in self.proto.graph.node)

    @property
    def straight_through(self) -> bool:
        """Whether gradients pass straight through quantisers (quantized="ste" on a quantised model)."""
        return self.quantized == "ste" and self.quantisers > 0

    def deployed(self, x: np.ndarray) -> np.ndarray:
        """A float32 batch as the deployed model receives it: rounded and clipped to its integer pixel type, if any
        (the black-box path runs the model on such values only)."""
        if not np.issubdtype(np.dtype(self.pixels), np.integer):
            return x
        info = np.iinfo(self.pixels)
        return np.clip(np.round(x), info.min, info.max).astype(np.float32)

    def layers(self) -> list[tuple[str, tuple]]:
        """(name, shape) of the tensors with spatial extent between the input and the score, in graph order."""
        return self._found()[0]

    def tokens(self) -> Tokens | None:
        """A vision transformer's token tensors and patch grid (None for other models)."""
        return self._found()[1]

    def _found(self) -> tuple:
        return self._layers.get(self.input_size,
                                lambda: find_layers(self.graph, self.input, self.score, self.layout_of))

    def scales(self) -> tuple[tuple[str, ...], np.ndarray] | None:
        """A detector head's scales: the features each scale's branch predicts from (the last tensor every path to
        the branch's end passes through that a convolution reads: `rewrite.layers.features_before`) and the head's
        first anchor of each scale, from the concatenation of the scales' anchors (`rewrite.layers.scale_merges`);
        None for other heads, or where no concatenation in the graph covers the head's anchors (one scale, NMS
        inside the model)."""
        return self._layers.get(("scales", self.input_size), self._scales)

    def _scales(self):
        if not isinstance(self.head, targets.DetectionScores):
            return None
        anchors = self.head.anchors(self.output_shapes)
        for layers, lengths in scale_merges(self.graph, self.layers()):
            if None not in lengths and sum(lengths) == anchors:
                return (tuple(features_before(self.graph, self.input, self.layers(), end) for end in layers),
                        np.cumsum((0,) + lengths[:-1]))
        return None

    def grid_of(self, layer: str | None) -> tuple[int, int] | None:
        """The patch grid that token tensor `layer` is laid out on for CAM methods, None for other tensors."""
        tokens = self.tokens()
        return tokens.grid if tokens is not None and layer in tokens.layers else None

    @property
    def graph(self) -> onnx.ModelProto:
        """The model at its input size: height and width fixed, every tensor's shape known to the rewrite."""
        return self._at_size()[0]

    @property
    def shapes_note(self) -> str | None:
        """Where the shapes of `graph` came from, when ONNX's shape inference did not tell them all."""
        return self._at_size()[1]

    def _at_size(self) -> tuple[onnx.ModelProto, str | None]:
        return self._sized.get(self.input_size,
                               lambda: at_size(self.proto, self.input, self.spatial_axes, self.input_size))

    def at_size(self, size) -> "Model":
        """This model explained at input height and width `size` (sharing its caches): any size when its input
        leaves them dynamic, else its own."""
        size = tuple(int(s) for s in size)
        if size == self.preprocessing.size:
            return self
        if self.fixed_size:
            raise OnnxplainError(f"input '{self.input}' takes {self.input_size[0]}x{self.input_size[1]} images, "
                                 f"not {size[0]}x{size[1]}")
        sized = replace(self, preprocessing=replace(self.preprocessing, size=size), _shapes=None)
        return sized if self.head is None else replace(sized, num_classes=self.head.size(sized.output_shapes))

    def for_batch(self, inputs: np.ndarray) -> "Model":
        """This model at the height and width of a batch in its layout."""
        return self.at_size([inputs.shape[axis] for axis in self.spatial_axes])

    @property
    def promoted_from(self) -> str | None:
        """The half types of a model explained in float32 ("float16", "bfloat16"), None for a float32 model."""
        note = dict(self.normalised).get("precision")
        return note and note.removesuffix(PROMOTED)

    @property
    def opset(self) -> int:
        return opset_of(self.proto)

    @property
    def layout(self) -> str:
        return self.preprocessing.layout

    def layout_of(self, tensor: str) -> str:
        """The layout of an image-shaped tensor of the model: NCHW where a channel-first op (Conv, pooling,
        normalisation) reads or writes it, else the input's (NHWC models that tf2onnx transposes once compute in
        NCHW inside)."""
        if self._channel_first is None:
            self._channel_first = channel_first(self.proto)
        return "NCHW" if tensor in self._channel_first else self.layout

    def channel_axis_of(self, tensor: str) -> int:
        """The channel axis of an image-shaped tensor of the model (see `layout_of`)."""
        return 1 if self.layout_of(tensor) == "NCHW" else 3

    @property
    def channel_axis(self) -> int:
        """The channel axis of the image input (a layer's: `channel_axis_of`)."""
        return 1 if self.layout == "NCHW" else 3

    @property
    def spatial_axes(self) -> tuple[int, int]:
        """The height and width axes of the image input."""
        return (2, 3) if self.layout == "NCHW" else (1, 2)

    @property
    def fixed_size(self) -> bool:
        """Whether the model's input fixes its height and width (else each batch brings its own)."""
        shape = dims(next(i for i in self.proto.graph.input if i.name == self.input))
        return all(isinstance(shape[axis], int) for axis in self.spatial_axes)

    @property
    def input_size(self) -> tuple[int, int]:
        """The height and width images are explained at."""
        if self.preprocessing.size is None:
            raise OnnxplainError(f"input '{self.input}' has no fixed height and width; give the input size (--size H "
                                 f"W, or preprocessing={{'size': [H, W]}}), or explain a preprocessed array")
        return self.preprocessing.size

    @property
    def softmax_output(self) -> bool:
        return self.activation == "Softmax"

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities from the differentiated scores: softmax (sigmoid for a model ending in one, or with one
        logit) of the logits; the scores themselves when they are probabilities already, or a head's (targets.py)."""
        if self.head is not None or self.activation is not None and self.score == self.output:
            return scores
        if self.activation == "Sigmoid" or scores.shape[-1] == 1:  # one logit: a binary classifier's log-odds
            return 1 / (1 + np.exp(-scores))
        z = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def label(self, c: int) -> str:
        if self.head is not None:
            return self.head.name(int(c), self.output_shapes, self.labels)
        return self.labels[c] if self.labels and 0 <= c < len(self.labels) else f"class {c}"

    @cached_property
    def sha256(self) -> str | None:
        """The SHA-256 of the model file (None for a model given as a ModelProto)."""
        return None if self.path is None else file_sha256(self.path)

    @property
    def output_shapes(self) -> dict[str, tuple]:
        """Every output's shape for one image at the input size (from a run of the model without its head)."""
        if self._shapes is None:
            bare = self.bare or self.proto
            inp = next(i for i in bare.graph.input if i.name == self.input)
            self._shapes = self._sized.get(("outputs", self.preprocessing.size),
                                           lambda: _probe(bare, inp, self.preprocessing, grow=False)[0])
        return self._shapes

    @property
    def outputs_text(self) -> str:
        return outputs_described(self.bare or self.proto)

    def with_head(self, head) -> "Model":
        """This model scored by `head` (targets.py): its nodes appended, its N×K scores what targets index."""
        if head == self.head:
            return self
        return self._heads.get((head, self.preprocessing.size),
                               lambda: _headed(self, head, head.describe(self.output_shapes)))

    def with_initializers(self, values: dict) -> "Model":
        """A copy of this model whose initializers named in `values` hold those arrays (same shape; cast to the
        initializer's type), every other tensor bit-identical; its preprocessing, score, head, labels and load passes
        are kept, its sessions built anew when first used. This model is unchanged. (The model parameter
        randomisation test's rewrite, `metrics.randomisation`.)"""
        def swapped(proto: onnx.ModelProto) -> onnx.ModelProto:
            out = onnx.ModelProto()
            out.CopyFrom(proto)
            tensors = {t.name: t for t in out.graph.initializer}
            for name, value in values.items():
                if name not in tensors:
                    raise OnnxplainError(f"the model has no initializer {reprlib.repr(name)}")
                old = tensors[name]
                value = np.asarray(value)
                if value.shape != tuple(old.dims) or value.dtype.kind not in "biuf" or not np.isfinite(value).all():
                    raise OnnxplainError(f"initializer '{name}' takes finite values of shape {tuple(old.dims)}, not "
                                         f"{value.dtype} {value.shape}")
                dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
                old.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
            return out
        return replace(self, proto=swapped(self.proto), bare=self.bare and swapped(self.bare),
                       _heads=SessionCache(), _sessions=SessionCache(), _layers=SessionCache(), _sized=SessionCache(),
                       _channel_first=None, _variants=SessionCache(2))

    def variant(self, key, make) -> "Model":
        """The model `make()` derives from this one (e.g. by `with_initializers`), kept under `key` and the input size
        for later batches with its sessions; the two most recently used are kept."""
        return self._variants.get((key, self.preprocessing.size), make)

    @property
    def preprocessing_guessed(self) -> bool:
        """Whether no sidecar, metadata or caller said how images become inputs (the defaults were taken)."""
        return self.preprocessing_from == "guessed"

    def __repr__(self) -> str:
        size = "x".join(map(str, self.preprocessing.size)) if self.preprocessing.size else "any size"
        labels = f"{len(self.labels)} labels" if self.labels else "no labels"
        return (f"Model({str(self.path) if self.path else '<ModelProto>'!r}, input {self.input!r} {self.layout} "
                f"{size}, output {self.output!r}: {self.num_classes} classes, {labels}, device {self.device!r})")


def load(path: str | os.PathLike | onnx.ModelProto, *, preprocessing: str | dict | Preprocessing | None = None,
         probabilities: bool = False, output: str | None = None, device: str = "auto", batch_size: int = 16,
         labels: list[str] | dict | str | os.PathLike | None = None, quantized: str = "ste",
         decoder: str | None = None) -> Model:
    """Load an ONNX image classifier (a path or a ModelProto).

    preprocessing: a preset name (see `onnxplain.preprocess.PRESETS`), a dict of fields (optionally with "preset",
    the fields overriding it) or a Preprocessing; by default read from `MODEL.json` beside the file or the model's
    metadata (key "onnxplain"), whose fields a dict also overrides.
    probabilities: differentiate the Softmax output instead of its input (the logits) when the model ends in one.
    output: the output holding the class scores, for a model with several; for a model that is no classifier, the
    output its default target reads (see `onnxplain.targets`).
    decoder: a detector's raw-head layout (`onnxplain.detection.DECODERS`), when it is not told by the shapes.
    labels: class names (a list, a dict {index: name}, or a labels file: one name per line, or JSON); by default read
    from the sidecar (`labels`, `labels_file`), else from the model's metadata (keys `labels`, `classes`, `names`
    as Ultralytics writes it, `character` as PaddleClas writes it) where they name every class.
    quantized: "ste" differentiates quantised activations by the straight-through estimator (the gradient passes
    each quantiser within its range); "exact" keeps their exact gradient, zero, so gradient methods refuse. The
    black-box methods run the quantised model as it is either way.
    """
    if decoder is not None and decoder not in DECODERS:
        raise OnnxplainError(f"unknown decoder '{decoder}' (known: {', '.join(DECODERS)})")
    if device not in ("auto", "cuda", "cpu"):
        raise OnnxplainError(f"device must be auto, cuda or cpu, not '{device}'")
    whole("batch_size", batch_size)
    if quantized not in ("ste", "exact"):
        raise OnnxplainError(f"quantized must be 'ste' or 'exact', not {quantized!r}")
    labels_from = ""
    if isinstance(labels, (str, os.PathLike)):
        labels, labels_from = read_labels(labels), f"labels file {labels}"
    elif isinstance(labels, dict):
        labels, labels_from = as_list(labels, "labels"), "given"
    elif labels is not None:
        _check_labels("labels", labels)
        labels_from = "given"
    if not (preprocessing is None or isinstance(preprocessing, (str, dict, Preprocessing))):
        raise OnnxplainError(f"preprocessing must be a preset name, a dict of fields or a Preprocessing, "
                             f"not {preprocessing!r}")
    if not isinstance(path, (str, os.PathLike, onnx.ModelProto)):
        raise OnnxplainError(f"the model must be a path or an onnx.ModelProto, not {reprlib.repr(path)}")
    model_path = None if isinstance(path, onnx.ModelProto) else Path(path)
    proto = path if model_path is None else _read(model_path)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxplainError(f"{_where(model_path)} is not a valid ONNX model: {first_line(exc)}") from None
    opset_of(proto)
    check_tensor_sizes(proto)  # before a load pass runs the model
    pixels = pixel_images(proto)
    proto, normalised = normalise(proto)
    half = dict(normalised).get("precision", "").removesuffix(PROMOTED)
    if half:
        warnings.warn(f"onnxplain: {_where(model_path)} computes in {half}; it is explained in float32 (its weights "
                      f"promoted exactly), so scores differ from a {half} run by its rounding", stacklevel=2)
    bad = _first_non_finite(proto)
    if bad:
        warnings.warn(f"onnxplain: weight '{bad}' of {_where(model_path)} holds NaN or infinite values; the scores it "
                      f"reaches cannot be explained", stacklevel=2)
    inp = _image_input(proto, model_path)
    sidecar, sidecar_from = _sidecar(proto, model_path)
    pre = _preprocessing(inp, sidecar, preprocessing, pixels.get(inp.name))
    proto, note = free_size(proto, inp.name, (1, 2) if pre.layout == "NHWC" else (2, 3), pre.size)
    if note:
        normalised += (("size", note),)
        inp = _image_input(proto, model_path)
    if not decoder:  # (a detector's outputs are read by its decoder as they are)
        proto, note = classifier_at_size(proto, inp.name, (1, 2) if pre.layout == "NHWC" else (2, 3), pre.size)
        if note:
            normalised += (("size", note),)
            inp = _image_input(proto, model_path)
    batched = dynamic_batch(proto, inp.name)  # (once: a copy of the whole model)
    probe = functools.cache(lambda: _probe(batched, inp, pre))
    wanted = output or sidecar.get("output")
    chosen = None if decoder else _score_output(proto, wanted, probabilities, probe)
    classes = chosen.num_classes if chosen else None
    shapes = probe()[0] if probe.cache_info().currsize else None
    if chosen is None:
        shapes = shapes or _probe(batched, inp, pre, grow=False)[0]
        head = _default_head(proto, wanted, decoder, shapes, lambda: _probe(batched, inp, pre, False, 2)[0])
        classes = head.decoder.classes if isinstance(head, targets.DetectionScores) else (
            head.size(shapes) if isinstance(head, targets.RegionSum) else None)
    if labels is None:
        labels, labels_from = _labels(sidecar, model_path, proto, classes)
    if labels is not None and classes is not None and len(labels) != classes:
        raise OnnxplainError(f"the model scores {classes} classes but {len(labels)} labels were given "
                             f"({labels_from})")
    model = Model(model_path, batched, inp.name, *(chosen and (
        chosen.output, chosen.score, chosen.num_classes, chosen.activation) or ("", "", 0, None)), pre, labels, device,
        batch_size, normalised, chosen.why if chosen else "", quantized, pixels.get(inp.name, "float32"),
        _shapes=shapes, labels_from=labels_from,
        preprocessing_from=_preprocessing_from(sidecar, sidecar_from, preprocessing))
    return model if chosen else model.with_head(head)


# -- reading the file safely ---------------------------------------------------------------------------------------
def _where(path: Path | None) -> str:
    return str(path) if path else "the model"


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise OnnxplainError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise OnnxplainError(f"{path} is not a readable ONNX file (truncated or corrupt?): {first_line(exc)}") from None
    if not proto.graph.node:
        raise OnnxplainError(f"{path} is not an ONNX model (no graph nodes): truncated or not an .onnx file?")
    _load_external_data(proto, path.parent.resolve())
    return proto


def _load_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Load tensors stored beside the model, refusing any location that leaves the model's own folder."""
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_tensor, uses_external_data

    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(folder) or not target.is_file():
            raise OnnxplainError(f"tensor '{tensor.name}' points to external data '{location}' outside the model's "
                                 f"folder or missing; refusing to read it")
        try:
            load_external_data_for_tensor(tensor, str(folder))
        except Exception as exc:
            raise OnnxplainError(f"cannot read external data '{location}' of tensor '{tensor.name}': "
                                 f"{first_line(exc)}") from None
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _first_non_finite(proto: onnx.ModelProto) -> str | None:
    """The name of the first float initializer or Constant holding NaN or ±inf, or None."""
    constants = [(n.output[0], a.t) for n in proto.graph.node if n.op_type == "Constant"
                 for a in n.attribute if a.name == "value"]
    named = [(t.name, t) for t in proto.graph.initializer] + constants
    return next((name for name, t in named if t.data_type in FLOATS and
                 not np.isfinite(numpy_helper.to_array(t)).all()), None)


# -- finding the input and the score ---------------------------------------------------------------------------------
def _image_input(proto: onnx.ModelProto, path: Path | None):
    inputs = graph_inputs(proto.graph)
    images = [i for i in inputs if i.type.HasField("tensor_type") and len(dims(i)) == 4]
    if len(images) != 1:
        described = ", ".join(f"{i.name}{shown(i)}" for i in inputs) or "none"
        what = "no image input (a rank-4 tensor)" if not images else "several rank-4 inputs"
        raise OnnxplainError(f"{_where(path)} has {what}; its inputs: {described}")
    if len(inputs) > 1:
        others = ", ".join(i.name for i in inputs if i is not images[0])
        raise OnnxplainError(f"{_where(path)} needs inputs besides the image ({others}); onnxplain feeds one image input")
    return images[0]


def _preprocessing(inp, sidecar: dict, requested, pixels: str | None) -> Preprocessing:
    """The preprocessing asked for (a preset, fields, a Preprocessing), over the sidecar's, fitted to the input's
    layout, size and channels; `pixels`: the integer type of an input that takes raw pixels (no scaling by default)."""
    shape = dims(inp)
    fields = dict(requested) if isinstance(requested, dict) else {}
    if isinstance(requested, Preprocessing):
        pre = requested
        pre.validate()
    else:
        base = Preprocessing.from_dict(sidecar["preprocessing"]) if "preprocessing" in sidecar else Preprocessing()
        name = requested if isinstance(requested, str) else fields.pop("preset", None)
        if name:
            base = replace(preset(name), layout=base.layout, size=base.size)
        pre = Preprocessing.from_dict(fields, base)
    layout_known = isinstance(requested, Preprocessing) or "layout" in sidecar.get("preprocessing", {}) or (
        "layout" in fields)
    if not layout_known:
        pre = replace(pre, layout=guess_layout(shape))
    spatial = shape[2:4] if pre.layout == "NCHW" else shape[1:3]
    channels = shape[1] if pre.layout == "NCHW" else shape[3]
    if pre.size is None and any(isinstance(d, int) and d > 0 for d in spatial):  # a free side: SIDE pixels
        pre = replace(pre, size=tuple(d if isinstance(d, int) and d > 0 else SIDE for d in spatial))
    if pre.size is not None:  # else each batch brings its own
        pre = replace(pre, size=tuple(int(s) for s in pre.size))
    if isinstance(channels, int) and channels > 0:
        if channels not in MODES:
            raise OnnxplainError(f"input '{inp.name}' has {channels} channels; onnxplain reads grey (1), RGB (3) or "
                                 f"RGBA (4) images")
        pre = pre.for_channels(channels)
    raw = pixels and np.issubdtype(np.dtype(pixels), np.integer)
    if raw and requested is None and "preprocessing" not in sidecar:
        pre = replace(pre, scale=1.0)  # integer pixels are fed as they are, 0..255
    return pre


def _probe(proto: onnx.ModelProto, inp, pre: Preprocessing, grow: bool = True,
           batch: int = 1) -> list[dict[str, tuple]]:
    """The shape of every output of the model (its batch made dynamic: `dynamic_batch`), from one session run on
    `batch` zero images of the preprocessing's size and, where the input leaves its height and width symbolic and
    `grow`, a second run on images 8 pixels taller and wider."""
    shape = dims(inp)
    spatial = shape[2:4] if pre.layout == "NCHW" else shape[1:3]
    free = [not isinstance(d, int) or d < 1 for d in spatial]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    session = Session(proto, "cpu")
    runs = []
    for grow in (0, 8) if any(free) and grow else (0,):
        h, w = (s + grow * f for s, f in zip(pre.size or (SIDE, SIDE), free))
        shape = (batch, pre.channels, h, w) if pre.layout == "NCHW" else (batch, h, w, pre.channels)
        values = session.run(session.output_names, {inp.name: np.zeros(shape, dtype)})
        runs.append({name: v.shape for name, v in zip(session.output_names, values)})
    return runs


@dataclass(frozen=True)
class Score:
    """Which output holds the class scores, which tensor is differentiated, and why that output was chosen."""

    output: str
    score: str
    num_classes: int
    activation: str | None
    why: str


def outputs_described(proto: onnx.ModelProto) -> str:
    """Every output of the model with its shape, e.g. "logits[N, 1000], boxes[N, 4, 7]"."""
    return ", ".join(f"{o.name}{shown(o)}" for o in proto.graph.output)


def _behind_softmax(proto: onnx.ModelProto, name: str, kinds=("Softmax",)):
    """The Softmax (or other node of `kinds`) that makes tensor `name` through Identities, or None."""
    node = past_identities(producers(proto.graph), name)[0]
    return node if node is not None and node.op_type in kinds else None


def softmaxed(proto: onnx.ModelProto) -> frozenset:
    """The outputs a Softmax makes (through Identities)."""
    return frozenset(o.name for o in proto.graph.output if _behind_softmax(proto, o.name))


def _is_float(value_info) -> bool:
    return value_info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _score_output(proto: onnx.ModelProto, wanted: str | None, probabilities: bool, probe) -> Score | None:
    """The score output: `wanted`, else the only N×classes float output, else the only one behind a Softmax; None
    when that output is not N×classes (a head reads it: `_default_head`). `probe()` gives every output's shape from
    a run of the model (and one on a larger image where the size is free), for a class count that the graph leaves
    symbolic."""
    outputs = {o.name: o for o in proto.graph.output}
    if wanted is not None and wanted not in outputs:
        raise OnnxplainError(f"the model has no output '{wanted}'; its outputs: {outputs_described(proto)}")
    scores = [n for n, o in outputs.items() if _is_float(o) and len(dims(o)) == 2]
    if wanted is not None:
        out, why = wanted, "chosen by output="
        if len(dims(outputs[out])) != 2 or not _is_float(outputs[out]):
            return None
    elif len(scores) == 1:
        out, why = scores[0], "the only N×classes float output"
    elif len([n for n in scores if _behind_softmax(proto, n)]) == 1:
        out, why = next(n for n in scores if _behind_softmax(proto, n)), "the N×classes output behind a Softmax"
    elif not scores:
        return None
    else:
        raise OnnxplainError(f"the model has several N×classes outputs ({outputs_described(proto)}); choose the "
                             f"class scores with --output NAME (load(output=NAME))")
    classes = dims(outputs[out])[1]
    if not isinstance(classes, int) or classes < 1:
        runs = probe()
        shape, larger = runs[0][out], runs[-1][out]
        if len(shape) != 2 or shape[0] != 1 or shape != larger:  # e.g. an OCR model's time steps, not classes
            return None
        classes = shape[1]
        why += f"; {classes} classes from one run of the model"
    last = _behind_softmax(proto, out, ("Softmax", "Sigmoid"))
    score = last.input[0] if last is not None and not probabilities else out
    return Score(out, score, classes, last and last.op_type, why + (
        "; a multi-label head (Sigmoid)" if last is not None and last.op_type == "Sigmoid" else ""))


def _default_head(proto: onnx.ModelProto, wanted: str | None, decoder: str | None, shapes: dict, pairs):
    """The score head of a model that is no classifier (targets.py): a detector's class scores where a decoder fits
    the output shapes (or `decoder` is given), else output `wanted` or the only float output (or the only rank-4
    one): a segmentation output summed per class over the whole image, any other flattened per image (images on
    the axis that doubles in `pairs()`, the output shapes for two images, where it is not the first)."""
    floats = {o.name: shapes[o.name] for o in proto.graph.output if _is_float(o) and o.name in shapes}
    found = detection.choose(floats, decoder, wanted, softmaxed(proto))
    if found is not None:
        return targets.DetectionScores(found)
    if wanted is None:
        maps = [n for n, s in floats.items() if len(s) == 4]
        if len(floats) != 1 and len(maps) != 1:
            raise NoDefaultTarget(f"the model has no class-score output (N×classes) and no default target among its "
                                  f"outputs ({outputs_described(proto)}); choose one with --output NAME "
                                  f"(load(output=NAME)), or a detector layout with --decoder NAME", floats)
        wanted = next(iter(floats)) if len(floats) == 1 else maps[0]
    if wanted not in floats:
        raise OnnxplainError(f"output '{wanted}' is not a float tensor; its outputs: {outputs_described(proto)}")
    shape = floats[wanted]
    if not shape or shape[0] != 1:
        two = pairs()[wanted]  # the same output for two images: the axis that doubles holds them (time-major)
        axes = [i for i, (a, b) in enumerate(zip(shape, two)) if a == 1 and b == 2 and len(two) == len(shape)]
        if len(axes) != 1:
            raise OnnxplainError(f"output '{wanted}' computes {list(shape)} for one image and {list(two)} for two: "
                                 f"no one axis holds the images, so no target can be read per image; re-export it "
                                 f"with the batch on one axis; its outputs: {outputs_described(proto)}")
        return targets.Flat(wanted, axes[0], len(shape))
    return targets.RegionSum(wanted) if len(shape) == 4 else targets.Flat(wanted)


def _headed(model: Model, head, why: str) -> Model:
    """`model` scored by `head`: its nodes appended to the model without a head, with caches of its own."""
    bare = model.bare or model.proto
    shapes = model.output_shapes
    return replace(model, proto=targets.attach(bare, head, opset_of(bare)), output=head.output, score=targets.SCORE,
                   num_classes=head.size(shapes), activation=None, score_why=why, head=head, bare=bare,
                   _sessions=SessionCache(), _layers=SessionCache(), _sized=SessionCache(), _channel_first=None,
                   _variants=SessionCache(2))


# -- sidecar, metadata and labels ------------------------------------------------------------------------------------
def _sidecar(proto: onnx.ModelProto, path: Path | None) -> tuple[dict, str]:
    """The sidecar's fields (MODEL.json beside the file, else the model's metadata key), and where they were read."""
    text, origin = None, None
    if path is not None and path.with_suffix(".json").is_file():
        origin = path.with_suffix(".json")
        text = origin.read_text(encoding="utf-8", errors="replace")
    else:
        meta = {p.key: p.value for p in proto.metadata_props}
        if SIDECAR_KEY in meta:
            text, origin = meta[SIDECAR_KEY], f"metadata '{SIDECAR_KEY}' of {_where(path)}"
    if text is None:
        return {}, ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxplainError(f"{origin} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OnnxplainError(f"{origin} must hold a JSON object")
    try:
        _check_sidecar(data)
    except OnnxplainError as exc:
        raise OnnxplainError(f"{origin}: {exc}") from None
    return data, str(origin)


SIDECAR_TEXT = ("name", "source", "input", "output", "labels_file")  # fields holding a string


def _check_sidecar(data: dict) -> None:
    """The types of the sidecar's fields, as docs/sidecar.schema.json describes them; other fields are free."""
    for key in SIDECAR_TEXT:
        if key in data and not isinstance(data[key], str):
            raise OnnxplainError(f"{key} must be a string, not {reprlib.repr(data[key])}")
    if "labels" in data:
        _check_labels("labels", data["labels"])
    if "preprocessing" in data:
        Preprocessing.from_dict(data["preprocessing"])


def _check_labels(name: str, labels) -> None:
    if not isinstance(labels, (list, tuple)):
        raise OnnxplainError(f"{name} must be a list of strings (one class name each), not {reprlib.repr(labels)}")
    for s in labels:
        if not isinstance(s, str):
            raise OnnxplainError(f"{name} must be a list of strings (one class name each); one is {reprlib.repr(s)}")


def _labels(sidecar: dict, path: Path | None, proto: onnx.ModelProto,
            classes: int | None) -> tuple[list[str] | None, str]:
    """(labels, where they were read): the sidecar's list, its labels file, or metadata naming every class."""
    if "labels" in sidecar:
        return list(sidecar["labels"]), "sidecar labels"
    if "labels_file" in sidecar and path is not None:
        folder = path.parent.resolve()
        target = (folder / sidecar["labels_file"]).resolve()
        if not target.is_relative_to(folder) or not target.is_file():
            raise OnnxplainError(f"labels_file '{sidecar['labels_file']}' is missing or outside the model's folder")
        return read_labels(target), f"labels file {sidecar['labels_file']}"
    found = from_metadata({p.key: p.value for p in proto.metadata_props}, classes)
    return (found[0], f"metadata '{found[1]}'") if found else (None, "")


def _preprocessing_from(sidecar: dict, origin: str, requested) -> str:
    """Where the preprocessing came from: the caller, the sidecar or metadata, or "guessed" (the defaults)."""
    if requested is not None:
        return f"preset {requested}" if isinstance(requested, str) else "given"
    if "preprocessing" in sidecar:
        return origin
    return "guessed"
