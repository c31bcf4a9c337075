"""Robustness: does the map stay put when the input moves a little? The method explains noisy copies of each image.

- Max-sensitivity (Yeh et al. 2019): max over samples j of ‖Φ(x + δ_j) − Φ(x)‖ / ‖Φ(x)‖ (Frobenius norms of the
  maps), δ_j uniform in the L∞ ball of radius r around x in the model's input space. Lower is better.
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError
from ..explain import as_batch, as_targets
from ..limits import whole
from ..perturb import Scorer, to_chw, top1
from .base import Metric, as_maps, register


def max_sensitivity(model, x, maps, target, explain, *, samples: int = 200, radius: float = 0.2, seed: int = 0,
                    batch_size: int | None = None) -> np.ndarray:
    """Max-sensitivity per image, as Quantus's MaxSensitivity by default: 200 samples, radius 0.2 (its
    lower_bound: uniform noise in [−0.2, 0.2] on every input value, in the model's input space), Frobenius norms,
    no normalisation; lower is better. NaN for a map of zeros, against which no change is relative.

    explain(model, inputs, targets) -> N×H×W maps of the method under test (`Case.explain`); maps: its maps of x.
    The noise of sample j is default_rng([seed, j]).uniform(−radius, radius) over one input, the same for every
    image, so that an image's value does not depend on the images scored with it. Noisy copies are explained
    batch_size at a time (default: the model's batch size), samples of all images together.
    """
    samples = whole("samples", samples)
    if not (isinstance(radius, (int, float)) and radius > 0):
        raise OnnxplainError(f"radius must be a positive number (the L∞ ball's, in the model's input units), "
                             f"not {radius!r}")
    inputs, _ = as_batch(model, x)
    n = len(inputs)
    images = to_chw(inputs, model.layout)
    maps = as_maps(maps, (n, *images.shape[2:]))
    targets = as_targets(model, target, n)
    if (targets < 0).any():                                   # the top-1 class of x, kept for its noisy copies
        targets = top1(targets, Scorer(model.for_batch(inputs), "logit").reference(images, n)[1])
    norms = np.sqrt((maps ** 2).sum(axis=(1, 2)))
    worst = np.zeros(n)
    per_call = max(1, (batch_size or model.batch_size) // n)
    for a in range(0, samples, per_call):
        noise = np.stack([np.random.default_rng([seed, j]).uniform(-radius, radius, inputs.shape[1:])
                          for j in range(a, min(a + per_call, samples))]).astype(np.float32)
        noisy = (inputs[None] + noise[:, None]).reshape(-1, *inputs.shape[1:])
        again = as_maps(explain(model, noisy, np.tile(targets, len(noise))), (len(noisy), *maps.shape[1:]))
        change = np.sqrt(((again.reshape(len(noise), *maps.shape) - maps) ** 2).sum(axis=(2, 3)))
        worst = np.maximum(worst, change.max(axis=0))
    return np.where(norms > 0, worst / np.where(norms > 0, norms, 1), np.nan)


register(Metric("max_sensitivity", "robustness", "lower", "Yeh et al. 2019",
                lambda c, **o: max_sensitivity(c.model, c.inputs, c.maps, c.targets, c.explain, **o),
                needs=("explain",)))
