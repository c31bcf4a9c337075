"""Methods that read the gradient of the score with respect to the input."""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..errors import OnnxplainError
from ..limits import check_memory
from .. import perturb
from ..perturb import top1
from ..rewrite.graph import GRAD, SUMS_OPSET, TARGET, Request
from ..runtime import Sums, prefetched
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

    def model_passes(self, size):
        return self.steps + 2  # the steps, and the forwards of the image and its baseline

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
        alphas, weights = quadrature(self.rule, self.steps)
        alphas = alphas.reshape(-1, 1, 1, 1).astype(np.float32)
        path = inputs - base

        def points(i, k):  # on a worker thread, while the previous chunk runs
            return {model.input: base[i] + alphas[k] * path[i], TARGET: used[i]}, weights[k]

        total, = sums_per_image(model, input_gradient(model), n, self.steps, self.internal_batch_size or batch_size,
                                inputs.shape[1:], points)
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


def sums_per_image(model, request: Request | None, n: int, k: int, size: int, shape: tuple[int, ...],
                   make: Callable, evaluate: Callable | None = None, powers: tuple[int, ...] = (1,)
                   ) -> list[np.ndarray]:
    """Σ_j w_ij · A_ij^p over j < k for each image i < n and each power p, the n·k rows run `size` at a time
    across images. make(i, j) gets the index arrays of one chunk and returns (the chunk's feeds, the weights w per
    row); where there are several chunks it runs on a worker thread, one chunk ahead. A is the gradient (no head)
    or the attributions of `request`'s graph, whose session also adds them up per image (`Request.sums`): they
    never leave its device and no other run is needed. Where `request` is None (a method of several passes), A is
    evaluate(feeds), an array summed on the host; so is the graph's A where the model's opset is too old for the
    summing graph."""
    sums = Sums(n, shape, powers)
    session = None
    if request is not None and model.opset >= SUMS_OPSET:
        session = model.session(replace(request, sums=powers))
        size = min(size, session.max_batch or size)  # the running sums go through each run once
    elif request is not None:
        plain, name = model.session(request), GRAD.format(request.wrt[0]) if request.head is None else "attributions"
        evaluate = lambda feeds: plain.run([name], feeds, size)[0]  # noqa: E731
    flat = np.arange(n * k)
    chunks = [np.divmod(flat[a:a + size], k) for a in range(0, n * k, size)]
    with closing(prefetched(lambda chunk: (chunk[0], *make(*chunk)), chunks, threads=len(chunks) > 1)) as made:
        for i, fed, weights in made:
            weights = np.broadcast_to(weights, i.shape)
            if session is None:
                sums.add(i, weights, evaluate(fed))
            else:
                sums.step(session, fed, i, weights, size)
    return sums.result()
