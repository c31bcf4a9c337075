"""What every white-box method shares: the graph it needs, and its formula appended to that graph as nodes.

A method is its equation over named tensors (`Tensors`): the input x and its gradient dx, or a layer's activation A
and its gradient dA. It returns (attributions, low-resolution or input-resolution map); the base class brings the
map to input resolution. Because the formula is graph nodes, `onnxplain export` writes the same computation as a
standalone ONNX file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import OnnxplainError
from ..limits import MAX_COUNT, is_number, is_whole
from ..rewrite.builder import Builder
from ..rewrite.graph import TARGET, Request

METHODS: dict[str, type["Method"]] = {}
DEFAULT = "gradcam"  # the method `explain` runs when none is named, in Python and on the command line
TARGET_KINDS = {  # Method.targets → what `onnxplain methods` says
    "any": "any target: class, output element, region, box",
    "classes": "classes of a softmax classifier only",
    "boxes": "boxes of a detector only",
}
GROUPS = {  # the survey's grouping (Ayyar, Benois-Pineau, Zemmari 2021): what a method uses
    "gradients": "gradients of the score",
    "modified": "modified backward rules",
    "activations": "activations (CAM family)",
    "perturbation": "forward passes only (black-box)",
}


@dataclass(frozen=True)
class Tensors:
    """The graph tensors a formula reads, and the geometry it needs."""

    x: gs.Tensor
    dx: gs.Tensor | None
    a: gs.Tensor | None
    da: gs.Tensor | None
    y: gs.Tensor                # the differentiated scores, N×classes
    target: gs.Tensor           # the class explained per image (int64, N)
    channel_axis: int
    spatial_axes: tuple[int, int]
    size: tuple[int, int]


class Method:
    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    at_layer: ClassVar[bool] = False  # differentiates at a layer (CAM family) instead of the input
    uses_gradient: ClassVar[bool] = True  # False: the formula reads activations only (no backward pass)
    parts: ClassVar[tuple[str, ...]] = ()  # names of the maps attributions[:, i], i < len(parts), when a method
                                           # gives several besides its map (the CLI saves each beside the map)
    targets: ClassVar[str] = "any"  # the targets it explains (TARGET_KINDS); see `accepts_target`
    one_graph: ClassVar[bool] = True  # its whole computation is the graph of `request()` (so it can be exported);
                                      # methods that override `run()` with several passes set it False
    non_finite: ClassVar[str] = ""  # what a refusal of its non-finite map adds: why it happens, what runs instead

    @classmethod
    def accepts_target(cls, model) -> bool:
        """Whether the method explains `model`'s targets: "any" head's scores, only the "classes" of a softmax
        classifier (methods built on its probabilities), or only the "boxes" of a detector."""
        if cls.targets == "classes":
            return model.head is None and model.activation != "Sigmoid"
        return cls.targets == "any" or type(model.head).__name__ == "DetectionScores"

    @classmethod
    def accepts(cls, param: str) -> bool:
        """Whether `param` is one of the method's parameters."""
        return any(f.name == param for f in fields(cls))

    def model_passes(self, size: tuple[int, int]) -> int | None:
        """About how many model passes (a forward, or a forward and backward) one image costs at input height and
        width `size` with these parameters; None where it depends on the model (a layer's channel count)."""
        return 1

    def rules(self, model):
        """The Composite of modified backward rules this method differentiates `model` with; None for the plain
        gradient."""
        return None

    def reduce_channels(self, attributions, channel_axis: int):
        """The map of input-shaped attributions, on the host (wrappers such as SmoothGrad aggregate attributions
        first): the signed sum over channels; gradient magnitudes override it with the max of |a|."""
        return attributions.sum(axis=channel_axis)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHODS[cls.name] = cls

    def formula(self, g: Builder, t: Tensors):
        """Return (attributions, map); the map may be at layer resolution (N×h×w) or input resolution."""
        raise NotImplementedError

    def run(self, model, inputs, targets, layer, batch_size):
        """(attributions, maps, scores N×classes, targets used[, info]) for a batch; targets of -1 mean the top-1
        class; info, when returned, maps names to per-image arrays (`Explanation.info`).

        White-box methods run their one graph; methods that need other passes (perturbations) override this.
        """
        sess = model.session(self.request(model, layer))
        return sess.run(["attributions", "maps", model.score, TARGET + "_used"],
                        {model.input: inputs, TARGET: targets}, batch_size)

    def request(self, model, layer: str | None) -> Request:
        head = Head(self, model.input, model.score, layer, model.layout_of(layer) if layer else model.layout,
                    model.input_size, model.grid_of(layer))
        wrt = (layer if self.at_layer else model.input,) if self.uses_gradient else ()
        return Request(expose=(model.score,), differentiate=(model.score,), wrt=wrt, seed="target", head=head,
                       rules=self.rules(model))


@dataclass(frozen=True)
class Head:
    """The request's hashable link to a method's formula (sessions are cached by request)."""

    method: Method
    input: str
    score: str
    layer: str | None
    layout: str
    size: tuple[int, int]
    grid: tuple[int, int] | None = None  # the patch grid of a vision transformer's token layer

    def build(self, g: Builder, tensors: dict, grads: dict, target: gs.Tensor) -> dict:
        channel, spatial = (1, (2, 3)) if self.layout == "NCHW" else (3, (1, 2))
        a, da = (tensors[self.layer], grads.get(self.layer)) if self.layer else (None, None)
        if self.grid is not None and a.shape is not None and len(a.shape) == 3:
            a, da = (None if t is None else on_grid(g, t, a.shape, self.grid, self.layout) for t in (a, da))
        if a is not None and a.shape is not None and len(a.shape) != 4:
            raise OnnxplainError(f"layer '{self.layer}' has shape {list(a.shape)}; {self.method.name} reads a layer "
                                 f"with channels, height and width (see `onnxplain inspect` for candidates)")
        t = Tensors(tensors[self.input], grads.get(self.input), a, da, tensors[self.score], target, channel, spatial,
                    self.size)
        attributions, low = self.method.formula(g, t)
        return {"attributions": attributions, "maps": upsample(g, low, self.size)}


def on_grid(g: Builder, tokens: gs.Tensor, shape, grid: tuple[int, int], layout: str) -> gs.Tensor:
    """N×T×C tokens (of `shape`) laid out as an image on the patch grid (as pytorch-grad-cam's reshape_transform):
    the extra tokens before the T − Gh·Gw patch tokens dropped, then N×C×Gh×Gw (or N×Gh×Gw×C for an NHWC model)."""
    n, count, channels = shape
    patches = g.slice(tokens, [count - grid[0] * grid[1]], [count], [1])
    image = g.Reshape(patches, g.ints([-1, *grid, channels]))
    image.shape = [n, *grid, channels]
    if layout == "NHWC":
        return image
    out = g.Transpose(image, perm=[0, 3, 1, 2])
    out.shape = [n, channels, *grid]
    return out


def upsample(g: Builder, m: gs.Tensor, size: tuple[int, int]) -> gs.Tensor:
    """Bilinear N×h×w → N×H×W (half-pixel centres, as torch's interpolate with align_corners=False)."""
    m4 = g.unsqueeze(m, [1])
    sizes = g.Concat(g.slice(g.Shape(m4), [0], [2], [0]), g.ints(size), axis=0)
    return g.squeeze(g.resize(m4, sizes, mode="linear", coordinate_transformation_mode="half_pixel"), [1])


def get(name: str, **params) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        raise OnnxplainError(f"unknown method {name!r} (available: {', '.join(sorted(METHODS))})")
    cls = METHODS[name]
    unknown = [p for p in params if not cls.accepts(p)]
    if unknown:
        known = ", ".join(f.name for f in fields(cls) if f.init) or "none"
        raise OnnxplainError(f"method '{name}' has no parameter '{unknown[0]}' (its parameters: {known})")
    for key in COUNTS:  # before the method's own checks, which may already allocate by them
        if key in params and is_number(params[key]) and params[key] > MAX_COUNT:
            raise OnnxplainError(f"{name}: {key} must be at most {MAX_COUNT} (each costs a model pass per image), "
                                 f"not {params[key]!r}")
    try:
        method = cls(**params)  # a method's own checks say more (ranges, choices) than the types below
    except (TypeError, ValueError):
        _check_types(cls, params)
        raise
    _check_types(cls, params)
    return method


COUNTS = ("steps", "samples", "masks", "iterations")  # parameters counting model passes


KINDS = {  # a part of a parameter's annotation: (whether a value is of that kind, what to ask for)
    "int": (lambda v: is_whole(v) and v >= 0, "an integer ≥ 0"),
    "float": (lambda v: is_number(v) and math.isfinite(v), "a number"),
    "str": (lambda v: isinstance(v, str), "text"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "None": (lambda v: v is None, "None"),
    "Callable": (callable, "a function"),
    "np.ndarray": (lambda v: isinstance(v, (np.ndarray, list, tuple)), "an array"),
    "tuple": (lambda v: isinstance(v, (tuple, list)), "a list"),
    "tuple[str, ...]": (lambda v: isinstance(v, (tuple, list)) and all(isinstance(s, str) for s in v),
                        "a list of names"),
}


def _check_types(cls, params: dict) -> None:
    """One line naming the first parameter whose value is of none of the kinds its annotation allows (parts that
    KINDS does not know, such as a wrapped Method, are checked by the method itself)."""
    annotations = {f.name: f.type for f in fields(cls)}
    for key, value in params.items():
        parts = [p.strip() for p in str(annotations[key]).split("|")]
        kinds = [KINDS[p] for p in parts if p in KINDS]
        if len(kinds) == len(parts) and not any(ok(value) for ok, _ in kinds):
            raise OnnxplainError(f"{cls.name}: {key} must be {' or '.join(what for _, what in kinds)}, "
                                 f"not {value!r}")
