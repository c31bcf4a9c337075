"""Complexity: how concentrated is a map? Maps only, no model calls; computed as Quantus computes them.

- Sparseness (Chalasani et al. 2020): the Gini index of |m| over the pixels, after Quantus's normalisation by the
  maximum of |m| and its 1e-7 added to every value, G = Σ_k (2k − n − 1) a_(k) / (n Σ_k a_(k)) with a sorted
  increasingly (k = 1..n). 0 for a uniform map, towards 1 when one pixel holds everything; higher is better.
- Complexity (Bhatt et al. 2020): the entropy of the fractional contributions p = |m| / Σ|m|,
  −Σ p ln(p + 1e-12); 0 for one pixel, ln n for a uniform map; lower is better. Undefined (NaN) for a map of zeros.

Quantus normalises by the maximum over the whole batch; here each map is normalised by its own maximum so that a
map's value does not depend on the maps scored with it (the values equal Quantus's for a batch of one image).
"""
from __future__ import annotations

import numpy as np

from .base import Metric, as_maps, register


def sparseness(maps) -> np.ndarray:
    """Gini index of each |map| (N×H×W or H×W) as Quantus's Sparseness computes it: higher is sparser."""
    a = np.abs(as_maps(maps))
    a = a.reshape(len(a), -1)
    top = a.max(axis=1, keepdims=True)
    a = np.sort(a / np.where(top > 0, top, 1) + 1e-7, axis=1)
    n = a.shape[1]
    k = np.arange(1, n + 1)
    return ((2 * k - n - 1) * a).sum(axis=1) / (n * a.sum(axis=1))


def complexity(maps) -> np.ndarray:
    """Entropy of each |map| / Σ|map| (N×H×W or H×W) as Quantus's Complexity computes it: lower is simpler;
    NaN for a map of zeros, whose contributions are undefined."""
    a = np.abs(as_maps(maps))
    a = a.reshape(len(a), -1)
    total = a.sum(axis=1, keepdims=True)
    p = a / np.where(total > 0, total, 1)
    return np.where(total[:, 0] > 0, -(p * np.log(p + 1e-12)).sum(axis=1), np.nan)


register(Metric("sparseness", "complexity", "higher", "Chalasani et al. 2020",
                lambda c, **o: sparseness(c.maps, **o)))
register(Metric("complexity", "complexity", "lower", "Bhatt et al. 2020 (IJCAI)",
                lambda c, **o: complexity(c.maps, **o)))
