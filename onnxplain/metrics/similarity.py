"""Similarity of two maps, as the randomisation checks and method comparisons use it."""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError


def _pair(name: str, a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise OnnxplainError(f"{name} needs two maps of the same shape, not {a.shape} and {b.shape}")
    return a, b


def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps (all their entries), ties given their mean rank as
    scipy.stats.spearmanr does: how far two methods order the pixels alike. NaN when either map is constant (no
    order to compare), as scipy gives."""
    a, b = _pair("spearman", a, b)

    def ranks(v):
        _, inverse, counts = np.unique(v.ravel(), return_inverse=True, return_counts=True)
        return (np.cumsum(counts) - counts + (counts - 1) / 2)[inverse]
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def ssim(a, b, window: int = 7, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004) of two H×W maps with scikit-image's defaults, as Quantus calls it
    (`skimage.metrics.structural_similarity(a, b, data_range=...)`): the mean over every `window`×`window` square
    inside the map (7×7, uniform weights; no padding) of

        (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2)),

    μ the square's means, σ its sample (co)variances (divided by window² − 1), C1 = (0.01 R)², C2 = (0.03 R)², and
    R = `data_range`, by default Quantus's: max − min over both maps. 1.0 for equal maps (also constant ones)."""
    a, b = _pair("ssim", a, b)
    if a.ndim != 2 or min(a.shape) < window or window < 2 or window % 2 == 0:
        raise OnnxplainError(f"ssim needs two H×W maps at least {window}×{window} and an odd window ≥ 3; got maps "
                             f"{a.shape} and window {window}")
    if data_range is not None and not (isinstance(data_range, (int, float, np.number)) and data_range > 0):
        raise OnnxplainError(f"ssim's data_range must be a number above 0, not {data_range!r}")
    r = max(a.max(), b.max()) - min(a.min(), b.min()) if data_range is None else float(data_range)
    if r == 0:
        return 1.0
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2

    def mean(v):
        return np.lib.stride_tricks.sliding_window_view(v, (window, window)).mean(axis=(-2, -1))
    ma, mb = mean(a), mean(b)
    sample = window ** 2 / (window ** 2 - 1)
    va, vb, cov = (sample * (mean(a * a) - ma ** 2), sample * (mean(b * b) - mb ** 2),
                   sample * (mean(a * b) - ma * mb))
    s = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return float(s.mean())
