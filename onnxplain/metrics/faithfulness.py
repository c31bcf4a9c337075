"""Faithfulness: does removing what the map calls relevant change the model's score? Forward passes only,
batched through the black-box engine.

- Deletion and insertion (Petsiuk et al. 2018): pixels are removed from the image (deletion, towards a zero
  baseline by default) or inserted into a baseline (insertion, a blurred image by default) `step` at a time in
  the map's order, most salient first; the AUC of the class probability against the fraction changed is
  (Σ y − y₀/2 − y_n/2)/n over the n+1 points, as in their code. Deletion: lower is better; insertion: higher.
- Average drop and increase in confidence (Chattopadhay et al. 2018): the explanation image x ⊙ m (+ baseline
  ⊙ (1 − m)), m the map min-max normalised to [0, 1]; drop = max(0, Y − O)/Y·100 and increase = 100·[O > Y],
  Y and O the class probability of the image and of the explanation, averaged over images.
- Faithfulness correlation (Bhatt et al. 2020): do the map's sums over random pixel subsets correlate with what
  removing those subsets costs the class score?
- ROAD (Rong et al. 2022): remove the most (or least) relevant pixels by noisy linear imputation, which does not
  leak the removed pixels' places to the model as a constant fill does, and follow the class score.
- Undesirable-pixel removal (Kang et al. 2019): removing a map's top pixels against removing random ones.
"""
from __future__ import annotations

import reprlib

import numpy as np

from ..errors import OnnxplainError
from ..explain import as_batch, as_targets
from ..limits import whole
from ..perturb import Plan, Scorer, baseline, stream, to_chw, top1
from .base import Metric, as_maps, register
from .imputation import linear_imputation

METRICS = ("deletion", "insertion", "drop", "increase")
BETTER = {"deletion": "lower", "insertion": "higher", "drop": "lower", "increase": "higher"}


def _prepare(model, x, maps, target, score, batch_size):
    inputs, _ = as_batch(model, x)
    model = model.for_batch(inputs)
    images = to_chw(inputs, model.layout)
    maps = as_maps(maps, (len(images), *images.shape[2:]))
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


def faithfulness_correlation(model, x, maps, target=None, *, runs: int = 100, subset: int | None = None,
                             baseline_kind: str | float = "zero", seed: int = 0, score="logit",
                             batch_size: int | None = None, progress=None) -> np.ndarray:
    """Faithfulness correlation (Bhatt et al. 2020) per image: the Pearson correlation, over `runs` random subsets
    S of `subset` pixels, between the map's sum over S and the fall of the class score when S is set to the
    baseline, f(x) − f(x_S←baseline). Higher is better; NaN (undefined) where either side is constant over the
    runs, as for a constant map.

    As Quantus's FaithfulnessCorrelation: 100 runs, 224 pixels at 224×224 (here H·W/224 at other sizes), the
    score a logit. Its baseline "black" is each image's minimum; here a baseline kind as for deletion (zero by
    default). The subsets are drawn from `seed` alone, the same for every image, so that an image's value does not
    depend on the images scored with it.
    """
    runs = whole("runs", runs, 2)
    images, maps, scorer, base, used = _prepare(model, x, maps, target, score, batch_size)
    _, _, h, w = images.shape
    subset = max(1, h * w // 224) if subset is None else whole("subset", subset, 1, h * w - 1)
    rng = np.random.default_rng(seed)
    chosen = np.zeros((runs, h * w), bool)
    for row in chosen:
        row[rng.choice(h * w, subset, replace=False)] = True
    chosen = chosen.reshape(runs, 1, h, w)
    plans = []
    for img, c in zip(images, used):
        fill = baseline(img, baseline_kind)
        state = {"score": np.zeros(runs)}

        def make(a, b, img=img, fill=fill):
            return np.where(chosen[a:b], fill[None], img[None]), None

        def take(a, b, s, _, c=int(c), state=state):
            state["score"][a:b] = s[:, c]

        plans.append(Plan(runs, make, take, state))
    stream(scorer, plans, batch_size or model.batch_size, progress)
    fall = base[np.arange(len(used)), used][:, None] - np.stack([p.state["score"] for p in plans])
    sums = np.einsum("rp,np->nr", chosen.reshape(runs, -1).astype(np.float64), maps.reshape(len(maps), -1))
    return _pearson(sums, fall)


PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)  # Rong et al.'s experiments (and ROAR's)


def road_curves(model, x, maps, target=None, *, order: str = "morf", percentages=PERCENTAGES, noise: float = 0.01,
                seed: int = 0, score="probability", batch_size: int | None = None, progress=None) -> np.ndarray:
    """ROAD curves (Rong et al. 2022, remove and debias), N×len(percentages): the class score once the p % most
    (order "morf") or least ("lerf") relevant pixels of the map, ⌊p·H·W/100⌋ of them, are replaced by noisy linear
    imputation: the weighted mean of their neighbours (`imputation.linear_imputation`) plus Gaussian noise of
    standard deviation `noise` in pixel units of [0, 1] (0.01, as theirs; scaled to the model's input through its
    preprocessing).

    score: "probability" (the class probability, their second curve), "logit", or "accuracy" (1 where the class is
    still the top one, their first curve and Quantus's). The noise for percentage j is default_rng([seed, j]), the
    same for every image, so that an image's curve does not depend on the images scored with it. Quantus's ROAD
    removes the most relevant first at 1, 3, …, 99 %.
    """
    if order not in ("morf", "lerf"):
        raise OnnxplainError(f"order must be morf (most relevant first) or lerf (least relevant first), not {order!r}")
    p = np.atleast_1d(np.asarray(percentages, np.float64))
    if p.ndim != 1 or not ((p > 0) & (p < 100)).all():
        raise OnnxplainError(f"percentages must be numbers between 0 and 100, not {reprlib.repr(percentages)}")
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise OnnxplainError(f"noise must be a standard deviation of at least 0, not {noise!r}")
    accuracy = score == "accuracy"
    images, maps, scorer, _, used = _prepare(model, x, maps, target, "logit" if accuracy else score, batch_size)
    _, c, h, w = images.shape
    counts = (p * h * w / 100).astype(np.int64)
    pre = model.preprocessing
    sigma = (noise * 255 * pre.scale / (np.asarray(pre.std, np.float64) * np.ones(c)))[:, None, None]
    plans = []
    for img, m, t in zip(images, maps, used):
        rank = np.empty(h * w, np.int64)
        rank[np.argsort(-m.ravel() if order == "morf" else m.ravel(), kind="stable")] = np.arange(h * w)
        rank = rank.reshape(h, w)
        state = {"curve": np.zeros(len(p))}

        def make(a, b, img=img, rank=rank):
            out = []
            for j in range(a, b):
                removed = rank < counts[j]
                filled = linear_imputation(img, removed) if counts[j] else img
                jitter = np.random.default_rng([seed, j]).standard_normal(img.shape) * sigma
                out.append(np.where(removed, filled + jitter, img).astype(np.float32))
            return np.stack(out), None

        def take(a, b, s, _, t=int(t), state=state):
            state["curve"][a:b] = (s.argmax(axis=1) == t) if accuracy else s[:, t]

        plans.append(Plan(len(p), make, take, state))
    # the imputations cost more than the model's pass: two batches are imputed at once while onnxruntime runs
    stream(scorer, plans, batch_size or model.batch_size, progress, workers=2)
    return np.stack([q.state["curve"] for q in plans])


def road(model, x, maps, target=None, **options) -> np.ndarray:
    """ROAD per image: the mean of its curve over the percentages (each weighted alike), options as `road_curves`.
    Most relevant first (the default): lower is better; least relevant first: higher is better."""
    return road_curves(model, x, maps, target, **options).mean(axis=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the rows of a and b; NaN for a row that is constant in either."""
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), np.nan)


register(Metric("deletion", "faithfulness", "lower", "Petsiuk et al. 2018 (RISE)",
                lambda c, **o: deletion(c.model, c.inputs, c.maps, c.targets, **o)))
register(Metric("insertion", "faithfulness", "higher", "Petsiuk et al. 2018 (RISE)",
                lambda c, **o: insertion(c.model, c.inputs, c.maps, c.targets, **o)))
def _confidence(c, **o) -> dict[str, np.ndarray]:
    return dict(zip(("drop", "increase"), confidence(c.model, c.inputs, c.maps, c.targets, **o)))


register(Metric("drop", "faithfulness", "lower", "Chattopadhay et al. 2018 (Grad-CAM++)", _confidence, part="drop"))
register(Metric("increase", "faithfulness", "higher", "Chattopadhay et al. 2018 (Grad-CAM++)", _confidence,
                part="increase"))
register(Metric("faithfulness_correlation", "faithfulness", "higher", "Bhatt et al. 2020 (IJCAI)",
                lambda c, **o: faithfulness_correlation(c.model, c.inputs, c.maps, c.targets, **o)))
register(Metric("road", "faithfulness", "lower", "Rong et al. 2022 (ROAD)",
                lambda c, **o: road(c.model, c.inputs, c.maps, c.targets, **o)))
register(Metric("road_lerf", "faithfulness", "higher", "Rong et al. 2022 (ROAD)",
                lambda c, **o: road(c.model, c.inputs, c.maps, c.targets, order="lerf", **o)))
