"""Localisation: does the map point at the ground-truth object? Maps and masks only, no model calls.

- Pointing game (Zhang et al. 2016) and energy-based pointing game (Wang et al. 2020): where a map puts its maximum
  and its positive mass relative to a ground-truth mask.
- Relevance mass and relevance rank accuracy (Arras et al. 2022, CLEVR-XAI), as Quantus computes them: the share of
  the map's sum inside the mask, and the share of the mask among the map's |mask| highest pixels.
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError
from .base import Metric, as_maps, register


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """`as_maps` of the masks' shape, and the masks as booleans N×H×W (one H×W mask is one image)."""
    masks = np.asarray(masks) != 0
    masks = masks[None] if masks.ndim == 2 else masks
    return as_maps(maps, masks.shape, "the masks"), masks


def pointing_game(maps, masks, tolerance: float = 0) -> np.ndarray:
    """Pointing game (Zhang et al. 2016) per image: 1.0 when the map's maximum lies within `tolerance` pixels
    (Euclidean distance between pixel centres) of a pixel of the ground-truth mask, else 0.0.

    maps: N×H×W (or H×W); masks: the same shape, non-zero on the object. Among equal maxima the first in row-major
    order counts (numpy's argmax). An empty mask scores 0.0. Zhang et al. use a tolerance of 15 pixels at ~224².
    """
    if not (isinstance(tolerance, (int, float, np.number)) and tolerance >= 0):
        raise OnnxplainError(f"tolerance must be a distance in pixels, at least 0, not {tolerance}")
    maps, masks = _maps_and_masks(maps, masks)
    hits = np.zeros(len(maps))
    for i, (m, gt) in enumerate(zip(maps, masks)):
        y, x = np.unravel_index(np.argmax(m), m.shape)
        ys, xs = np.nonzero(gt)
        hits[i] = float(ys.size > 0 and ((ys - y) ** 2 + (xs - x) ** 2).min() <= tolerance ** 2)
    return hits


def energy_pointing_game(maps, masks) -> np.ndarray:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM) per image: Σ_{p ∈ mask} m⁺(p) / Σ_p m⁺(p), the share
    of the map's positive part m⁺ = max(m, 0) that falls on the ground-truth mask; 0.0 for a map with no positive
    value. Shapes as `pointing_game`."""
    maps, masks = _maps_and_masks(maps, masks)
    pos = np.maximum(maps, 0)
    total = pos.sum(axis=(1, 2))
    return np.where(total > 0, (pos * masks).sum(axis=(1, 2)) / np.where(total > 0, total, 1), 0.0)


def relevance_mass_accuracy(maps, masks) -> np.ndarray:
    """Relevance mass accuracy (Arras et al. 2022) per image, as Quantus's RelevanceMassAccuracy with its defaults:
    Σ_{p ∈ mask} m(p) / Σ_p m(p) over the signed map (no absolute value; Quantus's normalisation by the largest |m|
    cancels in the ratio). 1.0 when all the map's relevance lies on the mask, the mask's area share for a uniform
    map. NaN where it is undefined, as Quantus gives it: an empty mask, or a map summing to zero. A map with
    negative values can score outside [0, 1] (Quantus alike). Shapes as `pointing_game`."""
    maps, masks = _maps_and_masks(maps, masks)
    within, total = (maps * masks).sum(axis=(1, 2)), maps.sum(axis=(1, 2))
    defined = masks.any(axis=(1, 2)) & (total != 0)
    return np.where(defined, within / np.where(defined, total, 1), np.nan)


def relevance_rank_accuracy(maps, masks) -> np.ndarray:
    """Relevance rank accuracy (Arras et al. 2022) per image, as Quantus's RelevanceRankAccuracy: with K the mask's
    pixel count, |P_K ∩ mask| / K, P_K the K pixels of highest map value. 1.0 when the map's K highest pixels are the
    mask; K/(H·W), the mask's area share, expected of a random map. Among equal values the first in row-major order
    ranks higher (a stable sort; Quantus's unstable argsort leaves such ties to numpy). NaN for an empty mask, as
    Quantus gives it. Shapes as `pointing_game`."""
    maps, masks = _maps_and_masks(maps, masks)
    n = len(maps)
    k = masks.reshape(n, -1).sum(axis=1)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    hits = np.take_along_axis(masks.reshape(n, -1), order, axis=1)
    top = np.arange(hits.shape[1])[None] < k[:, None]
    return np.where(k > 0, (hits & top).sum(axis=1) / np.maximum(k, 1), np.nan)


register(Metric("pointing_game", "localisation", "higher", "Zhang et al. 2016",
                lambda c, **o: pointing_game(c.maps, c.masks, **o), needs=("masks",)))
register(Metric("energy_pointing_game", "localisation", "higher", "Wang et al. 2020 (Score-CAM)",
                lambda c, **o: energy_pointing_game(c.maps, c.masks), needs=("masks",)))
register(Metric("relevance_mass_accuracy", "localisation", "higher", "Arras et al. 2022 (CLEVR-XAI)",
                lambda c, **o: relevance_mass_accuracy(c.maps, c.masks), needs=("masks",)))
register(Metric("relevance_rank_accuracy", "localisation", "higher", "Arras et al. 2022 (CLEVR-XAI)",
                lambda c, **o: relevance_rank_accuracy(c.maps, c.masks), needs=("masks",)))
