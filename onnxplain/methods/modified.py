"""Methods that differentiate with modified backward rules: a composite overrides the plain VJP rules of some ops.

Maps: Guided Backprop, Deconvnet and Guided Grad-CAM are sharpened gradients, so their map is that of saliency,
max over channels of |a|. DeepLIFT's contributions add up to the score difference, so its map is their signed sum
over channels, as Gradient×Input's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import OnnxplainError
from .. import perturb
from ..perturb import top1
from ..rewrite.composite import Composite
from ..rewrite.graph import TARGET
from ..rewrite.modified.deeplift import RESCALE, halves
from ..rewrite.modified.guided import DECONVNET, GUIDED
from .base import Method
from .cam import GradCAM


class ModifiedGradient(Method):
    """The input gradient under a composite of override rules; the map is max over channels of |dx|."""

    group = "modified"
    override: ClassVar[Composite]

    def rules(self, model):
        return self.override

    def reduce_channels(self, attributions, channel_axis):
        return np.abs(attributions).max(axis=channel_axis)

    def formula(self, g, t):
        return t.dx, g.reduce_max(g.Abs(t.dx), [t.channel_axis], keepdims=False)


@dataclass(frozen=True)
class GuidedBackprop(ModifiedGradient):
    """Springenberg et al. 2015: at each ReLU-like op dx = ReLU(dy)·1[x > 0] (see `rewrite.modified.guided`)."""

    name = "guided"
    summary = "gradient passing only positive signal back through ReLUs (Springenberg 2015)"
    override = GUIDED


@dataclass(frozen=True)
class Deconvnet(ModifiedGradient):
    """Zeiler & Fergus 2014: at each ReLU-like op dx = ReLU(dy), whatever the forward input."""

    name = "deconvnet"
    summary = "gradient with ReLU(dy) at every ReLU, ignoring the forward pass (Zeiler 2014)"
    override = DECONVNET


def nearest(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """N×h×w → N×H×W by torch's "nearest" (Captum's default upsampling): source index floor(i·h/H)."""
    (h, w), (hh, ww) = m.shape[1:], size
    rows = np.minimum(np.arange(hh) * h // hh, h - 1)
    cols = np.minimum(np.arange(ww) * w // ww, w - 1)
    return m[:, rows][:, :, cols]


@dataclass(frozen=True)
class GuidedGradCAM(Method):
    """Selvaraju et al. 2017: Guided Backprop ⊙ Grad-CAM, the CAM upsampled to the input and shared by channels.

    Two passes, as Captum's GuidedGradCam: Grad-CAM needs the plain gradient at the layer, guided backprop the
    guided one at the input, and one backward walk has one set of rules. `upsample`: "bilinear" (the paper) or
    "nearest" (Captum's default).
    """

    name = "guidedgradcam"
    group = "modified"
    summary = "guided backprop times the upsampled Grad-CAM of a layer (Selvaraju 2017)"
    at_layer = True
    one_graph = False
    upsample: str = "bilinear"

    def __post_init__(self):
        if self.upsample not in ("bilinear", "nearest"):
            raise OnnxplainError(f"guidedgradcam's upsample must be bilinear or nearest, not {self.upsample!r}")

    def run(self, model, inputs, targets, layer, batch_size):
        cam, smooth, scores, used = GradCAM().run(model, inputs, targets, layer, batch_size)
        guided = GuidedBackprop().run(model, inputs, used, None, batch_size)[0]
        channel = model.channel_axis
        up = smooth if self.upsample == "bilinear" else nearest(cam, model.input_size)
        a = guided * np.expand_dims(up, channel)
        return a, np.abs(a).max(axis=channel), scores, used


@dataclass(frozen=True)
class DeepLift(Method):
    """Shrikumar et al. 2017, Rescale rule: a = (x − x')·m, m the multipliers of y_c chained back to the input
    (see `rewrite.modified.deeplift`); Σ a = y_c(x) − y_c(x'). Each image and its reference x' run as one batch
    [x; x'] for the class of the image (-1: the image's top-1).
    info, per image, as Integrated Gradients': "completeness_gap", the summation-to-delta gap Σ a − (y_c(x) − y_c(x'))
    (Captum's convergence delta), and "baseline_score" y_c(x').

    baseline: x' as perturb.baseline makes it from each image (zero, mean, blur, a number), or an array (one
    image, or one per image) in the model's input layout.
    """

    name = "deeplift"
    group = "modified"
    summary = "(x - x') times Rescale-rule multipliers, summed over channels (Shrikumar 2017)"
    one_graph = False
    baseline: object = field(default="zero", compare=False)  # not part of the graph: sessions stay shared

    def rules(self, model):
        return RESCALE

    def formula(self, g, t):
        (x, reference), (m, _) = halves(g, t.x), halves(g, t.dx)
        a = g.Mul(g.Sub(x, reference), m)
        return a, g.reduce_sum(a, [t.channel_axis], keepdims=False)

    def run(self, model, inputs, targets, layer, batch_size):
        from ..explain import forward  # the API module imports the methods
        references = perturb.references(inputs, model.layout, self.baseline, self.name)
        if (targets < 0).any():  # the top-1 class of the image, not of its reference
            targets = top1(targets, forward(model, inputs, batch_size))
        sess = model.session(self.request(model, layer))
        step = max(1, batch_size // 2)  # rows per run: images and their references
        parts = []
        for s in (slice(i, i + step) for i in range(0, len(inputs), step)):
            n = len(inputs[s])
            a, m, y = sess.run(["attributions", "maps", model.score],
                               {model.input: np.concatenate([inputs[s], references[s]]),
                                TARGET: np.concatenate([targets[s], targets[s]])})
            parts.append((a, m, y[:n], y[n:]))
        a, maps, scores, reference_scores = (np.concatenate(p) for p in zip(*parts))
        rows = np.arange(len(targets))
        y, y0 = scores[rows, targets], reference_scores[rows, targets]
        gap = a.reshape(len(a), -1).sum(axis=1, dtype=np.float64) - (y - y0)
        return a, maps, scores, targets, {"completeness_gap": gap, "baseline_score": y0}
