"""Metrics on any saliency map, from forward passes through the black-box engine.

- Deletion and insertion (Petsiuk et al. 2018): pixels are removed from the image (deletion, towards a zero
  baseline by default) or inserted into a baseline (insertion, a blurred image by default) `step` at a time in
  the map's order, most salient first; the AUC of the class probability against the fraction changed is
  (Σ y − y₀/2 − y_n/2)/n over the n+1 points, as in their code. Deletion: lower is better; insertion: higher.
- Average drop and increase in confidence (Chattopadhay et al. 2018): the explanation image x ⊙ m (+ baseline
  ⊙ (1 − m)), m the map min-max normalised to [0, 1]; drop = max(0, Y − O)/Y·100 and increase = 100·[O > Y],
  Y and O the class probability of the image and of the explanation, averaged over images.
- Pointing game (Zhang et al. 2016) and energy-based pointing game (Wang et al. 2020): where a map puts its maximum
  and its positive mass relative to a ground-truth mask; maps only, no model calls.

`evaluate(model, x, methods)` explains with each method (or takes given maps) and returns every metric per image.
"""
from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import OnnxplainError
from .explain import as_batch, as_targets, check_finite, explain
from .limits import whole
from .perturb import Plan, Scorer, baseline, stream, to_chw, top1

METRICS = ("deletion", "insertion", "drop", "increase")
BETTER = {"deletion": "lower", "insertion": "higher", "drop": "lower", "increase": "higher"}


def _prepare(model, x, maps, target, score, batch_size):
    inputs, _ = as_batch(model, x)
    model = model.for_batch(inputs)
    images = to_chw(inputs, model.layout)
    try:
        maps = np.asarray(maps, np.float64)
    except (TypeError, ValueError):
        raise OnnxplainError(f"maps must be an array of numbers, N×H×W, not {reprlib.repr(maps)}") from None
    maps = maps[None] if maps.ndim == 2 else maps
    if maps.shape != (len(images), *images.shape[2:]):
        raise OnnxplainError(f"maps have shape {maps.shape}; the images need {(len(images), *images.shape[2:])}")
    check_finite(maps, "map")
    scorer = Scorer(model, score)
    _, base = scorer.reference(images, batch_size or model.batch_size)
    return images, maps, scorer, base, top1(as_targets(model, target, len(images)), base)


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves sampled at evenly spaced points of [0, 1] (trapezoids), along the last axis."""
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)


def curves(model, x, maps, target=None, *, mode: str = "deletion", baseline_kind: str | float | None = None,
           step: int | None = None, score="probability", batch_size: int | None = None, progress=None) -> np.ndarray:
    """Deletion or insertion curves (N×(n+1)): the class score after 0, step, 2·step, … pixels (all at the end)
    have been removed (deletion) or inserted (insertion) in decreasing order of the map.

    step: pixels per step; default H·W/224, the paper's 224 pixels at 224×224 (225 model calls per image).
    baseline_kind: zero, blur, mean or a number; default zero for deletion and blur for insertion, as the paper.
    """
    if mode not in ("deletion", "insertion"):
        raise OnnxplainError(f"mode must be deletion or insertion, not {mode!r}")
    images, maps, scorer, _, used = _prepare(model, x, maps, target, score, batch_size)
    _, _, h, w = images.shape
    step = max(1, h * w // 224) if step is None else whole("step", step)
    n = -(-h * w // step)
    kind = baseline_kind if baseline_kind is not None else ("zero" if mode == "deletion" else "blur")
    plans = []
    for img, m, c in zip(images, maps, used):
        rank = np.empty(h * w, np.int64)
        rank[np.argsort(-m.ravel(), kind="stable")] = np.arange(h * w)
        rank = rank.reshape(h, w)
        start, end = (img, baseline(img, kind)) if mode == "deletion" else (baseline(img, kind), img)
        state = {"curve": np.zeros(n + 1)}

        def make(a, b, rank=rank, start=start, end=end):
            changed = rank[None] < (np.arange(a, b) * step)[:, None, None]   # (b-a)×H×W
            return np.where(changed[:, None], end[None], start[None]), None

        def take(a, b, s, _, c=int(c), state=state):
            state["curve"][a:b] = s[:, c]

        plans.append(Plan(n + 1, make, take, state))
    stream(scorer, plans, batch_size or model.batch_size, progress)
    return np.stack([p.state["curve"] for p in plans])


def deletion(model, x, maps, target=None, **options) -> np.ndarray:
    """Deletion AUC per image (lower is better); options as `curves`."""
    return auc(curves(model, x, maps, target, mode="deletion", **options))


def insertion(model, x, maps, target=None, **options) -> np.ndarray:
    """Insertion AUC per image (higher is better); options as `curves`."""
    return auc(curves(model, x, maps, target, mode="insertion", **options))


def confidence(model, x, maps, target=None, *, baseline_kind: str | float = "zero", score="probability",
               batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(drop %, increase %) per image: Chattopadhay et al.'s average drop and increase in confidence, unaveraged."""
    images, maps, scorer, base, used = _prepare(model, x, maps, target, score, batch_size)
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    m = ((maps - lo) / np.where(hi > lo, hi - lo, 1)).astype(np.float32)[:, None]
    fills = np.stack([baseline(img, baseline_kind) for img in images])
    explained = fills + (images - fills) * m
    _, out = scorer.reference(explained, batch_size or model.batch_size)
    y, o = base[np.arange(len(used)), used], out[np.arange(len(used)), used]
    drop = np.maximum(0, y - o) / np.where(y > 0, y, 1) * 100
    return drop, (o > y) * 100.0


def evaluate(model, x, methods=("rise",), target=None, *, metrics=METRICS, step: int | None = None,
             deletion_baseline: str | float = "zero", insertion_baseline: str | float = "blur",
             score="probability", batch_size: int | None = None, params: Mapping | None = None,
             progress=None) -> dict[str, dict[str, np.ndarray]]:
    """Explain `x` with each method and score its maps: {method: {metric: value per image}}.

    methods: method names, or a mapping {label: maps N×H×W} to score maps made elsewhere.
    params: {method: {parameter: value}} passed to `explain`.
    progress: progress(done, total) for every stream of model calls (explanations and metrics).
    """
    listed = isinstance(metrics, (list, tuple))
    if not listed or any(m not in METRICS for m in metrics):
        unknown = next(m for m in metrics if m not in METRICS) if listed else metrics
        raise OnnxplainError(f"unknown metric {reprlib.repr(unknown)} (metrics is a list of: {', '.join(METRICS)})")
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple, Mapping)):
        raise OnnxplainError(f"methods must be method names or a mapping of maps, not {reprlib.repr(methods)}")
    if not (params is None or isinstance(params, Mapping) and all(isinstance(v, Mapping) for v in params.values())):
        raise OnnxplainError(f"params must map each method to its parameters, not {reprlib.repr(params)}")
    size = model.batch_size if batch_size is None else whole("batch_size", batch_size)
    if isinstance(x, (list, tuple)) and len(x) > size and all(isinstance(p, (str, Path)) for p in x):
        return _in_batches(model, x, methods, as_targets(model, target, len(x)), size, metrics=metrics, step=step,
                           deletion_baseline=deletion_baseline, insertion_baseline=insertion_baseline,
                           score=score, params=params, progress=progress)
    inputs, _ = as_batch(model, x)
    targets = as_targets(model, target, len(inputs))
    given = dict(methods) if isinstance(methods, Mapping) else None
    options = dict(step=step, score=score, batch_size=batch_size, progress=progress)
    results = {}
    for method in (given or methods):
        if given is not None:
            maps = given[method]
        else:
            extra = dict((params or {}).get(method, {}))
            from .methods import METHODS
            if progress is not None and method in METHODS and METHODS[method].accepts("progress"):
                extra.setdefault("progress", progress)
            e = explain(model, inputs, method, target=targets, batch_size=batch_size, **extra)
            maps, targets_used = e.maps, e.targets
        t = targets if given is not None else targets_used
        row = {}
        if "deletion" in metrics:
            row["deletion"] = deletion(model, inputs, maps, t, baseline_kind=deletion_baseline, **options)
        if "insertion" in metrics:
            row["insertion"] = insertion(model, inputs, maps, t, baseline_kind=insertion_baseline, **options)
        if "drop" in metrics or "increase" in metrics:
            drop, increase = confidence(model, inputs, maps, t, score=score, batch_size=batch_size)
            row.update({k: v for k, v in (("drop", drop), ("increase", increase)) if k in metrics})
        results[method] = row
    return results


def _in_batches(model, paths, methods, targets, size, **options) -> dict[str, dict[str, np.ndarray]]:
    """`evaluate` on a long list of image files, `size` images read and scored at a time: memory holds one batch of
    images, whatever the length of the list. Maps given for the images are split alike."""
    parts = []
    for a in range(0, len(paths), size):
        chunk = {k: np.asarray(v)[a:a + size] for k, v in methods.items()} if isinstance(methods, Mapping) else methods
        parts.append(evaluate(model, paths[a:a + size], chunk, targets[a:a + size], batch_size=size, **options))
    return {method: {name: np.concatenate([p[method][name] for p in parts]) for name in row}
            for method, row in parts[0].items()}


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


def undesirable_removal(model, x, maps, target=None, *, q=(1, 5, 10), repeats: int = 5, seed: int = 0,
                        baseline_kind: str | float = "zero", score="probability",
                        batch_size: int | None = None) -> dict[str, np.ndarray]:
    """What removing the top-q % pixels of an undesirable-pixel map (Kang et al. 2019) does to the target class,
    against removing as many random pixels: {name: N×len(q)} with

    - "target": p_c(x′) − p_c(x), x′ = x with the ⌈q·H·W/100⌉ highest pixels of the map set to the baseline;
    - "margin": the same for the margin p_c − max_{c′≠c} p_{c′} (the strongest rival after the removal);
    - "target_random", "margin_random": their mean over `repeats` removals of uniformly random pixels of the same
      count; draw r of image i is the first pixels of default_rng([seed, i, r]).permutation(H·W), for every q.

    Removing undesirable pixels should raise both more than random removals do.
    """
    q = np.atleast_1d(np.asarray(q, np.float64))
    if not ((q > 0) & (q <= 100)).all() or repeats < 1:
        raise OnnxplainError("undesirable_removal needs 0 < q ≤ 100 (percent of the pixels) and repeats ≥ 1")
    images, maps, scorer, base, used = _prepare(model, x, maps, target, score, batch_size)
    _, _, h, w = images.shape
    counts = np.ceil(q * h * w / 100).astype(np.int64)
    per_q = 1 + repeats                                                # the map's removal, then the random ones

    def margin(s, c):
        return s[:, c] - np.delete(s, c, axis=1).max(axis=1)

    plans = []
    for i, (img, m, c) in enumerate(zip(images, maps, used)):
        orders = [np.argsort(-m.ravel(), kind="stable")] + [np.random.default_rng([seed, i, r]).permutation(h * w)
                                                            for r in range(repeats)]
        fill = baseline(img, baseline_kind)
        state = {"p": np.zeros(len(q) * per_q), "margin": np.zeros(len(q) * per_q)}

        def make(a, b, orders=orders, img=img, fill=fill):
            removed = np.zeros((b - a, h * w), bool)
            for row, j in enumerate(range(a, b)):
                removed[row, orders[j % per_q][:counts[j // per_q]]] = True
            return np.where(removed.reshape(-1, 1, h, w), fill[None], img[None]), None

        def take(a, b, s, _, c=int(c), state=state):
            state["p"][a:b], state["margin"][a:b] = s[:, c], margin(s, c)

        plans.append(Plan(len(q) * per_q, make, take, state))
    stream(scorer, plans, batch_size or model.batch_size)
    before = {"p": base[np.arange(len(used)), used],
              "margin": np.array([margin(s[None], c)[0] for s, c in zip(base, used)])}
    out = {}
    for key, name in (("p", "target"), ("margin", "margin")):
        change = np.stack([p.state[key] for p in plans]).reshape(len(plans), len(q), per_q) - before[key][:, None, None]
        out[name], out[name + "_random"] = change[..., 0], change[..., 1:].mean(axis=-1)
    return out


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
