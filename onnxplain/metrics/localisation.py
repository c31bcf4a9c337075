"""Localisation: does the map point at the ground-truth object? Maps and masks only, no model calls.

- Pointing game (Zhang et al. 2016) and energy-based pointing game (Wang et al. 2020): where a map puts its maximum
  and its positive mass relative to a ground-truth mask.
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError
from .base import Metric, register


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks) != 0
    maps, masks = (maps[None] if maps.ndim == 2 else maps), (masks[None] if masks.ndim == 2 else masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise OnnxplainError(f"maps {maps.shape} and masks {masks.shape} must have the same shape, N×H×W or H×W")
    return maps, masks


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


register(Metric("pointing_game", "localisation", "higher", "Zhang et al. 2016",
                lambda c, **o: pointing_game(c.maps, c.masks, **o), needs=("masks",)))
register(Metric("energy_pointing_game", "localisation", "higher", "Wang et al. 2020 (Score-CAM)",
                lambda c, **o: energy_pointing_game(c.maps, c.masks), needs=("masks",)))
