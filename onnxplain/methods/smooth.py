"""The noise tunnel: a gradient method averaged over noisy copies of the image (SmoothGrad, SmoothGrad², VarGrad)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxplainError
from ..perturb import top1
from ..rewrite.graph import TARGET
from .base import Method, get
from .gradient import check_batch_size, sums_per_image


@dataclass(frozen=True)
class NoiseTunnel(Method):
    """Statistics over j < samples of A(x + ε_j), ε_j ~ N(0, σ²), of the attributions A of the method `of`.

    of: the wrapped method, by name (saliency, gradxinput, ig, a modified-rule method) or as a Method instance
    (e.g. `methods.get("ig", steps=16)`). sigma: σ as a fraction of the image's value range (max − min), Smilkov et
    al.'s noise level. The noise of sample j is drawn from the seed (seed, j) for every image: the same whatever
    the batch size, and whichever images are explained together. Classes are chosen on the clean images. The
    noisy copies of all images run through the wrapped method's cached session, `internal_batch_size` at a time
    (default: the batch size). The map is the wrapped method's reduction over channels applied to the statistic,
    on the host: max |·| for the gradient magnitudes (saliency, guided backprop, deconvnet), the signed sum for
    the others.
    """

    group = "gradients"
    one_graph = False
    of: str | Method = "saliency"
    samples: int = 25
    sigma: float = 0.15
    seed: int = 0
    internal_batch_size: int | None = None

    def __post_init__(self):
        inner = self.wrapped
        if inner.group not in ("gradients", "modified") or inner.at_layer:
            raise OnnxplainError(f"{self.name}: 'of' must be a method whose attributions are gradients at the input "
                                 f"(saliency, gradxinput, ig, ...), not '{inner.name}'")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise OnnxplainError(f"{self.name}: samples must be a positive integer, not {self.samples!r}")
        if not isinstance(self.sigma, (int, float)) or self.sigma < 0:
            raise OnnxplainError(f"{self.name}: sigma must be a number ≥ 0, not {self.sigma!r}")
        check_batch_size(self)

    def model_passes(self, size):
        inner = self.wrapped.model_passes(size)
        return None if inner is None else self.samples * inner + 1

    @property
    def wrapped(self) -> Method:
        return self.of if isinstance(self.of, Method) else get(self.of)

    def statistic(self, mean: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
        """The attributions from E[A] and E[A²] over the samples."""
        raise NotImplementedError

    def noisy(self, inputs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """x_i + s_i ε_j for the (image, sample) pairs (i, j): ε_j standard normal from the seed (seed, j), the same
        for every image, so that an image's result does not depend on the others explained with it (nor on its
        place among them), and each ε_j is drawn once per chunk however many images share it; s_i = sigma·(max x_i
        − min x_i)."""
        x = inputs[i]
        std = self.sigma * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
        samples, which = np.unique(j, return_inverse=True)
        eps = np.stack([np.random.default_rng((self.seed, int(s))).standard_normal(x.shape[1:], np.float32)
                        for s in samples])
        return x + std.reshape(-1, 1, 1, 1).astype(np.float32) * eps[which]

    def run(self, model, inputs, targets, layer, batch_size):
        from ..explain import forward  # explain imports the methods
        inner = self.wrapped
        logits = forward(model, inputs, batch_size)
        used = top1(targets, logits)

        def noisy(i, j):  # on a worker thread, while the previous chunk runs
            return {model.input: self.noisy(inputs, i, j), TARGET: used[i]}, 1.0

        def attributions(feeds):  # a method of several passes (IG) runs them
            x, t = feeds[model.input], feeds[TARGET]
            return inner.run(model, x, t, layer, len(x))[0]

        mean, mean_sq = (s / self.samples for s in sums_per_image(
            model, inner.request(model, layer) if inner.one_graph else None, len(inputs), self.samples,
            self.internal_batch_size or batch_size, inputs.shape[1:], noisy, attributions, powers=(1, 2)))
        attributions = self.statistic(mean, mean_sq)
        maps = inner.reduce_channels(attributions, model.channel_axis)
        return attributions.astype(np.float32), maps.astype(np.float32), logits, used


@dataclass(frozen=True)
class SmoothGrad(NoiseTunnel):
    """E_ε[A(x + ε)] (Smilkov et al. 2017)."""

    name = "smoothgrad"
    summary = "mean of a gradient method over noisy copies of x (Smilkov 2017)"

    def statistic(self, mean, mean_sq):
        return mean


@dataclass(frozen=True)
class SmoothGradSquared(NoiseTunnel):
    """E_ε[A(x + ε)²] (Hooker et al. 2019)."""

    name = "smoothgrad2"
    summary = "mean square of a gradient method over noisy copies of x (Hooker 2019)"

    def statistic(self, mean, mean_sq):
        return mean_sq


@dataclass(frozen=True)
class VarGrad(NoiseTunnel):
    """Var_ε[A(x + ε)] = E[A²] − E[A]², the population variance (Adebayo et al. 2018)."""

    name = "vargrad"
    summary = "variance of a gradient method over noisy copies of x (Adebayo 2018)"

    def statistic(self, mean, mean_sq):
        return mean_sq - mean * mean
