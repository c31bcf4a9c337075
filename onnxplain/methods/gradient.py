"""Methods that read the gradient of the score with respect to the input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import OnnxplainError
from ..limits import check_memory
from .. import perturb
from ..perturb import top1
from ..rewrite.graph import GRAD, TARGET, Request
from .base import Method


@dataclass(frozen=True)
class Saliency(Method):
    """|∂y_c/∂x| (Simonyan et al. 2014); the map is its maximum over channels."""

    name = "saliency"
    group = "gradients"
    summary = "|dy_c/dx|, max over channels (Simonyan 2014)"

    def formula(self, g, t):
        a = g.Abs(t.dx)
        return a, g.reduce_max(a, [t.channel_axis], keepdims=False)

    def reduce_channels(self, attributions, channel_axis):
        return np.abs(attributions).max(axis=channel_axis)


@dataclass(frozen=True)
class GradientXInput(Method):
    """x ⊙ ∂y_c/∂x (Shrikumar et al. 2016); the map is its signed sum over channels."""

    name = "gradxinput"
    group = "gradients"
    summary = "x * dy_c/dx, summed over channels (Shrikumar 2016)"

    def formula(self, g, t):
        a = g.Mul(t.dx, t.x)
        return a, g.reduce_sum(a, [t.channel_axis], keepdims=False)


RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


@dataclass(frozen=True)
class IntegratedGradients(Method):
    """(x − x′) ⊙ Σ_i w_i ∂y_c/∂x(x′ + α_i (x − x′)) (Sundararajan et al. 2017); the map is its signed sum over
    channels.

    The path integral uses Captum's quadrature (`quadrature`). baseline x′: "zero", "mean", "blur" (see
    `onnxplain.perturb.baseline`), a number, or an array (one image, or one per image) in the model's layout. The
    class c of each image is chosen on the image itself, then explained at every step. The steps of all images run
    through one cached gradient session, `internal_batch_size` at a time (default: the batch size).
    info: "completeness_gap" Σ attributions − (y_c(x) − y_c(x′)), and "baseline_score" y_c(x′).
    """

    name = "ig"
    group = "gradients"
    summary = "(x - x') * integral of dy_c/dx from baseline x' to x (Sundararajan 2017)"
    one_graph = False
    steps: int = 50
    rule: str = "gausslegendre"
    baseline: str | float | np.ndarray = "zero"
    internal_batch_size: int | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise OnnxplainError(f"ig: rule must be one of {', '.join(RULES)}, not {self.rule!r}")
        least = 1 if self.rule == "gausslegendre" else 2
        if not isinstance(self.steps, int) or self.steps < least:
            raise OnnxplainError(f"ig: steps must be an integer of at least {least} for rule {self.rule}, "
                                 f"not {self.steps!r}")
        if self.rule == "gausslegendre":  # numpy's leggauss solves an eigenproblem of the steps×steps companion
            check_memory(f"ig: steps={self.steps} with the Gauss-Legendre rule", 32 * self.steps ** 2,
                         "use fewer steps, or rule='riemann_trapezoid'")
        check_batch_size(self)

    def run(self, model, inputs, targets, layer, batch_size):
        from ..explain import forward  # explain imports the methods
        n = len(inputs)
        base = perturb.references(inputs, model.layout, self.baseline, self.name)
        logits = forward(model, np.concatenate([inputs, base]), batch_size)
        used = top1(targets, logits[:n])
        alphas, weights = (v.reshape(-1, 1, 1, 1).astype(np.float32) for v in quadrature(self.rule, self.steps))
        path = inputs - base
        session = model.session(input_gradient(model))

        def weighted_gradients(i, k):
            points = base[i] + alphas[k] * path[i]
            gradient, = session.run([GRAD.format(model.input)], {model.input: points, TARGET: used[i]})
            return (weights[k] * gradient,)

        total, = sums_per_image(n, self.steps, self.internal_batch_size or batch_size, weighted_gradients)
        attributions = (path * total).astype(np.float32)
        rows = np.arange(n)
        y, y0 = logits[rows, used], logits[n + rows, used]
        gap = attributions.reshape(n, -1).sum(axis=1, dtype=np.float64) - (y - y0)
        return (attributions, attributions.sum(axis=model.channel_axis), logits[:n], used,
                {"completeness_gap": gap, "baseline_score": y0})


def quadrature(rule: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points α_i ∈ [0, 1] and weights w_i of ∫₀¹ with n steps, as Captum's approximation_methods.py makes them.

    Gauss-Legendre is exact for polynomials of degree 2n − 1. Captum's Riemann weights are all 1/n, halved at both
    ends for the trapezoid rule, whose weights therefore sum to 1 − 1/n.
    """
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (1 + t) / 2, w / 2
    alphas = {"riemann_left": np.linspace(0, 1 - 1 / n, n), "riemann_right": np.linspace(1 / n, 1, n),
              "riemann_middle": np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n),
              "riemann_trapezoid": np.linspace(0, 1, n)}[rule]
    weights = np.full(n, 1 / n)
    if rule == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    return alphas, weights


def input_gradient(model) -> Request:
    """The graph giving ∂y_c/∂x (output GRAD.format(input)) and the scores, c fed as `target` per row."""
    return Request(expose=(model.score,), differentiate=(model.score,), wrt=(model.input,), seed="target")


def check_batch_size(method: Method) -> None:
    size = method.internal_batch_size
    if size is not None and (not isinstance(size, int) or size < 1):
        raise OnnxplainError(f"{method.name}: internal_batch_size must be a positive integer, not {size!r}")


def sums_per_image(n: int, k: int, size: int, evaluate: Callable) -> list[np.ndarray]:
    """Σ_j evaluate(i, j) over j < k for each image i < n, with the n·k evaluations run `size` at a time across
    images: evaluate(i, j) gets the index arrays of one chunk and returns arrays with one row per (i, j) pair."""
    sums = None
    flat = np.arange(n * k)
    for a in range(0, n * k, size):
        i, j = np.divmod(flat[a:a + size], k)
        starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
        parts = evaluate(i, j)
        if sums is None:
            sums = [np.zeros((n, *p.shape[1:])) for p in parts]
        for total, part in zip(sums, parts):
            total[i[starts]] += np.add.reduceat(part, starts, axis=0)
    return sums
