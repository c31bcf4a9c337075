"""Render maps: heat-map overlays on the image as the model saw it (PNG), raw arrays (.npy)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import OnnxplainError, writing

# Turbo colormap, polynomial fit by Mikhailov (Google, 2019), for maps of one sign.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])
# Diverging blue - white - red for signed evidence (for / against).
_BLUE, _WHITE, _RED = np.array([59, 76, 192]) / 255, np.ones(3), np.array([180, 4, 38]) / 255


def turbo(t: np.ndarray) -> np.ndarray:
    """[0, 1] → RGB in [0, 1]."""
    t = np.clip(t, 0, 1)[..., None]
    powers = t ** np.arange(6)
    return np.clip(powers @ _TURBO.T, 0, 1)


def diverging(t: np.ndarray) -> np.ndarray:
    """[-1, 1] → RGB in [0, 1]: blue for negative, white at zero, red for positive."""
    t = np.clip(t, -1, 1)[..., None]
    return np.where(t < 0, _WHITE + (_BLUE - _WHITE) * -t, _WHITE + (_RED - _WHITE) * t)


def is_signed(m: np.ndarray) -> bool:
    return bool((m < 0).any() and (m > 0).any())


def normalise(m: np.ndarray, signed: bool, percentile: float = 99.5) -> np.ndarray:
    """Scale to [0, 1] (or [-1, 1] when signed) by a high percentile of |m|, so one outlier does not wash out the
    map."""
    m = np.asarray(m, np.float64)
    scale = np.percentile(np.abs(m), percentile) or np.abs(m).max() or 1.0
    lo = 0.0 if signed else min(m.min(), 0.0)
    out = (m - lo) / (scale - lo) if not signed else m / scale
    return np.clip(out, -1 if signed else 0, 1)


def rgb(view: np.ndarray) -> np.ndarray:
    """A uint8 H×W×3 picture of a grey (H×W or H×W×1), RGB or RGBA view (its alpha dropped: the overlay is opaque)."""
    view = view.reshape(*view.shape[:2], -1)
    return np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view[..., :3]


def overlay(view: np.ndarray, m: np.ndarray, alpha: float = 0.5, signed: bool | None = None) -> np.ndarray:
    """Blend the heat map `m` (H×W) over the uint8 H×W×C `view` (grey, RGB or RGBA); signed maps use the diverging
    colormap and are transparent where the evidence is zero, opaque where it is strongest."""
    if view.shape[:2] != m.shape:
        raise OnnxplainError(f"map of shape {m.shape} does not fit image of shape {view.shape[:2]}")
    view = rgb(view)
    signed = is_signed(m) if signed is None else signed
    t = normalise(m, signed)
    colour = diverging(t) if signed else turbo(t)
    a = np.sqrt(np.abs(t))[..., None] * 0.9 if signed else alpha  # √: weak evidence stays visible
    blended = (1 - a) * (view / 255.0) + a * colour
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def check_writable(paths: list[Path], force: bool) -> None:
    """Refuse, before any work, to replace what is at an output path (a file, or a link, even a dangling one) unless
    `force`, or to start where the results cannot be written. Folders are made at the first write (`writing`), so a
    run that fails leaves none behind; files are renamed into place, so a link is replaced, never written through."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise OnnxplainError(f"{existing[0]} exists (and {len(existing) - 1} more); use --force to overwrite"
                             if len(existing) > 1 else f"{existing[0]} exists; use --force to overwrite")
    for folder in dict.fromkeys(Path(p).parent for p in paths):
        made = next(f for f in (folder, *folder.parents) if f.exists())  # the folder, or the nearest one above it
        if not made.is_dir():
            raise OnnxplainError(f"cannot write {folder}: {made} is not a folder")
        if not os.access(made, os.W_OK | os.X_OK):
            raise OnnxplainError(f"cannot write {folder}: permission denied")


def save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image
    with writing(path) as tmp:
        Image.fromarray(rgb).save(tmp)


def save_npy(path: Path, a: np.ndarray) -> None:
    with writing(path) as tmp:
        np.save(tmp, a)
