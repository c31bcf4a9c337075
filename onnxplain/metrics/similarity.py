"""Similarity of two maps, as the randomisation checks and method comparisons use it."""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError


def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps (all their entries), ties given their mean rank as
    scipy.stats.spearmanr does: how far two methods order the pixels alike."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise OnnxplainError(f"spearman needs two maps of the same shape, not {a.shape} and {b.shape}")

    def ranks(v):
        _, inverse, counts = np.unique(v.ravel(), return_inverse=True, return_counts=True)
        return (np.cumsum(counts) - counts + (counts - 1) / 2)[inverse]
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])
