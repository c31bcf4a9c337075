"""DeepLIFT's Rescale rule (Shrikumar et al. 2017) as overrides of the plain VJP rules, following Captum's DeepLift.

The graph runs on the batch [x; x'] (N images, then their N references), so every tensor holds its value for the
image and for the reference: the first and second halves of axis 0. At each nonlinearity the multiplier is
m = Δy/Δx, with Δ = (image half) − (reference half), and the cotangent stays 2N rows: dx = dy·[m; m], or the
plain dx of each row where |Δx| < eps (Captum's eps, 1e-10). Linear ops keep their plain rule, so the multipliers
chain and Σ (x − x')·m = y_c(x) − y_c(x') (summation-to-delta).

- Elementwise ops: Captum's rule for those Captum covers (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus). The same
  formula holds for every elementwise nonlinearity, so it also covers Clip (ReLU6), PRelu, Selu, Celu, HardSigmoid,
  HardSwish, Erf, Gelu, Mish, Swish, Softsign, ThresholdedRelu and Shrink, which Captum leaves plain. HardSigmoid
  and HardSwish (MobileNetV3) take m in a form without the cancellation in y − y'.
- MaxPool and GlobalMaxPool: Captum's rule. The pooled difference goes to the image's maximum when y ≥ y', else to
  the reference's maximum, and is divided by Δx there. Where |Δx| < eps each row keeps its own plain gradient
  (Captum 0.9 takes the first image's, captum#1276).
- Softmax: the elementwise multipliers, minus their mean over the softmax axes of each row. Captum subtracts the
  mean over the whole batch tensor, which mixes images.
- Products of two activations (squeeze-excite gates, x·σ(x)) keep the plain product rule, as in Captum; there
  summation-to-delta is approximate.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..composite import Composite
from ..rules import RULES
from ..rules.activation import _softmax_axes

EPS = 1e-10  # Captum's DeepLift eps: below it |Δx| counts as zero and the plain derivative is used
ELEMENTWISE_OPS = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "Tanh", "Erf",
                   "Softplus", "Gelu", "Mish", "Swish", "Softsign", "ThresholdedRelu",
                   "Shrink")  # and HardSigmoid, HardSwish: their own forms below


def halves(g, t):
    """The image half and the reference half of a [x; x'] batch: axis 0 split in two equal parts."""
    return g.op("Split", t, axis=0, outputs=2, **({"num_outputs": 2} if g.opset >= 18 else {}))


def doubled(g, t):
    """[t; t] along the batch axis."""
    return g.Concat(t, t, axis=0)


def delta(g, t):
    """[Δt; Δt], Δt = t(x) − t(x'), for both halves of the batch."""
    image, reference = halves(g, t)
    return doubled(g, g.Sub(image, reference))


def unless_flat(g, x, eps, rescaled, plain):
    """`rescaled` where |Δx| ≥ eps, else the plain gradient `plain`."""
    return g.Where(g.Less(g.Abs(delta(g, x)), g.const(eps, like=x)), plain, rescaled)


@dataclass(frozen=True)
class Rescale:
    """Elementwise y = f(x): dx = dy·[m; m], m = Δy/Δx (Captum's `nonlinear`)."""

    eps: float = EPS

    def __call__(self, node, dys, g):
        x = node.inputs[0]
        dx, *rest = RULES[node.op](node, dys, g)
        return [unless_flat(g, x, self.eps, g.Mul(dys[0], doubled(g, self.multiplier(g, node))), dx), *rest]

    def multiplier(self, g, node):
        """Δy/Δx per image pair (N rows)."""
        (x, xr), (y, yr) = halves(g, node.inputs[0]), halves(g, node.outputs[0])
        return g.Div(g.Sub(y, yr), g.Sub(x, xr))


def _hard_sigmoid_secant(g, x, h, alpha):
    """Δh/Δx of h = HardSigmoid(x) per image pair, exactly alpha where x and x' both lie on its slope (0 < h < 1):
    there the quotient of two rounded values would lose digits."""
    (hx, hr), (xx, xr) = halves(g, h), halves(g, x)
    zero, one = g.const(0, like=x), g.const(1, like=x)
    sloped = g.And(*(g.And(g.Greater(t, zero), g.Less(t, one)) for t in (hx, hr)))
    return g.Where(sloped, g.const(alpha, like=x), g.Div(g.Sub(hx, hr), g.Sub(xx, xr)))


@dataclass(frozen=True)
class RescaleHardSigmoid(Rescale):
    def multiplier(self, g, node):
        return _hard_sigmoid_secant(g, node.inputs[0], node.outputs[0], node.attrs.get("alpha", 0.2))


@dataclass(frozen=True)
class RescaleHardSwish(Rescale):
    """HardSwish y = x·h(x), h = HardSigmoid(x; 1/6, 1/2): Δy = Δx·h(x) + x'·Δh, so m = h(x) + x'·Δh/Δx, free of
    the cancellation in y − y' (on the zoo's MobileNetV3 the quotient leaves DeepLIFT 2e-4 from float64, this 1e-6)."""

    def multiplier(self, g, node):
        x = node.inputs[0]
        h = g.HardSigmoid(x, alpha=1 / 6, beta=0.5)
        (hx, _), (_, xr) = halves(g, h), halves(g, x)
        return g.Add(hx, g.Mul(xr, _hard_sigmoid_secant(g, x, h, 1 / 6)))


@dataclass(frozen=True)
class RescaleSoftmax(Rescale):
    """The elementwise multipliers of Softmax, centred over its axes (Captum's `softmax`, per row)."""

    def __call__(self, node, dys, g):
        (dx,) = super().__call__(node, dys, g)
        return [g.Sub(dx, g.reduce_mean(dx, _softmax_axes(node, g)))]


@dataclass(frozen=True)
class RescaleMaxPool:
    """Captum's `maxpool`: with top = max(y, y'), the differences top − y' (image rows) and y − top (reference
    rows) go back to their own maxima like plain gradients; their sum U is shared: dx = [U; U] / Δx."""

    eps: float = EPS

    def __call__(self, node, dys, g):
        x, y, (dy, *rest) = node.inputs[0], node.outputs[0], dys
        image, reference = halves(g, y)
        top = g.Max(image, reference)
        gains = g.Concat(g.Sub(top, reference), g.Sub(image, top), axis=0)
        unpool = RULES[node.op]
        from_image, from_reference = halves(g, unpool(node, [g.Mul(dy, gains), *rest], g)[0])
        shared = doubled(g, g.Add(from_image, from_reference))
        return [unless_flat(g, x, self.eps, g.Div(shared, delta(g, x)), unpool(node, dys, g)[0])]


RESCALE = Composite("deeplift-rescale", rules=(
    *((op, Rescale()) for op in ELEMENTWISE_OPS),
    ("HardSigmoid", RescaleHardSigmoid()),
    ("HardSwish", RescaleHardSwish()),
    ("Softmax", RescaleSoftmax()),
    ("MaxPool", RescaleMaxPool()),
    ("GlobalMaxPool", RescaleMaxPool()),
))
